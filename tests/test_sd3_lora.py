"""SD3.5 LoRA end to end on a tiny generated SD3.5-Medium-shaped model (MMDiT-X block, CLIP-L + CLIP-G +
T5, SAI file layout): every layout loads, our SAI key map agrees with diffusers' own converter, a kohya_ss
SD3 JSON trains a LoRA with kohya's SD3 names that ComfyUI's key map places, and the diffusers layout
loads in StableDiffusion3Pipeline with every module placed and the image changed."""
from __future__ import annotations

import json

import pytest
import torch
from test_train_support import lora_config, make_dataset, run_trainer, write_config

from trainer.models.loader import load_base_model
from trainer.models.sd3_keys import diffusers_to_sai, sai_to_diffusers
from trainer.models.tiny_dit import build_tiny_sd3, write_tiny_sd3
from trainer.networks.files import read_lora_file

TE_KEYS = ("clip_l", "clip_g", "t5xxl")


@pytest.fixture(scope="module")
def sd3_files(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3") / "kohya", layout="kohya")


def base_of(files):
    return load_base_model(files["model"], text_encoder_files={k: files[k] for k in TE_KEYS if k in files})


@pytest.mark.parametrize("layout", ["kohya", "bundled", "diffusers"])
def test_a_tiny_sd3_loads_the_same_weights_from_every_layout(tmp_path, layout):
    files = write_tiny_sd3(tmp_path / layout, layout=layout, seed=5)
    base = base_of(files)
    assert base.family == "sd3" and base.extra["variant"] == "medium"
    ref = build_tiny_sd3(5)
    parts = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    for name, module in zip(parts, (base.unet, base.vae, *base.text_encoders)):
        want, got = ref[name].state_dict(), module.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name


def test_our_sai_key_map_agrees_with_diffusers_single_file_converter():
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    tr = build_tiny_sd3(0)["transformer"]
    cfg = dict(tr.config)
    sai = diffusers_to_sai(tr.state_dict(), cfg)
    assert "joint_blocks.0.x_block.attn2.qkv.weight" in sai and "joint_blocks.1.context_block.attn.qkv.weight" in sai
    assert "joint_blocks.1.context_block.attn.proj.weight" not in sai  # the last context block is pre-only
    theirs = convert_sd3_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v for k, v in sai.items()})
    ours = sai_to_diffusers(dict(sai), cfg)
    assert ours.keys() == theirs.keys() == tr.state_dict().keys()
    assert all(torch.equal(ours[k], theirs[k]) and torch.equal(ours[k], v) for k, v in tr.state_dict().items())


def kohya_sd3_json(files, data, out) -> dict:
    return {"LoRA_type": "Standard", "sd3_checkbox": True, "pretrained_model_name_or_path": str(files["model"]),
            "clip_l": str(files["clip_l"]), "clip_g": str(files["clip_g"]), "t5xxl": str(files["t5xxl"]),
            "train_data_dir": str(data), "output_dir": str(out), "output_name": "sd3toy", "max_resolution": "64,64",
            "min_bucket_reso": 64, "network_dim": 4, "network_alpha": 4, "learning_rate": 0.002, "optimizer": "AdamW",
            "lr_scheduler": "constant", "epoch": 1, "train_batch_size": 1, "seed": 1, "mixed_precision": "no",
            "save_precision": "float", "cache_latents": True, "weighting_scheme": "logit_normal",
            "t5xxl_max_token_length": 16, "sd3_cache_text_encoder_outputs": False, "save_model_as": "safetensors",
            "sample_every_n_epochs": 1, "sample_prompts": "toy, blue square --w 32 --h 32 --s 2 --l 2 --n blurry"}


def train(tmp_path, files, name, **overrides):
    data = make_dataset(tmp_path / f"images_{name}", images=2)
    values = dict(sd3_checkbox=True, t5xxl_max_token_length=16, epoch=1, network_dim=4, network_alpha=2,
                  learning_rate=5e-3, **{k: str(files[k]) for k in TE_KEYS})
    values.update(overrides)
    config = lora_config(files["model"], data, tmp_path / name, **values)
    rc, events, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
    assert rc == 0, err[-3000:]
    return [e for e in events if e["type"] == "saved"][-1]


def test_a_kohya_ss_sd3_json_trains_a_lora_that_comfyui_places_everywhere(tmp_path, sd3_files):
    from trainer.config import load_config_file
    from trainer.networks import create_network_from_weights

    data = make_dataset(tmp_path / "images", images=2)
    path = tmp_path / "kohya_sd3.json"
    path.write_text(json.dumps(kohya_sd3_json(sd3_files, data, tmp_path / "out")))
    config = load_config_file(path).config
    assert config.sd3_checkbox and config.clip_g
    rc, events, err = run_trainer(write_config(config, tmp_path / "cfg.json"))
    assert rc == 0, err[-3000:]
    assert events[0]["family"] == "sd3"
    assert [e["prompt"] for e in events if e["type"] == "sample"] == ["toy, blue square"]  # StableDiffusion3Pipeline
    saved = [e for e in events if e["type"] == "saved"][-1]
    assert saved["verified"] is True
    tensors, meta = read_lora_file(saved["path"])
    stems = {k.split(".")[0] for k in tensors}
    assert {s.split("_")[1] for s in stems} == {"te1", "te2", "unet"}
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv" in stems and "lora_unet_joint_blocks_0_x_block_attn2_qkv" in stems
    assert meta["ss_base_model_version"] == "sd3" and meta["ss_network_module"] == "networks.lora_sd3"

    # ComfyUI's key map (model_lora_keys_unet, re-implemented): `lora_unet_<SAI path>` for every weight
    base = base_of(sd3_files)
    cfg = dict(base.unet.config)
    sai = diffusers_to_sai(base.unet.state_dict(), cfg)
    key_map = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): k for k in sai if k.endswith(".weight")}
    unet_stems = {s for s in stems if s.startswith("lora_unet_")}
    assert unet_stems <= key_map.keys(), sorted(unet_stems - key_map.keys())[:5]
    for stem in unet_stems:  # W += alpha/rank · up @ down on the SAI layout
        down, up = tensors[stem + ".lora_down.weight"], tensors[stem + ".lora_up.weight"]
        sai[key_map[stem]] = sai[key_map[stem]] + float(tensors[stem + ".alpha"]) / down.shape[0] * up @ down
    ours = base_of(sd3_files)
    create_network_from_weights(saved["path"], ours).merge_to(1.0)
    patched = sai_to_diffusers(sai, cfg)
    changed = 0
    for k, v in ours.unet.state_dict().items():
        torch.testing.assert_close(patched[k], v, atol=1e-6, rtol=1e-5, msg=k)
        changed += not torch.equal(v, base.unet.state_dict()[k])
    assert changed >= len(unet_stems)  # the swapped last modulation included


def test_the_diffusers_layout_loads_in_stable_diffusion_3_pipeline_with_every_module_placed(tmp_path, sd3_files):
    from diffusers import StableDiffusion3Pipeline

    from trainer.networks import create_network_from_weights

    kohya = train(tmp_path, sd3_files, "k")["path"]
    peft = train(tmp_path, sd3_files, "p", save_lora_format="diffusers")
    assert peft["verified"] is None
    tensors, _ = read_lora_file(peft["path"])
    assert all(k.startswith(("transformer.", "text_encoder.", "text_encoder_2.")) for k in tensors)
    assert "transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight" in tensors
    # the same seed and settings train the same network; only the layout of the file differs
    ref = base_of(sd3_files)
    create_network_from_weights(kohya, ref).merge_to(1.0)

    def pipeline():
        b = base_of(sd3_files)
        return StableDiffusion3Pipeline(
            transformer=b.unet, scheduler=b.scheduler, vae=b.vae, text_encoder=b.text_encoders[0],
            tokenizer=b.tokenizers[0], text_encoder_2=b.text_encoders[1], tokenizer_2=b.tokenizers[1],
            text_encoder_3=b.text_encoders[2], tokenizer_3=b.tokenizers[2])

    def image(pipe):
        return pipe("toy, red circle", height=32, width=32, num_inference_steps=2, guidance_scale=2.0,
                    max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="pt").images

    plain = pipeline()
    before = image(plain)
    pipe = pipeline()
    pipe.load_lora_weights(peft["path"])
    assert not torch.allclose(before, image(pipe), atol=1e-4)
    pipe.fuse_lora(components=["transformer", "text_encoder", "text_encoder_2"], lora_scale=1.0)
    pipe.unload_lora_weights()
    for mine, theirs, orig in ((ref.unet, pipe.transformer, plain.transformer),
                               (ref.text_encoders[0], pipe.text_encoder, plain.text_encoder),
                               (ref.text_encoders[1], pipe.text_encoder_2, plain.text_encoder_2)):
        want, got, before_sd = mine.state_dict(), theirs.state_dict(), orig.state_dict()
        changed = {k for k in want if not torch.equal(want[k], before_sd[k])}
        assert changed and changed == {k for k in want if not torch.equal(got[k], before_sd[k])}
        for k in changed:  # fp32 products in another order: tolerance
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
