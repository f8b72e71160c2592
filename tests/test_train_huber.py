"""The scheduled Huber loss as Kohya_ss users set it (loss_type huber / smooth_l1, huber_schedule snr —
kohya's default — exponential or constant, huber_c, huber_scale): the same thresholds as sd-scripts on
the SD families, the same curve over the noise level on FLUX/SD3, and the settings travel with the config."""
from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.config import config_for


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_the_thresholds_per_timestep_are_sd_scripts_ones():
    from trainer.train.diffusion import ddpm_huber_c

    s, t = ddpm(), torch.tensor([0, 10, 250, 500, 999])
    a = s.alphas_cumprod[t]
    noise_level = ((1 - a) / a) ** 0.5
    for schedule, expected in (
        ("snr", (1 - 0.1) / (1 + noise_level) ** 2 + 0.1),
        ("exponential", torch.exp(math.log(0.1) / 1000 * t) * 2.0),
        ("constant", torch.full((5,), 0.1 * 2.0)),
    ):
        got = ddpm_huber_c(s, t, config_for("lora", loss_type="huber", huber_schedule=schedule, huber_scale=2.0))
        assert torch.allclose(got, expected.float(), rtol=1e-5), schedule
    snr = ddpm_huber_c(s, t, config_for("lora", loss_type="huber"))
    assert snr[0] > 0.9 and abs(snr[-1] - 0.1) < 0.01  # ~1 on clean samples, huber_c on pure noise
    assert torch.all(snr[1:] < snr[:-1])


def test_a_threshold_per_sample_gives_each_sample_its_own_pseudo_huber_loss():
    from trainer.train.diffusion import per_sample_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    c = torch.tensor([0.9, 0.3, 0.1])
    for loss_type in ("huber", "smooth_l1"):
        together = per_sample_loss(pred, target, loss_type, c)
        alone = torch.cat([per_sample_loss(pred[i:i + 1], target[i:i + 1], loss_type, float(c[i])) for i in range(3)])
        assert torch.allclose(together, alone), loss_type
    huber = per_sample_loss(pred, target, "huber", 0.1)
    assert torch.allclose(huber, (2 * 0.1 * (torch.sqrt((pred - target) ** 2 + 0.01) - 0.1)).mean(dim=(1, 2, 3)))


def test_flow_matching_uses_the_same_curve_over_its_noise_level():
    """FLUX/SD3 have no ᾱ (sd-scripts refuses snr there): SNR = ((1 − σ)/σ)², so σ_ddpm = σ/(1 − σ)."""
    from trainer.train.flow_matching import FlowMatchingObjective

    sigma = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    obj = FlowMatchingObjective(loss_type="smooth_l1", huber_schedule="snr", huber_c=0.2)
    inside = sigma[:-1]
    assert torch.allclose(obj.huber_threshold(inside), 0.8 / (1 + inside / (1 - inside)) ** 2 + 0.2)
    assert obj.huber_threshold(sigma)[-1] == pytest.approx(0.2)  # pure noise: huber_c, without dividing by 0
    exp = FlowMatchingObjective(loss_type="huber", huber_schedule="exponential", huber_c=0.1, huber_scale=3.0)
    assert torch.allclose(exp.huber_threshold(sigma), 3.0 * 0.1 ** sigma)  # sd-scripts' exp(−α·1000σ)·scale
    assert FlowMatchingObjective(loss_type="l2").huber_threshold(sigma) == 0.0


@pytest.mark.parametrize("family_loss", ["ddpm", "flow"])
def test_the_schedule_changes_the_loss_a_step_minimises(family_loss):
    from trainer.train.flow_matching import FlowMatchingObjective
    from trainer.train.diffusion import ddpm_huber_c, per_sample_loss

    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    losses = {}
    for schedule in ("snr", "exponential", "constant"):
        if family_loss == "ddpm":
            cfg = config_for("lora", loss_type="huber", huber_schedule=schedule)
            c = ddpm_huber_c(ddpm(), torch.tensor([5, 200, 600, 950]), cfg)
            losses[schedule] = per_sample_loss(pred, target, "huber", c)
        else:
            obj = FlowMatchingObjective(loss_type="huber", huber_schedule=schedule, target="latents")
            losses[schedule] = obj.loss(pred, target, torch.zeros_like(target), torch.tensor([5., 200, 600, 950]))
    assert not torch.allclose(losses["snr"], losses["constant"])
    assert not torch.allclose(losses["exponential"], losses["constant"])
    assert all(torch.isfinite(v).all() for v in losses.values())


def test_kohya_huber_settings_import_train_and_are_written_into_the_lora_and_the_sd_scripts_export(
        tmp_path, tiny_model_dir):
    import trainer.config as tc
    from safetensors import safe_open
    from test_config_kohya_import import KOHYA_JSON
    from test_train_support import lora_config, make_dataset, run_trainer, write_config

    from trainer.config.sd_scripts_export import sd_scripts_export

    data = json.load(open(KOHYA_JSON))
    data.update({"loss_type": "smooth_l1", "huber_schedule": "exponential", "huber_c": 0.2, "huber_scale": 1.5})
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    c = loaded.config
    assert (c.loss_type, c.huber_schedule, c.huber_c, c.huber_scale) == ("smooth_l1", "exponential", 0.2, 1.5)
    assert not any("huber" in k for k in loaded.ignored_keys)
    exported = sd_scripts_export(c).toml_data
    assert (exported["huber_schedule"], exported["huber_c"], exported["huber_scale"]) == ("exponential", 0.2, 1.5)

    huber = {k: getattr(c, k) for k in ("loss_type", "huber_schedule", "huber_c", "huber_scale")}
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), tmp_path / "out", epoch=1, **huber)
    rc, events, err = run_trainer(write_config(config, tmp_path / "run.json"))
    assert rc == 0, err[-3000:]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)  # (step events are throttled)
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert (meta["ss_loss_type"], meta["ss_huber_schedule"], meta["ss_huber_c"], meta["ss_huber_scale"]) == (
        "smooth_l1", "exponential", "0.2", "1.5")
