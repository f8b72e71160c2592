"""DreamBooth / fine-tune users save the whole model back; other tools must read the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from test_models_helpers import assert_outputs_match, assert_same_weights, unet_out, vae_out
from trainer.models import load_base_model, save_diffusers, save_single_file
from trainer.models.tiny import tiny_config_dir


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_saved_single_file_loads_back_in_our_loader_and_in_diffusers(family, tmp_path, tiny_model_dir):
    """save_single_file → original keys that this loader AND diffusers' from_single_file read identically."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    base = load_base_model(tiny_model_dir(family))
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: the saved model must differ from the generated one
        for p in base.unet.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = save_single_file(base, tmp_path / "trained.safetensors", dtype=torch.float32)
    expected = unet_out(base.unet)

    again = load_base_model(out)
    assert (again.family, again.v_prediction) == (family, family == "sd2")
    assert_same_weights(again.unet, base.unet)
    assert_same_weights(again.vae, base.vae)
    assert_outputs_match(unet_out(again.unet), expected)
    assert_outputs_match(vae_out(again.vae), vae_out(base.vae))

    config = str(tiny_config_dir(family))
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None}
    pipe = cls.from_single_file(str(out), config=config, local_files_only=True, **extra)
    assert_same_weights(pipe.unet, base.unet)
    assert_outputs_match(unet_out(pipe.unet), expected)
    ids = base.tokenizers[0](["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert_same_weights(pipe.text_encoder, base.text_encoders[0])
    with torch.no_grad():
        assert_outputs_match(pipe.text_encoder(ids).last_hidden_state, base.text_encoders[0](ids).last_hidden_state)
        if family == "sdxl":
            assert_same_weights(pipe.text_encoder_2, base.text_encoders[1])
            assert_outputs_match(pipe.text_encoder_2(ids).text_embeds, base.text_encoders[1](ids).text_embeds)


def test_single_file_uses_original_key_layout_and_records_the_architecture(tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir("sdxl"))
    out = save_single_file(base, tmp_path / "xl.safetensors")  # default fp16, like Kohya's --save_precision fp16
    with safe_open(out, "pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
        assert fh.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert not any(k.startswith(("down_blocks", "unet.", "text_model.")) for k in keys)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_sd2_single_file_records_v_prediction(tmp_path, tiny_model_dir):
    out = save_single_file(load_base_model(tiny_model_dir("sd2")), tmp_path / "v.safetensors")
    with safe_open(out, "pt") as fh:
        assert fh.metadata()["modelspec.prediction_type"] == "v"
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in set(fh.keys())


def test_saving_never_overwrites_unless_asked(tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="mine.safetensors"):
        save_single_file(base, target)
    assert target.read_bytes() == b"user data"
    save_single_file(base, target, overwrite=True)
    assert load_base_model(target).family == "sd1"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.safetensors"]  # no temp files left


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_save_diffusers_folder_round_trips(family, tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir(family))
    folder = save_diffusers(base, tmp_path / "model", dtype=torch.float16)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    assert (folder / "tokenizer" / "vocab.json").is_file()
    assert next(base.unet.parameters()).dtype == torch.float32  # the live model is not cast
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as fh:
        assert fh.get_tensor("conv_in.weight").dtype == torch.float16
    again = load_base_model(folder)
    assert again.family == family and next(again.unet.parameters()).dtype == torch.float32
    ref = unet_out(base.unet)
    assert torch.allclose(unet_out(again.unet), ref, atol=0.05 * ref.abs().max().item())
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
