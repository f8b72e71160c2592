"""DreamBooth of a DiT transformer (FLUX.1, SD3.5) end to end: the run saves the original single-file
layout; it loads back in our loader with the trained weights, and the SD3 file in diffusers'
SD3Transformer2DModel.from_single_file (diffusers' FLUX converter assumes FLUX.1's real widths, so the tiny
FLUX file is checked through our loader and the BFL key names here, and the layout against diffusers' converter
at real widths in test_flux_single_file.py)."""
from __future__ import annotations

import pytest
import torch
from test_train_support import make_dataset, run_trainer, write_config

from trainer.config import parse_config
from trainer.models.loader import load_base_model
from trainer.models.tiny_dit import write_tiny_flux, write_tiny_sd3


def db_run(tmp_path, files, family):
    data = make_dataset(tmp_path / "data", images=2)
    te = {k: str(files[k]) for k in ("clip_l", "clip_g", "t5xxl", "ae") if k in files}
    values = dict(pretrained_model_name_or_path=str(files["model"]), train_data_dir=str(data),
                  output_dir=str(tmp_path / "out"), output_name="db", resolution="64", enable_bucket=False,
                  min_bucket_reso=64, train_batch_size=1, epoch=1, optimizer="AdamW", learning_rate=1e-3,
                  learning_rate_te=1e-5, lr_scheduler="constant", lr_warmup=0, mixed_precision="no",
                  save_precision="float", seed=3, cache_latents=True, num_cpu_threads_per_process=1,
                  t5xxl_max_token_length=16, **{f"{family}_checkbox" if family == "sd3" else "flux1_checkbox": True},
                  **te)
    config = parse_config("dreambooth", values)
    rc, events, err = run_trainer(write_config(config, tmp_path / "db.json"))
    assert rc == 0, err[-3000:]
    assert any("text encoders are not fine-tuned" in e.get("message", "") for e in events if e["type"] == "warning")
    return [e for e in events if e["type"] == "saved"][-1]["path"]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_dreambooth_saves_the_original_single_file_layout(tmp_path, family):
    from safetensors import safe_open

    write = write_tiny_flux if family == "flux" else write_tiny_sd3
    files = write(tmp_path / "model")
    path = db_run(tmp_path, files, family)
    with safe_open(path, framework="pt") as fh:
        keys = set(fh.keys())
    marker = "double_blocks.0.img_attn.qkv.weight" if family == "flux" else "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    assert marker in keys and not any(k.startswith("text_encoders.") for k in keys)
    tes = {k: files[k] for k in ("clip_l", "clip_g", "t5xxl") if k in files}
    before = load_base_model(files["model"], vae=files.get("ae"), text_encoder_files=tes)
    after = load_base_model(path, vae=files.get("ae"), text_encoder_files=tes)
    assert after.family == family
    changed = [k for k, v in after.unet.state_dict().items() if not torch.equal(v, before.unet.state_dict()[k])]
    assert changed, "the transformer trained"
    if family == "sd3":
        from diffusers import SD3Transformer2DModel

        from trainer.models.tiny_dit import get_architecture

        theirs = SD3Transformer2DModel.from_single_file(path, config=str(get_architecture("tiny-sd3").path),
                                                        subfolder="transformer", torch_dtype=torch.float32)
        for k, v in after.unet.state_dict().items():
            assert torch.equal(theirs.state_dict()[k], v), k
