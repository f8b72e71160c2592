"""Our LoRA / LoCon files load in the clients users run them in.

diffusers is the strictest client (every key must be converted, else it raises), so it is run
for real: `pipe.load_lora_weights(file)` on a pipeline built from the same tiny base, and its
outputs are compared with our own merged model. A1111 and ComfyUI are not Python packages we can
install; for them the test reproduces the key lookup their loaders do (from the reference notes
on `extensions-builtin/Lora/networks.py` and `comfy/lora.py`) against the original-layout names of
the base model's layers, and checks every key of our files is found.
"""

import logging
import re
import warnings

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from trainer.models.ldm_keys import UNET_PREFIX, unet_to_ldm
from trainer.models.tiny import build_tiny_components
from trainer.networks import create_network
from trainer.networks.naming import split_key


def base(family):
    c = build_tiny_components(family, seed=0)
    c["family"] = family
    return c


def pipeline(family):
    c = build_tiny_components(family, seed=0)  # a second copy of the same weights
    if family == "sdxl":
        return StableDiffusionXLPipeline(**c)
    return StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def randomized_locon(components, seed=1):
    net = create_network(components, network_dim=4, network_alpha=2, conv_dim=3, conv_alpha=1.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
    return net


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_in_diffusers(pipe, path):
    handler = Collect()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path))  # raises ValueError on any unconverted key
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    lora_msgs = [m for m in handler.messages + [str(w.message) for w in caught]
                 if re.search(r"lora|adapter|unexpected|missing", m, re.I)]
    return lora_msgs


def peft_layers(module):
    return {name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_loads_our_lora_and_locon_file_with_every_key_and_same_outputs(family, tmp_path):
    ours = base(family)
    net = randomized_locon(ours)
    path = tmp_path / f"{family}-locon.safetensors"
    net.save_weights(path, "float")
    pipe = pipeline(family)

    assert load_in_diffusers(pipe, path) == [], "diffusers warned about keys it did not load"

    # every module of the file became a PEFT LoRA layer on exactly the layer we wrapped
    unet_paths = {t.path for t in net.catalog if t.lora_name in {m.lora_name for m in net.unet_loras}}
    assert peft_layers(pipe.unet) == unet_paths
    te_names = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    te_parts = ["te1", "te2"] if family == "sdxl" else ["te"]
    for name, part in zip(te_names, te_parts):
        assert len(peft_layers(getattr(pipe, name))) == sum(p == part for p in net.parts.values()) > 0
    assert any(".resnets." in p and p.endswith("conv1") for p in unet_paths), "LoCon convs are included"

    # U-Net output: diffusers with the LoRA == our merged model, and both differ from the base
    unet = ours["unet"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ehs = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, ours["text_encoder_2"].config.projection_dim, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    ids = torch.randint(0, ours["tokenizer"].vocab_size, (1, 12), generator=g)
    with torch.no_grad():
        base_out = unet(x, 20, ehs, **kwargs).sample
        base_hidden = [ours[n](ids, output_hidden_states=True).hidden_states[-2] for n in te_names]
        net.merge_to()
        try:
            ours_out = unet(x, 20, ehs, **kwargs).sample
            ours_hidden = [ours[n](ids, output_hidden_states=True).hidden_states[-2] for n in te_names]
        finally:
            net.unmerge()
        theirs_out = pipe.unet(x, 20, ehs, **kwargs).sample
        theirs_hidden = [getattr(pipe, n)(ids, output_hidden_states=True).hidden_states[-2] for n in te_names]

    assert (ours_out - base_out).abs().max() > 0.02, "the LoRA must have a visible effect"
    torch.testing.assert_close(theirs_out, ours_out, atol=2e-4, rtol=1e-3)
    for b, o, t in zip(base_hidden, ours_hidden, theirs_hidden):
        assert (o - b).abs().max() > 1e-3
        torch.testing.assert_close(t, o, atol=1e-4, rtol=1e-3)


# --- A1111 and ComfyUI: their key lookup, reproduced ------------------------------------------

_A1111_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                 "conv_shortcut": "skip_connection", "norm1": "in_layers_0", "norm2": "out_layers_0"}


def a1111_compvis_name(name):
    """A1111 `convert_diffusers_name_to_compvis` for SD1 U-Net names (2 layers per block)."""
    def rest(r):  # resnet children are renamed, transformer paths stay as they are
        return _A1111_RESNET.get(r, r)
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        b, kind, i, r = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_input_blocks_{1 + 3 * b + i}_{1 if kind == 'attentions' else 0}_{rest(r)}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        kind, i, r = m[1], int(m[2]), m[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else 2 * i}_{rest(r)}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        b, kind, i, r = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_output_blocks_{3 * b + i}_{1 if kind == 'attentions' else 0}_{rest(r)}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", name)
    if m:
        return f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", name)
    if m:
        b = int(m[1])
        return f"diffusion_model_output_blocks_{2 + 3 * b}_{2 if b > 0 else 1}_conv"
    return None


def original_unet_layers(unet):
    """Original-layout (CompVis/SGM) U-Net layer names, as the clients index them: dots → `_`."""
    ldm = unet_to_ldm(dict(unet.state_dict()), dict(unet.config))
    return {k[len(UNET_PREFIX):-len(".weight")].replace(".", "_") for k in ldm if k.endswith(".weight")}


_TE_MODULE = r"text_model_encoder_layers_(\d+)_(self_attn_(q|k|v|out)_proj|mlp_fc1|mlp_fc2)"


def assert_sd1_names_place_in_a1111(names, unet_layers, n_te_layers: int) -> None:
    """Every SD1 module name maps to a CompVis U-Net layer, or to one of the text encoder's layers."""
    for name in names:
        if name.startswith("lora_unet_"):
            compvis = a1111_compvis_name(name)
            assert compvis is not None and compvis[len("diffusion_model_"):] in unet_layers, name
        else:
            m = re.fullmatch(r"lora_te_" + _TE_MODULE, name)
            assert m and int(m[1]) < n_te_layers, name


def test_sd1_locon_keys_are_found_by_a1111_and_comfyui_lookups(tmp_path):
    """A1111 converts each diffusers-style name to its CompVis layer; ComfyUI maps
    `lora_unet_<diffusers path>` through `unet_to_diffusers` (same layers); the text encoder uses
    `lora_te_text_model_encoder_layers_{i}_{6 projections}` in both."""
    c = base("sd1")
    net = create_network(c, network_dim=4, conv_dim=2)
    layers = original_unet_layers(c["unet"])
    layers_in_file = {split_key(k)[0] for k in net.state_dict()}
    assert_sd1_names_place_in_a1111(layers_in_file, layers, c["text_encoder"].config.num_hidden_layers)


def test_sdxl_locon_keys_are_found_by_a1111_and_comfyui_lookups():
    """kohya SDXL names are the original SGM layer names: ComfyUI's key map has
    `lora_unet_<ldm path>` for every `diffusion_model.<ldm path>.weight`, and A1111 falls back
    from `lora_unet` to `diffusion_model`; the text encoders use `lora_te1_`/`lora_te2_`."""
    c = base("sdxl")
    net = create_network(c, network_dim=4, conv_dim=2)
    layers = original_unet_layers(c["unet"])
    counts = {"te1": c["text_encoder"].config.num_hidden_layers, "te2": c["text_encoder_2"].config.num_hidden_layers}
    for name in {split_key(k)[0] for k in net.state_dict()}:
        if name.startswith("lora_unet_"):
            assert name[len("lora_unet_"):] in layers, name
        else:
            m = re.fullmatch(r"lora_(te1|te2)_" + _TE_MODULE, name)
            assert m and int(m[2]) < counts[m[1]], name
