"""cpu_offload_checkpointing: a FLUX.1 / SD3 user short of VRAM keeps what the checkpointed blocks hold for
the backward pass in CPU memory. The gradients are those of plain checkpointing; the option follows
sd-scripts' rules and comes in from a kohya_ss JSON and goes out to sd-scripts' TOML."""
from __future__ import annotations

import pytest
import torch

from trainer.config import ConfigError, parse_config
from trainer.config.kohya_import import import_kohya_json
from trainer.config.sd_scripts_export import sd_scripts_export


def transformer_gradients(family: str, cpu_offload: bool) -> dict:
    """Every weight's gradient of the tiny transformer, fully fine-tuned, under checkpointing."""
    from types import SimpleNamespace

    from trainer.config import config_for
    from trainer.models import flux_forward, sd3_forward
    from trainer.models.tiny_dit import build_tiny_flux, build_tiny_sd3
    from trainer.train.precision import enable_gradient_checkpointing

    torch.set_num_threads(1)
    tr = (build_tiny_flux if family == "flux" else build_tiny_sd3)(0)["transformer"].requires_grad_(True)
    enable_gradient_checkpointing(tr, [], False, mode="full", random_inside=False, cpu_offload=cpu_offload)
    call = (flux_forward if family == "flux" else sd3_forward).make_denoise(SimpleNamespace(extra={}), config_for("lora"))
    g = torch.Generator().manual_seed(2)
    channels = tr.config.in_channels // (4 if family == "flux" else 1)
    x = torch.randn(1, channels, 8, 8, generator=g)
    hidden = torch.randn(1, 6, tr.config.joint_attention_dim, generator=g)
    pooled = torch.randn(1, tr.config.pooled_projection_dim, generator=g)
    call(tr, x, torch.tensor([500.0]), hidden, pooled).square().mean().backward()
    return {n: p.grad for n, p in tr.named_parameters()}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_offloaded_checkpointing_gives_the_gradients_of_plain_checkpointing(family):
    plain = transformer_gradients(family, cpu_offload=False)
    offloaded = transformer_gradients(family, cpu_offload=True)
    assert all(g is not None for g in plain.values())
    # the same kernels on the same values (the copies are exact): every block's own weights bit-identical
    differ = [n for n in plain if not torch.equal(plain[n], offloaded[n])]
    assert all(n.startswith("time_text_embed.") for n in differ), differ
    # the conditioning vector feeds every block; with one copy per block its gradient is summed in another
    # order, which moves the embedders' gradients by float32 rounding only (measured ~1e-7 relative)
    for n in differ:
        torch.testing.assert_close(offloaded[n], plain[n], rtol=1e-5, atol=1e-8)


BASE = dict(pretrained_model_name_or_path="m.safetensors", train_data_dir="d", flux1_checkbox=True)


@pytest.mark.parametrize("values, words", [
    ({}, "tick gradient_checkpointing too"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_mode": "selective"}, "mode full"),
    ({"gradient_checkpointing": True, "blocks_to_swap": 8}, "cannot be used with blocks_to_swap"),
])
def test_cpu_offload_checkpointing_follows_sd_scripts_rules(values, words):
    parse_config("lora", {**BASE, "gradient_checkpointing": True, "cpu_offload_checkpointing": True})
    with pytest.raises(ConfigError) as err:
        parse_config("lora", {**BASE, "cpu_offload_checkpointing": True, **values})
    assert "cpu_offload_checkpointing" in str(err.value) and words in str(err.value)


def test_kohya_json_and_sd_scripts_toml_carry_both_memory_options():
    """kohya_ss's FLUX section has its own fused-backward checkbox; cpu offload turns checkpointing on."""
    flux_db = {"flux1_checkbox": True, "pretrained_model_name_or_path": "flux1-dev.safetensors",
               "optimizer": "Adafactor", "flux_fused_backward_pass": True, "fused_backward_pass": False,
               "cpu_offload_checkpointing": True, "gradient_checkpointing": False, "mixed_precision": "bf16"}
    values, _, notes = import_kohya_json(flux_db, "dreambooth")
    assert values["fused_backward_pass"] is True and values["cpu_offload_checkpointing"] is True
    assert values["gradient_checkpointing"] is True and any("cpu_offload_checkpointing" in n for n in notes)
    sdxl_ft = {"sdxl": True, "pretrained_model_name_or_path": "sdxl.safetensors", "fused_backward_pass": True,
               "sd3_fused_backward_pass": False, "optimizer": "Adafactor"}
    assert import_kohya_json(sdxl_ft, "finetune")[0]["fused_backward_pass"] is True

    export = sd_scripts_export(parse_config("dreambooth", {**values, "train_data_dir": "d"}))
    assert export.script == "flux_train.py" and export.toml_data["fused_backward_pass"] is True
    assert export.toml_data["cpu_offload_checkpointing"] is True and not export.notes  # flux_train.py reads it
    sd_db = sd_scripts_export(parse_config("dreambooth", {**BASE, "flux1_checkbox": False,
                                                          "gradient_checkpointing": True,
                                                          "cpu_offload_checkpointing": True}))
    assert "cpu_offload_checkpointing" not in sd_db.toml_data  # train_db.py has no such argument
    assert sd_db.notes == ["cpu_offload_checkpointing is left out: train_db.py has no such option"]
    lora = parse_config("lora", {**BASE, "gradient_checkpointing": True, "cpu_offload_checkpointing": True})
    assert sd_scripts_export(lora).toml_data["cpu_offload_checkpointing"] is True
