"""Chroma LoRA end to end on a tiny generated Chroma (real single-file / ComfyUI / diffusers layouts, tiny T5):
the family is told from FLUX.1 by its keys, a kohya_ss FLUX-tab JSON with model_type chroma trains (in
process) a LoRA with kohya's Chroma names and samples through ChromaPipeline, and the file loads in
diffusers' ChromaPipeline and through ComfyUI's key map with every module placed."""
from __future__ import annotations

import io
import json

import pytest
import torch
from test_flux_lora import comfyui_key_map
from test_train_support import make_dataset

from trainer.models.chroma_keys import diffusers_to_original, original_to_diffusers
from trainer.models.loader import load_base_model
from trainer.models.tiny_chroma import build_tiny_chroma, write_tiny_chroma
from trainer.networks.files import read_lora_file


@pytest.fixture(scope="module")
def chroma_files(tmp_path_factory):
    return write_tiny_chroma(tmp_path_factory.mktemp("chroma") / "kohya", layout="kohya")


def base_of(files):
    return load_base_model(files["model"], vae=files["ae"], text_encoder_files={"t5xxl": files["t5xxl"]})


def test_a_chroma_file_is_told_from_flux_by_its_keys_and_loads_from_every_layout(tmp_path):
    from safetensors import safe_open

    from trainer.families import family_from_keys
    from trainer.models.tiny_dit import write_tiny_flux

    flux = write_tiny_flux(tmp_path / "flux", layout="kohya", variant="schnell")
    with safe_open(flux["model"], framework="pt") as fh:
        assert family_from_keys(fh.keys()) == "flux"  # FLUX.1 files stay FLUX.1
    ref = build_tiny_chroma(3)
    for layout in ("kohya", "bundled", "diffusers"):
        files = write_tiny_chroma(tmp_path / layout, layout=layout, seed=3)
        if layout != "diffusers":
            with safe_open(files["model"], framework="pt") as fh:
                assert family_from_keys(fh.keys()) == "chroma", layout  # what the GUI shows from the header
        else:
            from kohya_gui.modelinfo import detect_family

            assert detect_family(str(files["model"]))[0] == "chroma"  # the page's family line for a folder
        base = load_base_model(files["model"], vae=files.get("ae"),
                               text_encoder_files={"t5xxl": files["t5xxl"]} if "t5xxl" in files else None)
        assert base.family == "chroma" and len(base.text_encoders) == 1 and "Chroma" in base.source
        for name, module in (("transformer", base.unet), ("vae", base.vae), ("text_encoder", base.text_encoders[0])):
            want, got = ref[name].state_dict(), module.state_dict()
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), (layout, name)


def test_the_chroma_key_map_round_trips_with_the_approximator_and_no_modulation_layers():
    tr = build_tiny_chroma(0)["transformer"]
    cfg = dict(tr.config)
    original = diffusers_to_original(tr.state_dict(), cfg)
    assert "distilled_guidance_layer.layers.1.out_layer.weight" in original
    assert "distilled_guidance_layer.norms.0.scale" in original and "double_blocks.0.img_attn.qkv.bias" in original
    assert not any(k.startswith(("time_in.", "vector_in.", "guidance_in.")) or "_mod." in k or "modulation" in k
                   for k in original)
    back = original_to_diffusers(dict(original), cfg)
    assert back.keys() == tr.state_dict().keys() and all(torch.equal(back[k], v) for k, v in tr.state_dict().items())


def test_a_transformer_only_chroma_file_names_the_t5xxl_option_and_refuses_clip_l(chroma_files):
    from trainer.models.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match="t5xxl"):
        load_base_model(chroma_files["model"], vae=chroma_files["ae"])
    with pytest.raises(CheckpointError, match="set model_type to chroma"):  # FLUX.1 forced by flux1_checkbox alone
        load_base_model(chroma_files["model"], family="flux", vae=chroma_files["ae"],
                        text_encoder_files={"t5xxl": chroma_files["t5xxl"]})
    with pytest.raises(CheckpointError, match="no CLIP-L"):
        load_base_model(chroma_files["model"], text_encoder_files={"t5xxl": chroma_files["t5xxl"],
                                                                   "clip_l": chroma_files["t5xxl"]})


def test_a_fine_tuned_chroma_saves_in_the_original_layout_and_loads_back(tmp_path, chroma_files):
    from trainer.models.saving import save_single_file

    base = base_of(chroma_files)
    with torch.no_grad():
        base.unet.distilled_guidance_layer.in_proj.weight.add_(0.5)  # as a fine-tune would change it
    path = save_single_file(base, tmp_path / "chroma-ft.safetensors", dtype=None)  # fp32: compared bit for bit
    back = load_base_model(path, vae=chroma_files["ae"], text_encoder_files={"t5xxl": chroma_files["t5xxl"]})
    assert back.family == "chroma"
    want, got = base.unet.state_dict(), back.unet.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def kohya_chroma_json(files, data, out) -> dict:
    """What kohya_ss saves from its Flux.1 tab with Model type chroma, pointed at the tiny model (clip_l left
    over from a FLUX config, as the tab keeps it)."""
    return {"LoRA_type": "Flux1", "flux1_checkbox": True, "model_type": "chroma",
            "pretrained_model_name_or_path": str(files["model"]), "ae": str(files["ae"]),
            "clip_l": str(files["t5xxl"]), "t5xxl": str(files["t5xxl"]), "train_data_dir": str(data),
            "output_dir": str(out), "output_name": "chromatoy", "max_resolution": "64,64", "min_bucket_reso": 64,
            "network_dim": 4, "network_alpha": 2, "learning_rate": 0.005, "unet_lr": 0.005, "optimizer": "AdamW",
            "lr_scheduler": "constant", "epoch": 1, "max_train_epochs": 1, "train_batch_size": 2, "seed": 42,
            "mixed_precision": "no", "save_precision": "float", "cache_latents": True, "guidance_scale": 0.0,
            "timestep_sampling": "sigmoid", "model_prediction_type": "raw", "apply_t5_attn_mask": True,
            "t5xxl_max_token_length": 16, "flux1_cache_text_encoder_outputs": True, "train_blocks": "all",
            "network_train_unet_only": True, "save_model_as": "safetensors", "xformers": "sdpa",
            "sample_every_n_epochs": 1, "sample_prompts": "toy, red circle --w 72 --h 64 --s 2 --d 5 --l 2 --n blurry",
            "num_cpu_threads_per_process": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, chroma_files):
    """One in-process run from the kohya_ss JSON: (config notes, events, LoRA path)."""
    from accelerate.state import AcceleratorState

    from trainer.config import load_config_file
    from trainer.events import EventWriter
    from trainer.train import run as run_module
    from trainer.train.stop import StopSignal

    tmp = tmp_path_factory.mktemp("chroma_run")
    path = tmp / "kohya_chroma.json"
    path.write_text(json.dumps(kohya_chroma_json(chroma_files, make_dataset(tmp / "images", images=2), tmp / "out")))
    loaded = load_config_file(path)
    AcceleratorState._reset_state(True)
    stream = io.StringIO()
    try:
        code = run_module.run_training(loaded.config, EventWriter(stream=stream), StopSignal())
    finally:
        AcceleratorState._reset_state(True)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 0, events[-2:]
    return loaded, events, [e for e in events if e["type"] == "saved"][-1]["path"]


def test_a_kohya_ss_chroma_json_trains_a_lora_with_kohyas_chroma_names(trained):
    from PIL import Image

    from trainer.models.dit import family_forced_by
    from trainer.vram import config_family

    loaded, events, path = trained
    config = loaded.config
    assert config.model_type == "chroma" and config.clip_l == "" and any("CLIP-L" in n for n in loaded.notes)
    assert family_forced_by(config) == "chroma" and config_family(config)[0] == "chroma"  # not FLUX.1
    assert events[0]["family"] == "chroma"
    tensors, meta = read_lora_file(path)
    names = {k.split(".")[0] for k in tensors}
    expected = {f"lora_unet_double_blocks_{i}_{m}" for i in range(2) for m in (
        "img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0",
        "txt_mlp_2")}
    expected |= {f"lora_unet_single_blocks_{i}_{m}" for i in range(2) for m in ("linear1", "linear2")}
    assert names == expected  # no modulation layers (Chroma has none), no text encoder (cached T5)
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 16 + 64, 4)
    assert meta["ss_base_model_version"] == "chroma" and meta["ss_network_module"] == "networks.lora_flux"
    assert meta["modelspec.architecture"] == "chroma/lora"
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if "lora_up" in k)  # it trained
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 1 and Image.open(samples[0]["path"]).size == (64, 64)  # sides rounded down to 16s


def merged_reference(files, lora_path):
    from trainer.networks import create_network_from_weights

    base = base_of(files)
    create_network_from_weights(lora_path, base).merge_to(1.0)
    return base


def test_comfyui_key_map_places_every_module_of_a_chroma_lora(trained, chroma_files):
    tensors, _ = read_lora_file(trained[2])
    base = base_of(chroma_files)
    cfg = dict(base.unet.config)
    original = diffusers_to_original(base.unet.state_dict(), cfg)
    key_map = comfyui_key_map(original, {})
    stems = {k.split(".")[0] for k in tensors}
    assert stems and all(s in key_map for s in stems), sorted(stems - key_map.keys())[:5]
    for stem in stems:  # ComfyUI's patch on the original layout: W += alpha/rank · up @ down
        down, up = tensors[stem + ".lora_down.weight"], tensors[stem + ".lora_up.weight"]
        k = key_map[stem][len("diffusion_model."):]
        original[k] = original[k] + float(tensors[stem + ".alpha"]) / down.shape[0] * up @ down
    ref = merged_reference(chroma_files, trained[2])
    patched = original_to_diffusers(original, cfg)
    for k, v in ref.unet.state_dict().items():
        torch.testing.assert_close(patched[k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_diffusers_chroma_pipeline_loads_the_lora_with_every_module_placed(trained, chroma_files, tmp_path):
    """diffusers' kohya-FLUX converter (ChromaPipeline uses FLUX's LoRA loader) splits single-block linear1 with
    FLUX.1's real widths (3072 / 12288), so the tiny model is checked with the double-block modules of the file."""
    from diffusers import ChromaPipeline

    from trainer.models.checkpoint_io import write_checkpoint

    tensors, meta = read_lora_file(trained[2])
    double = write_checkpoint({k: v for k, v in tensors.items() if "double_blocks" in k}, tmp_path / "dbl.safetensors",
                              meta)
    ref = merged_reference(chroma_files, double)

    def components():
        base = base_of(chroma_files)
        return dict(transformer=base.unet, vae=base.vae, text_encoder=base.text_encoders[0],
                    tokenizer=base.tokenizers[0], scheduler=base.scheduler)

    def image(pipe):
        return pipe("toy, red circle", height=32, width=32, num_inference_steps=2, guidance_scale=1.0,
                    max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="pt").images

    before = image(ChromaPipeline(**components()))
    pipe = ChromaPipeline(**components())
    pipe.load_lora_weights(double)
    assert not torch.allclose(before, image(pipe), atol=1e-4)
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    pipe.unload_lora_weights()
    want, got, orig = ref.unet.state_dict(), pipe.transformer.state_dict(), base_of(chroma_files).unet.state_dict()
    changed = {k for k in want if not torch.equal(got[k], orig[k])}
    # every layer our LoRA changes, diffusers changed the same way (fp32 products in another order)
    assert changed == {k for k in want if not torch.equal(want[k], orig[k])} and changed
    for k in changed:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
