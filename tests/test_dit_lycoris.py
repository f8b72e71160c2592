"""A kohya_ss user picks LoKr, LoHa, DoRA or iA3 for a FLUX.1 or SD3.5 LoRA, trains it on the tiny models,
and the file works where they use it:

* it has the modules kohya's FLUX/SD3 LoRA has, under the same names — the fused BFL/SAI layers (``qkv``,
  single-block ``linear1``, SD3's swapped last modulation) are one module, as sd-scripts' LyCORIS writes
  them (``lora_unet_double_blocks_0_img_attn_qkv.lokr_w1``) — and the project's self-check accepts it;
* ComfyUI / Forge: every module places in their key map (re-implemented in test_flux_lora / here) and their
  weight formula (test_networks_lycoris.client_delta) on the original layout gives the model the trained
  network gives: the same transformer output, different from the base's;
* LyCORIS' own loader (`create_lycoris_from_weights`) rebuilds every module on the original layout with
  that same weight change;
* a resumed LoKr run ends in the same weights as an uninterrupted one.
Training runs in this process (the same code path as `python -m trainer run`).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import types

import pytest
import torch
from test_flux_lora import comfyui_key_map, flux_config, flux_files  # noqa: F401  (flux_files: fixture)
from test_networks_lycoris import client_delta, modules_of
from test_sd3_lora import TE_KEYS, sd3_files  # noqa: F401  (sd3_files: fixture)
from test_train_support import lora_config, make_dataset
from torch import nn

from trainer.models.loader import load_base_model
from trainer.networks.files import read_lora_file

TYPES = {
    "lokr": dict(LoRA_type="LyCORIS/LoKr", factor=4),
    "loha": dict(LoRA_type="LyCORIS/LoHa"),
    "dora": dict(LoRA_type="LyCORIS/LoCon", dora_wd=True),
    "ia3": dict(LoRA_type="LyCORIS/iA3", learning_rate=1e-2),
}
ADAPTER = {"lokr": "LoKr", "loha": "LoHa", "dora": "LoRA", "ia3": "iA3"}
CASES = [("flux", "lokr"), ("flux", "loha"), ("flux", "dora"), ("flux", "ia3"), ("sd3", "lokr"), ("sd3", "loha")]


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def train_in_process(config) -> list[dict]:
    from trainer.events import EventWriter
    from trainer.train.run import run_training
    from trainer.train.stop import StopSignal

    stream = io.StringIO()
    code = run_training(config, EventWriter(stream=stream), StopSignal())
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 0, events[-3:]
    return events


def family_config(family, files, data, out, **values):
    if family == "flux":
        return flux_config(files, data, out, **values)
    return lora_config(files["model"], data, out, sd3_checkbox=True, t5xxl_max_token_length=16, epoch=1,
                       network_dim=4, network_alpha=2, learning_rate=5e-3, network_train_unet_only=True,
                       **{k: str(files[k]) for k in TE_KEYS}, **values)


def base_of(family, files):
    if family == "flux":
        return load_base_model(files["model"], vae=files["ae"],
                               text_encoder_files={"clip_l": files["clip_l"], "t5xxl": files["t5xxl"]})
    return load_base_model(files["model"], text_encoder_files={k: files[k] for k in TE_KEYS})


def original_layout(family):
    """(diffusers → original keys, original → diffusers keys) of the family's transformer."""
    if family == "flux":
        from trainer.models.flux_keys import bfl_to_diffusers, diffusers_to_bfl

        return diffusers_to_bfl, bfl_to_diffusers
    from trainer.models.sd3_keys import diffusers_to_sai, sai_to_diffusers

    return diffusers_to_sai, sai_to_diffusers


def transformer_output(family, transformer):
    """The transformer's prediction for one fixed random input (the family's own forward)."""
    from trainer.models import flux_forward, sd3_forward

    cfg = transformer.config
    g = torch.Generator().manual_seed(0)
    channels = cfg.in_channels // 4 if family == "flux" else cfg.in_channels  # FLUX packs 2×2 patches
    noisy = torch.randn(1, channels, 4, 4, generator=g)
    hidden = torch.randn(1, 6, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    denoise = (flux_forward if family == "flux" else sd3_forward).make_denoise(None, types.SimpleNamespace(
        guidance_scale=3.5))
    with torch.no_grad():
        return denoise(transformer, noisy, torch.tensor([500.0]), hidden, pooled)


def lycoris_loader_deltas(original: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], case: str):
    """ΔW per file module as LyCORIS' own loader applies it to a model in the original (BFL/SAI) layout."""
    from lycoris.wrapper import create_lycoris_from_weights

    from trainer.networks.lycoris_checks import make_ia3

    root = nn.Module()
    layers = {}
    for key, w in original.items():
        if key.endswith(".weight") and w.dim() == 2:
            parent = root
            *path, leaf = key[:-len(".weight")].split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
            layer.weight.data.copy_(w)
            parent.add_module(leaf, layer)
            layers["lora_unet_" + key[:-len(".weight")].replace(".", "_")] = layer
    unet = {k: v for k, v in tensors.items() if k.startswith("lora_unet_")}
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    if case == "ia3":  # lycoris-lora 4.1.3's loader raises TypeError on iA3 files (see test_networks_lycoris)
        rebuilt = {n: make_ia3(n, layers[n], t) for n, t in modules_of(unet).items()}
    else:
        # its own prefix is `lycoris_`; the names after it are the module paths, as in kohya's files
        named = {"lycoris_" + k[len("lora_unet_"):]: v for k, v in unet.items()}
        net, _ = create_lycoris_from_weights(1.0, None, root, weights_sd=named)
        rebuilt = {"lora_unet_" + m.lora_name[len("lycoris_"):]: m for m in net.loras}
    assert set(rebuilt) == set(modules_of(unet)), "LyCORIS' loader rebuilt every module of the file"
    deltas = {}
    for name, module in rebuilt.items():
        layer = layers[name]
        eye = torch.eye(layer.in_features)
        with torch.no_grad():
            before = layer(eye)
            module.apply_to()
            try:
                deltas[name] = (layer(eye) - before).T  # ΔW, read through LyCORIS' forward
            finally:
                module.restore()
    return deltas


@pytest.mark.parametrize("family,case", CASES)
def test_a_lycoris_type_trains_on_the_dit_and_loads_in_comfyui_and_lycoris(
        family, case, request, tmp_path, fresh_accelerator_state):
    from trainer.networks import verify_lora_file
    from trainer.networks.registry import build_network

    files = request.getfixturevalue(f"{family}_files")
    data = make_dataset(tmp_path / "images", images=2)
    config = family_config(family, files, data, tmp_path / "out", **TYPES[case])
    events = train_in_process(config)
    saved = [e for e in events if e["type"] == "saved"][-1]
    assert saved["verified"] is True
    tensors, meta = read_lora_file(saved["path"])
    mods = modules_of(tensors)
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == \
        {"lokr": "lokr", "loha": "loha", "dora": "locon", "ia3": "ia3"}[case]

    # the modules of kohya's FLUX/SD3 LoRA for these options, a fused layer as one module
    base = base_of(family, files)
    standard = build_network(base, config.model_copy(update={"LoRA_type": "Standard"}))
    assert set(mods) == {m.lora_name for m in standard.loras}
    fused = ("lora_unet_double_blocks_0_img_attn_qkv" if family == "flux"
             else "lora_unet_joint_blocks_0_x_block_attn_qkv")
    assert fused in mods
    report = verify_lora_file(saved["path"], base)
    assert report.ok, report.to_text()
    assert set(report.adapters) == {ADAPTER[case]} and (case != "dora" or "dora_scale" in mods[fused])

    # ComfyUI: every module places in the key map of the original layout; its formula patches those weights
    to_original, to_diffusers = original_layout(family)
    cfg = dict(base.unet.config)
    original = to_original(base.unet.state_dict(), cfg)
    if family == "flux":
        clip = {k if k.startswith("text_model.") else "text_model." + k: v
                for k, v in base.text_encoders[0].state_dict().items()}
        key_map = comfyui_key_map(original, clip)
        assert any(n.startswith("lora_te1_") for n in mods)  # CLIP-L trains too
    else:
        key_map = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): "diffusion_model." + k
                   for k in original if k.endswith(".weight")}
    assert set(mods) <= key_map.keys(), sorted(set(mods) - key_map.keys())[:5]
    patched = dict(original)
    comfy = {}
    for name, t in mods.items():
        if name.startswith("lora_unet_"):
            key = key_map[name][len("diffusion_model."):]
            comfy[name] = client_delta(t, original[key])
            patched[key] = original[key] + comfy[name]

    # LyCORIS' own loader on the original layout makes the same change, module by module
    for name, delta in lycoris_loader_deltas(original, tensors, case).items():
        torch.testing.assert_close(delta, comfy[name], atol=1e-6, rtol=1e-4, msg=name)  # fp32, other order

    # the trained network (LyCORIS' modules, the fused ones on diffusers' split Linears) gives the model the
    # clients give: same output, not the base's
    plain = transformer_output(family, base.unet)
    theirs = copy.deepcopy(base.unet)
    theirs.load_state_dict(to_diffusers(patched, cfg))
    network = build_network(base, config.model_copy(update={"network_weights": saved["path"]}))
    network.apply_to()
    ours = transformer_output(family, base.unet)
    network.restore()
    assert not torch.allclose(ours, plain, atol=1e-5)
    torch.testing.assert_close(transformer_output(family, theirs), ours, atol=1e-5, rtol=1e-4)
    # merged into the weights (what previews and LoRA tools use), the network gives that output too
    network.merge_to(1.0)
    torch.testing.assert_close(transformer_output(family, base.unet), ours, atol=1e-5, rtol=1e-4)
    network.unmerge()
    torch.testing.assert_close(transformer_output(family, base.unet), plain, atol=0, rtol=0)


def test_a_resumed_flux_lokr_run_ends_in_the_same_weights(tmp_path, flux_files, fresh_accelerator_state):  # noqa: F811
    from accelerate.state import AcceleratorState

    settings = dict(epoch=2, save_state=True, network_train_unet_only=True, LoRA_type="LyCORIS/LoKr", factor=4,
                    dora_wd=True)
    data = make_dataset(tmp_path / "images", images=2)
    train_in_process(flux_config(flux_files, data, tmp_path / "whole", **settings))
    state = tmp_path / "whole" / "toy-000001-state"
    assert (state / "train_state.json").is_file()
    AcceleratorState._reset_state(True)
    events = train_in_process(flux_config(flux_files, data, tmp_path / "resumed", resume=str(state), **settings))
    assert next(e for e in events if e["type"] == "step")["step"] > 2
    want = read_lora_file(tmp_path / "whole" / "toy.safetensors")[0]
    got = read_lora_file(tmp_path / "resumed" / "toy.safetensors")[0]
    assert want.keys() == got.keys() and "lora_unet_single_blocks_0_linear1.lokr_w1" in want
    assert all(torch.equal(want[k], got[k]) for k in want)  # bit-exact on CPU


def test_lokr_on_an_fp8_flux_base_adds_its_branch_beside_the_8_bit_weights(tmp_path, flux_files):  # noqa: F811
    """fp8_base (the 8–16 GB FLUX presets): LyCORIS' rebuild would read the 8-bit weights, so the modules run
    in bypass mode — the same function as on the widened weights; DoRA and iA3 (which need them) are refused."""
    from trainer.config.rules import validate_values
    from trainer.models.fp8 import is_fp8, to_fp8, widen
    from trainer.networks.registry import build_network

    config = flux_config(flux_files, tmp_path, tmp_path / "out", LoRA_type="LyCORIS/LoKr", factor=4, fp8_base=True,
                         network_train_unet_only=True)
    fp8, wide = base_of("flux", flux_files), base_of("flux", flux_files)
    to_fp8(fp8.unet, torch.float32)
    wide_layers = dict(wide.unet.named_modules())
    with torch.no_grad():
        for name, layer in fp8.unet.named_modules():
            if is_fp8(layer):
                wide_layers[name].weight.copy_(widen(layer.weight, layer.weight_scale, torch.float32))
    plain = transformer_output("flux", wide.unet)
    net8 = build_network(fp8, config)
    assert all(m.bypass_mode for m in net8.loras)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net8.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    net = build_network(wide, config.model_copy(update={"fp8_base": False}))
    net.load_training_state(net8.training_state())
    net8.apply_to()
    net.apply_to()
    ours = transformer_output("flux", fp8.unet)
    assert not torch.allclose(ours, plain, atol=1e-4)
    torch.testing.assert_close(ours, transformer_output("flux", wide.unet), atol=1e-5, rtol=1e-4)  # other order

    values = dict(config.model_dump(), dora_wd=True)
    assert any(p.field == "dora_wd" and "fp8_base" in p.message for p in validate_values("lora", values)[1])
    values = dict(config.model_dump(), LoRA_type="LyCORIS/iA3")
    assert any(p.field == "fp8_base" and "iA3" in p.message for p in validate_values("lora", values)[1])


@pytest.mark.parametrize("lora_type", ["LyCORIS/BOFT", "LyCORIS/GLoRA", "LyCORIS/Native Fine-Tuning",
                                       "LyCORIS/DyLoRA", "Kohya LoCon", "Kohya DyLoRA"])
def test_types_that_cannot_run_on_fused_layers_are_refused_with_the_reason_and_the_alternatives(
        lora_type, tmp_path, flux_files):  # noqa: F811
    from trainer.config.rules import validate_values

    from trainer.networks.registry import build_network

    values = dict(flux_config(flux_files, tmp_path, tmp_path / "out").model_dump(), LoRA_type=lora_type)
    config, problems = validate_values("lora", values)
    assert config is None
    problem = next(p for p in problems if p.field == "LoRA_type")
    assert "LyCORIS/LoKr" in problem.message and "LyCORIS/LoHa" in problem.message and lora_type in problem.message

    # a FLUX base detected from the weights (no checkbox ticked) is refused when the network is built
    values.update(flux1_checkbox=False)
    config, _ = validate_values("lora", values)
    base = base_of("flux", flux_files)
    with pytest.raises(ValueError, match=r"not available for the flux family: .*Choose one of: Standard, "
                                         r"LyCORIS/LoCon, LyCORIS/LoHa, LyCORIS/LoKr, LyCORIS/iA3"):
        build_network(base, config)


def test_the_diffusers_layout_is_refused_for_lycoris_types(tmp_path, flux_files):  # noqa: F811
    from trainer.config.rules import validate_values

    values = dict(flux_config(flux_files, tmp_path, tmp_path / "out").model_dump(), LoRA_type="LyCORIS/LoKr",
                  save_lora_format="diffusers")
    config, problems = validate_values("lora", values)
    assert config is None
    assert any(p.field == "save_lora_format" and "choose kohya" in p.message for p in problems)
