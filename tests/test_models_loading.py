"""A user points the trainer at a base model — single file, diffusers folder — and gets the same model."""

from __future__ import annotations

import pytest
import torch

from trainer.models import encode_prompt, load_base_model, tokenize_prompt
from test_models_helpers import assert_outputs_match, assert_same_model, assert_same_weights, te_out, unet_out, vae_out
from trainer.models.tiny import build_tiny_components

FAMILIES = ["sd1", "sd2", "sdxl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_as_the_generated_model_and_family_is_detected(family, tiny_model_dir):
    """Loading the original-layout .safetensors gives exactly the model that was written."""
    path = tiny_model_dir(family)
    base = load_base_model(path)
    assert base.family == family
    assert base.v_prediction is (family == "sd2")
    assert base.noise_scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert len(base.text_encoders) == len(base.tokenizers) == (2 if family == "sdxl" else 1)
    assert path.name in base.source and {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}[family] in base.source
    assert_same_model(base, build_tiny_components(family, seed=0))


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_folder_loads_as_the_generated_model(family, tiny_model_dir):
    base = load_base_model(tiny_model_dir(family, layout="diffusers"))
    assert (base.family, base.v_prediction) == (family, family == "sd2")
    assert_same_model(base, build_tiny_components(family, seed=0))


def test_ckpt_single_file_loads_like_safetensors(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1", suffix=".ckpt"))
    assert base.family == "sd1"
    unet = build_tiny_components("sd1")["unet"]
    assert_same_weights(base.unet, unet)
    assert_outputs_match(unet_out(base.unet), unet_out(unet))


def test_different_seeds_give_different_models():
    a, b = build_tiny_components("sd1", seed=0), build_tiny_components("sd1", seed=1)
    assert not torch.equal(unet_out(a["unet"]), unet_out(b["unet"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_load_in_half_precision(dtype, tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"), dtype={torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype])
    assert {p.dtype for m in (base.unet, base.vae, *base.text_encoders) for p in m.parameters()} == {dtype}
    ref = unet_out(build_tiny_components("sd1")["unet"])
    assert torch.allclose(unet_out(base.unet), ref, atol=0.1 * ref.abs().max().item())


def test_v_parameterization_option_overrides_detection(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd2"), v_parameterization=False)
    assert base.v_prediction is False and base.noise_scheduler.config.prediction_type == "epsilon"
    assert "set by option" in base.source
    assert base.base_model_version == "sd_v2"


def test_vae_override_from_single_file_and_folder(tmp_path, tiny_model_dir):
    """--vae: a standalone original-layout VAE file (keys encoder.* / decoder.*) or a diffusers folder."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.ldm_keys import vae_to_ldm

    other = build_tiny_components("sd1", seed=7)["vae"]
    ldm = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(other.state_dict(), other.config).items()}
    vae_file = write_checkpoint(ldm, tmp_path / "my-vae.safetensors")
    base = load_base_model(tiny_model_dir("sd1"), vae=vae_file)
    assert_same_weights(base.vae, other)
    assert_outputs_match(vae_out(base.vae), vae_out(other))
    assert "my-vae" in base.source
    other.save_pretrained(tmp_path / "vae-folder")
    base = load_base_model(tiny_model_dir("sd1"), vae=tmp_path / "vae-folder")
    assert_same_weights(base.vae, other)
    assert_outputs_match(vae_out(base.vae), vae_out(other))


def test_sd1_clip_skip_uses_the_penultimate_layer_with_final_norm(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    ids = tokenize_prompt(base, ["a photo of sks dog", "a cat"])
    h1, pooled = encode_prompt(base, ids, clip_skip=1)
    h2, _ = encode_prompt(base, ids, clip_skip=2)
    te = base.text_encoders[0]
    with torch.no_grad():
        out = te(ids[0], output_hidden_states=True)
    assert pooled is None and h1.shape == (2, 77, 32)
    assert torch.equal(h1, out.last_hidden_state)
    assert torch.allclose(h2, getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-2]))
    assert not torch.allclose(h1, h2)


def test_sdxl_prompt_encoding_concatenates_both_encoders_and_pools_te2(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sdxl"))
    ids = tokenize_prompt(base, ["a photo of sks dog"])
    hidden, pooled = encode_prompt(base, ids)
    assert hidden.shape == (1, 77, 32 + 48) and pooled.shape == (1, 48)
    with torch.no_grad():
        ref = base.text_encoders[1](ids[1]).text_embeds  # transformers' own pooling
    assert torch.allclose(pooled, ref, atol=1e-6)
    assert torch.isfinite(base.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), hidden, added_cond_kwargs={
        "text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}).sample).all()


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_long_captions_are_encoded_in_75_token_chunks(family, tiny_model_dir):
    base = load_base_model(tiny_model_dir(family))
    caption = ", ".join(["masterpiece best quality"] * 40)
    ids = tokenize_prompt(base, [caption, "a dog"], max_token_length=150)
    assert ids[0].shape == (2, 2, 77)
    bos, eos = base.tokenizers[0].bos_token_id, base.tokenizers[0].eos_token_id
    assert (ids[0][:, :, 0] == bos).all() and (ids[0][0, :, -1] == eos).all()
    hidden, _ = encode_prompt(base, ids)
    assert hidden.shape == (2, 152, 32)


def test_old_sd1_files_without_text_model_infix_load(tmp_path, tiny_model_dir):
    """Early SD1 checkpoints name the text encoder cond_stage_model.transformer.encoder.* and carry
    a position_ids buffer; Kohya inserts the text_model. infix — so does this loader."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(tiny_model_dir("sd1"), "pt") as fh:
        old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): fh.get_tensor(k)
               for k in fh.keys()}
    old["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(old, tmp_path / "old-sd1.safetensors")
    base = load_base_model(tmp_path / "old-sd1.safetensors")
    comps = build_tiny_components("sd1")
    assert base.family == "sd1"
    assert_same_weights(base.text_encoders[0], comps["text_encoder"])
    assert_outputs_match(te_out(base.text_encoders[0], base.tokenizers[0]),
                         te_out(comps["text_encoder"], comps["tokenizer"]))
