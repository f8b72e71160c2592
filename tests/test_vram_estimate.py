"""The plan's VRAM estimate (unmeasured: parameter counts plus a guessed activation term) moves the way the
settings should move it, and `python -m trainer plan` reports it for a FLUX.1 config."""
from __future__ import annotations

import json
import subprocess

from test_train_support import PYTHON, ROOT, env, lora_config, make_dataset, write_config

from trainer.config import config_for
from trainer.vram import estimate_vram


def cfg(**kw):
    kw = {**dict(mixed_precision="bf16", resolution="1024,1024", gradient_checkpointing=True, flux1_checkbox=True),
          **kw}
    training_type = kw.pop("training_type", "lora")
    if training_type == "lora":
        kw = {"network_dim": 16, "network_train_unet_only": True, **kw}
    return config_for(training_type, **kw)


def test_fp8_cached_text_and_checkpointing_each_lower_the_flux_estimate():
    full = estimate_vram("flux", cfg())
    assert full.measured is False and "unmeasured" in full.note
    assert estimate_vram("flux", cfg(fp8_base=True)).weights_gb < full.weights_gb
    unet_only = estimate_vram("flux", cfg(fp8_base_unet=True))  # the transformer in 8 bits, T5 stays bf16
    assert unet_only.weights_gb == estimate_vram("flux", cfg(fp8_base=True)).weights_gb
    assert unet_only.text_encoders_gb == full.text_encoders_gb > estimate_vram("flux", cfg(fp8_base=True)).text_encoders_gb
    assert estimate_vram("flux", cfg(cache_text_encoder_outputs=True)).text_encoders_gb == 0 < full.text_encoders_gb
    assert estimate_vram("flux", cfg(gradient_checkpointing=False)).activations_gb > full.activations_gb
    assert estimate_vram("flux", cfg(resolution="512")).activations_gb < full.activations_gb
    # FLUX.1's 12B transformer alone is ~22 GB in bf16: far above a 16 GB card, as the peers report
    assert full.weights_gb > 20 and estimate_vram("flux", cfg(fp8_base=True, cache_text_encoder_outputs=True)).total_gb < 16
    assert estimate_vram("flux", cfg(fp8_base=True, blocks_to_swap=28)).weights_gb < 7
    assert estimate_vram("sd3", cfg(), "medium").total_gb < estimate_vram("sd3", cfg(), "large").total_gb


def test_a_24_gb_flux_dreambooth_needs_full_bf16_fused_backward_and_adafactor():
    """kohya's recipe for FLUX.1 fine-tuning on 24 GB: bf16 weights, Adafactor, fused backward pass, block
    inputs offloaded; AdamW with whole gradients is far beyond any single card."""
    db = dict(training_type="dreambooth", cache_text_encoder_outputs=True, learning_rate_te=0)
    adamw = estimate_vram("flux", cfg(**db, optimizer="AdamW"))
    recipe = cfg(**db, optimizer="Adafactor", full_bf16=True, fused_backward_pass=True)
    fused = estimate_vram("flux", recipe)
    assert adamw.total_gb > 150 and fused.total_gb < adamw.total_gb / 5
    unfused = estimate_vram("flux", recipe.model_copy(update={"fused_backward_pass": False}))
    assert unfused.lora_and_optimizer_gb > 20 > fused.lora_and_optimizer_gb  # 12 B bf16 gradients vs one block's
    offloaded = estimate_vram("flux", recipe.model_copy(update={"cpu_offload_checkpointing": True}))
    assert offloaded.activations_gb < fused.activations_gb


def test_plan_reports_the_estimate_for_a_flux_config(tmp_path):
    from trainer.models.tiny_dit import write_tiny_flux

    files = write_tiny_flux(tmp_path / "flux")
    config = lora_config(files["model"], make_dataset(tmp_path / "data", images=2), tmp_path / "out",
                         resolution="64", fp8_base=True)
    proc = subprocess.run([PYTHON, "-m", "trainer", "plan", str(write_config(config, tmp_path / "c.json")), "--json"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["family"] == "flux" and out["vram_estimate"]["measured"] is False  # detected from the file's keys
