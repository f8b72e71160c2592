"""FLUX.1 LoRA end to end on a tiny generated FLUX model (real BFL/kohya file layouts, tiny CLIP-L + T5):
the files load in every layout, a kohya_ss FLUX JSON trains, the LoRA has kohya's FLUX names and loads in
diffusers' FluxPipeline and through ComfyUI's key map with every module placed, and a resumed run ends
in the same weights as an uninterrupted one."""
from __future__ import annotations

import json

import pytest
import torch
from test_train_support import lora_config, make_dataset, run_trainer, write_config

from trainer.models.flux_keys import bfl_to_diffusers, diffusers_to_bfl
from trainer.models.loader import load_base_model
from trainer.models.tiny_dit import build_tiny_flux, write_tiny_flux
from trainer.networks.files import read_lora_file


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    return write_tiny_flux(tmp_path_factory.mktemp("flux") / "kohya", layout="kohya")


def flux_config(files, data, out, **overrides):
    values = dict(flux1_checkbox=True, clip_l=str(files["clip_l"]), t5xxl=str(files["t5xxl"]), ae=str(files["ae"]),
                  t5xxl_max_token_length=16, epoch=1, network_dim=4, network_alpha=2, learning_rate=5e-3)
    values.update(overrides)
    return lora_config(files["model"], data, out, **values)


def base_of(files):
    return load_base_model(files["model"], vae=files["ae"],
                           text_encoder_files={"clip_l": files["clip_l"], "t5xxl": files["t5xxl"]})


@pytest.mark.parametrize("layout", ["kohya", "bundled", "diffusers"])
def test_a_tiny_flux_loads_the_same_weights_from_every_layout(tmp_path, layout):
    from safetensors import safe_open

    from trainer.families import family_from_keys

    files = write_tiny_flux(tmp_path / layout, layout=layout, seed=3)
    if layout != "diffusers":
        with safe_open(files["model"], framework="pt") as fh:
            assert family_from_keys(fh.keys()) == "flux"  # what the GUI shows from the header alone
    base = load_base_model(files["model"], vae=files.get("ae"),
                           text_encoder_files={k: files[k] for k in ("clip_l", "t5xxl") if k in files})
    assert base.family == "flux" and base.extra["variant"] == "dev" and "FLUX.1 [dev]" in base.source
    ref = build_tiny_flux(3)
    for name, module in (("transformer", base.unet), ("vae", base.vae), ("text_encoder", base.text_encoders[0]),
                         ("text_encoder_2", base.text_encoders[1])):
        want = ref[name].state_dict()
        got = module.state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name


def test_the_bfl_key_map_round_trips_and_uses_the_original_names():
    tr = build_tiny_flux(0)["transformer"]
    cfg = dict(tr.config)
    bfl = diffusers_to_bfl(tr.state_dict(), cfg)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    assert bfl["double_blocks.0.img_attn.qkv.weight"].shape[0] == 3 * 16
    back = bfl_to_diffusers(dict(bfl), cfg)
    assert back.keys() == tr.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in tr.state_dict().items())


def test_a_transformer_only_file_without_text_encoders_names_the_missing_option(flux_files):
    from trainer.models.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match="clip_l"):
        load_base_model(flux_files["model"])


def kohya_flux_json(files, data, out) -> dict:
    """What kohya_ss saves for its 'flux1D - adamw8bit fp8' preset, pointed at the tiny model."""
    return {"LoRA_type": "Flux1", "flux1_checkbox": True, "pretrained_model_name_or_path": str(files["model"]),
            "ae": str(files["ae"]), "clip_l": str(files["clip_l"]), "t5xxl": str(files["t5xxl"]),
            "train_data_dir": str(data), "output_dir": str(out), "output_name": "fluxtoy", "max_resolution": "64,64", "min_bucket_reso": 64,
            "network_dim": 4, "network_alpha": 4, "learning_rate": 0.001, "unet_lr": 0.001, "optimizer": "AdamW",
            "lr_scheduler": "constant", "epoch": 1, "max_train_epochs": 1, "train_batch_size": 1, "seed": 42,
            "mixed_precision": "no", "save_precision": "float", "cache_latents": True, "guidance_scale": 3.5,
            "timestep_sampling": "shift", "discrete_flow_shift": 3.1, "model_prediction_type": "raw",
            "t5xxl_max_token_length": 16, "flux1_cache_text_encoder_outputs": True, "train_blocks": "all",
            "network_train_unet_only": True, "save_model_as": "safetensors", "xformers": "sdpa", "fp8_base": True}


def test_a_kohya_ss_flux_json_trains_a_lora_with_kohyas_flux_names(tmp_path, flux_files):
    from trainer.config import load_config_file

    data = make_dataset(tmp_path / "images", images=2)
    path = tmp_path / "kohya_flux.json"
    path.write_text(json.dumps(kohya_flux_json(flux_files, data, tmp_path / "out")))
    loaded = load_config_file(path)
    config = loaded.config
    assert loaded.source_format == "kohya-json" and any("Flux1" in n for n in loaded.notes)
    assert config.flux1_checkbox and config.LoRA_type == "Standard" and config.cache_text_encoder_outputs
    rc, events, err = run_trainer(write_config(config, tmp_path / "cfg.json"))
    assert rc == 0, err[-3000:]
    assert events[0]["family"] == "flux"
    saved = [e for e in events if e["type"] == "saved"]
    assert saved[-1]["verified"] is True
    tensors, meta = read_lora_file(saved[-1]["path"])
    names = {k.split(".")[0] for k in tensors}
    expected = {f"lora_unet_double_blocks_{i}_{m}" for i in range(2) for m in (
        "img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin",
        "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin")}
    expected |= {f"lora_unet_single_blocks_{i}_{m}" for i in range(2) for m in ("linear1", "linear2", "modulation_lin")}
    assert names == expected  # U-Net only: no lora_te1_ (cached text outputs)
    # the fused layers keep kohya's shapes: lora_up rows = q, k, v (+ MLP in) of the original layer
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (3 * 16, 4)
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 16 + 64, 4)
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_network_module"] == "networks.lora_flux"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if "lora_up" in k)  # it trained


def train(tmp_path, files, name, **overrides):
    data = make_dataset(tmp_path / f"images_{name}", images=2)
    config = flux_config(files, data, tmp_path / name, **overrides)
    rc, events, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
    assert rc == 0, err[-3000:]
    return [e for e in events if e["type"] == "saved"][-1]["path"]


def merged_reference(files, lora_path):
    """The tiny base with the LoRA merged by our own network (the reference for the clients below)."""
    from trainer.networks import create_network_from_weights

    base = base_of(files)
    create_network_from_weights(lora_path, base).merge_to(1.0)
    return base


def test_diffusers_flux_pipeline_loads_the_lora_with_every_module_placed(tmp_path, flux_files):
    """diffusers' kohya-FLUX converter splits single-block linear1 with FLUX.1's real widths (3072/12288), so the
    tiny model is checked with a double-block LoRA (train_blocks double) plus the CLIP-L text-encoder LoRA."""
    from diffusers import FluxPipeline

    path = train(tmp_path, flux_files, "dbl", train_blocks="double", timestep_sampling="sigmoid")
    names = {k.split(".")[0] for k in read_lora_file(path)[0]}
    assert any(n.startswith("lora_te1_") for n in names) and not any("single_blocks" in n for n in names)
    ref = merged_reference(flux_files, path)

    def components():
        base = base_of(flux_files)
        return dict(transformer=base.unet, vae=base.vae, text_encoder=base.text_encoders[0],
                    text_encoder_2=base.text_encoders[1], tokenizer=base.tokenizers[0],
                    tokenizer_2=base.tokenizers[1], scheduler=base.scheduler)

    def image(pipe):
        return pipe("toy, red circle", height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                    max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="pt").images

    plain = FluxPipeline(**components())
    before = image(plain)
    pipe = FluxPipeline(**components())
    pipe.load_lora_weights(path)
    after = image(pipe)
    assert not torch.allclose(before, after, atol=1e-4)
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=1.0)
    pipe.unload_lora_weights()
    untouched = base_of(flux_files)
    for mine, theirs, orig in ((ref.unet, pipe.transformer, untouched.unet),
                               (ref.text_encoders[0], pipe.text_encoder, untouched.text_encoders[0])):
        want, got, before_sd = mine.state_dict(), theirs.state_dict(), orig.state_dict()
        changed = {k for k in want if not torch.equal(got[k], before_sd[k])}
        # every layer our LoRA changes, diffusers changed the same way (fp32 products in another order)
        assert changed == {k for k in want if not torch.equal(want[k], before_sd[k])} and changed
        for k in changed:
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)


def comfyui_key_map(bfl_keys, clip_keys) -> dict[str, str]:
    """ComfyUI's model_lora_keys_unet / model_lora_keys_clip for a FLUX model, re-implemented from the reference:
    every `diffusion_model.<path>.weight` is reachable as `lora_unet_<path with _>`, CLIP-L's per-layer modules as
    `lora_te1_text_model_encoder_layers_{i}_{m}`."""
    out = {}
    for k in bfl_keys:
        if k.endswith(".weight"):
            out["lora_unet_" + k[:-len(".weight")].replace(".", "_")] = "diffusion_model." + k
    for k in clip_keys:
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"):
            if k.endswith(m + ".weight") and ".layers." in k:
                i = k.split(".layers.")[1].split(".")[0]
                out[f"lora_te1_text_model_encoder_layers_{i}_{m.replace('.', '_')}"] = "clip_l." + k
    return out


def test_comfyui_key_map_places_every_module_of_an_all_blocks_lora(tmp_path, flux_files):
    path = train(tmp_path, flux_files, "all", timestep_sampling="flux_shift", model_prediction_type="additive",
                 apply_t5_attn_mask=True)
    tensors, _ = read_lora_file(path)
    base = base_of(flux_files)
    cfg = dict(base.unet.config)
    bfl = diffusers_to_bfl(base.unet.state_dict(), cfg)
    clip = {k if k.startswith("text_model.") else "text_model." + k: v
            for k, v in base.text_encoders[0].state_dict().items()}
    key_map = comfyui_key_map(bfl, clip)
    stems = {k.split(".")[0] for k in tensors}
    assert stems and all(s in key_map for s in stems), sorted(stems - key_map.keys())[:5]  # no "lora key not loaded"
    # ComfyUI's patch: W += alpha/rank · up @ down on the original (BFL) layout
    for stem in stems:
        down, up = tensors[stem + ".lora_down.weight"], tensors[stem + ".lora_up.weight"]
        scale = float(tensors[stem + ".alpha"]) / down.shape[0]
        target = key_map[stem]
        if target.startswith("diffusion_model."):
            k = target[len("diffusion_model."):]
            bfl[k] = bfl[k] + scale * up @ down
        else:
            k = target[len("clip_l."):]
            clip[k] = clip[k] + scale * up @ down
    ref = merged_reference(flux_files, path)
    patched = bfl_to_diffusers(bfl, cfg)
    for k, v in ref.unet.state_dict().items():
        torch.testing.assert_close(patched[k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_a_resumed_flux_run_ends_in_the_same_weights(tmp_path, flux_files):
    settings = dict(epoch=2, save_state=True, train_blocks="all", timestep_sampling="sigma",
                    model_prediction_type="sigma_scaled", weighting_scheme="logit_normal")
    data = make_dataset(tmp_path / "images", images=2)
    whole = flux_config(flux_files, data, tmp_path / "whole", **settings)
    rc, _, err = run_trainer(write_config(whole, tmp_path / "whole.json"))
    assert rc == 0, err[-3000:]
    state = tmp_path / "whole" / "toy-000001-state"
    assert (state / "train_state.json").is_file()
    resumed = flux_config(flux_files, data, tmp_path / "resumed", resume=str(state), **settings)
    rc, events, err = run_trainer(write_config(resumed, tmp_path / "resumed.json"))
    assert rc == 0, err[-3000:]
    assert next(e for e in events if e["type"] == "step")["step"] > 2
    want = read_lora_file(tmp_path / "whole" / "toy.safetensors")[0]
    got = read_lora_file(tmp_path / "resumed" / "toy.safetensors")[0]
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # bit-exact on CPU


def test_a_schnell_model_trains_without_guidance_and_samples_through_flux_pipeline(tmp_path):
    from PIL import Image

    files = write_tiny_flux(tmp_path / "schnell", variant="schnell")
    base = base_of(files)
    assert base.extra["variant"] == "schnell" and not base.unet.config.guidance_embeds
    data = make_dataset(tmp_path / "images", images=2)
    config = flux_config(files, data, tmp_path / "s", timestep_sampling="uniform", sample_every_n_epochs=1,
                         sample_prompts="toy, red circle --w 72 --h 64 --s 2 --d 5 --g 2.5")
    rc, events, err = run_trainer(write_config(config, tmp_path / "s.json"))
    assert rc == 0, err[-3000:]
    _, meta = read_lora_file([e for e in events if e["type"] == "saved"][-1]["path"])
    assert meta["modelspec.architecture"] == "flux-1-schnell/lora"
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 1 and samples[0]["prompt"] == "toy, red circle"
    assert Image.open(samples[0]["path"]).size == (64, 64)  # sides rounded down to multiples of 16


def test_the_diffusers_layout_of_an_all_blocks_lora_loads_in_flux_pipeline(tmp_path, flux_files):
    """save_lora_format diffusers: PEFT keys per diffusers Linear, so single blocks load at any width too."""
    from diffusers import FluxPipeline

    saved = train(tmp_path, flux_files, "peft", save_lora_format="diffusers")
    tensors, _ = read_lora_file(saved)
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight" in tensors
    assert all(k.startswith(("transformer.", "text_encoder.")) for k in tensors)
    kohya = train(tmp_path, flux_files, "kohya")  # same seed and settings: the same network in kohya's layout
    ref = merged_reference(flux_files, kohya)
    b, plain = base_of(flux_files), base_of(flux_files)
    pipe = FluxPipeline(transformer=b.unet, vae=b.vae, text_encoder=b.text_encoders[0], text_encoder_2=b.text_encoders[1],
                        tokenizer=b.tokenizers[0], tokenizer_2=b.tokenizers[1], scheduler=b.scheduler)
    pipe.load_lora_weights(saved)
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=1.0)
    pipe.unload_lora_weights()
    for mine, theirs, orig in ((ref.unet, pipe.transformer, plain.unet),
                               (ref.text_encoders[0], pipe.text_encoder, plain.text_encoders[0])):
        want, got, before_sd = mine.state_dict(), theirs.state_dict(), orig.state_dict()
        changed = {k for k in want if not torch.equal(want[k], before_sd[k])}
        assert changed and changed == {k for k in want if not torch.equal(got[k], before_sd[k])}
        for k in changed:
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
