"""Kohya_ss's noise options beyond noise_offset (sd-scripts' get_noise_noisy_latents_and_timesteps): input
perturbation (ip_noise_gamma, its random strength), a random-strength and an adaptive noise offset, and the
v-prediction-like loss — each drawn from the step's own seed, so resumed and split batches stay exact."""
from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.config import config_for, parse_config
from trainer.train.diffusion import finish_noise, sample_noise, snr_loss_weights
from trainer.train.loop import stack_draws

SHAPE = (4, 8, 8)


def draws(n=3, seed=3, **options):
    torch.manual_seed(seed)
    cfg = config_for("lora", **options)
    return stack_draws([sample_noise(SHAPE, "cpu", cfg) for _ in range(n)]), cfg


def test_input_perturbation_noises_the_model_input_but_not_the_target():
    plain, cfg_plain = draws()
    ip, cfg = draws(ip_noise_gamma=0.1)
    latents = torch.randn(3, *SHAPE)
    target, model_input = finish_noise(ip, latents, cfg)
    assert torch.equal(target[0], plain["noise"][0])  # the first sample's target noise is unchanged
    extra = (model_input - target) / 0.1
    assert extra.std().item() == pytest.approx(1.0, abs=0.2) and not torch.allclose(extra, target)
    same, same_input = finish_noise(plain, latents, cfg_plain)
    assert same_input is same  # off: one noise for both


def test_random_strengths_stay_between_zero_and_the_setting():
    ip, cfg = draws(n=64, ip_noise_gamma=0.2, ip_noise_gamma_random_strength=True)
    target, model_input = finish_noise(ip, torch.zeros(64, *SHAPE), cfg)
    per_sample = (model_input - target).flatten(1).std(dim=1)
    assert per_sample.max() < 0.2 * 1.5 and per_sample.min() < 0.05 and per_sample.std() > 0.02  # varies
    offset, _ = draws(n=64, noise_offset=0.5, noise_offset_random_strength=True)
    plain, _ = draws(n=64, noise_offset=0.5)
    spread = lambda d: d["noise"].mean(dim=(2, 3)).abs().mean().item()  # noqa: E731
    assert spread(offset) < spread(plain)


def test_the_adaptive_offset_grows_with_each_channels_mean_latent():
    """sd-scripts' apply_noise_offset: offset = noise_offset + adaptive_noise_scale × |mean latent| per
    channel (never below 0), times one Gaussian per channel."""
    d, cfg = draws(noise_offset=0.1, adaptive_noise_scale=0.5)
    torch.manual_seed(3)
    eps, direction = torch.randn(SHAPE), torch.randn(SHAPE[0], 1, 1)
    latents = torch.zeros(3, *SHAPE)
    latents[0] += torch.tensor([2.0, -1.0, 0.0, 0.5]).view(4, 1, 1)
    target, model_input = finish_noise(d, latents, cfg)
    expected = eps + (0.1 + 0.5 * torch.tensor([2.0, 1.0, 0.0, 0.5]).view(4, 1, 1)) * direction
    assert torch.allclose(target[0], expected, atol=1e-6) and model_input is target
    negative, cfg_neg = draws(noise_offset=0.1, adaptive_noise_scale=-1.0)
    offset = finish_noise(negative, latents, cfg_neg)[0][0] - eps
    assert torch.allclose(offset[0], torch.zeros(8, 8), atol=1e-6)  # 0.1 − 2 clamps to 0


def test_v_pred_like_loss_adds_the_loss_scaled_by_one_over_snr_share():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    s = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = torch.tensor([10, 500, 990])
    snr = compute_snr(s, t).clamp(max=1000)
    weights = snr_loss_weights(s, t, config_for("lora", v_pred_like_loss=0.2), False)
    assert torch.allclose(weights, 1 + 0.2 / (snr / (snr + 1)))


def test_an_adaptive_offset_without_a_noise_offset_is_refused_with_the_fix():
    from trainer.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config("lora", {"adaptive_noise_scale": 0.01, "noise_offset": 0})
    assert "adaptive_noise_scale" in str(err.value) and "set noise_offset" in str(err.value)


def test_flow_models_predict_from_the_perturbed_input():
    from trainer.train.flow_matching import FlowMatchingObjective

    obj = FlowMatchingObjective(model_prediction_type="additive")
    latents, noise = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    t = torch.tensor([300.0, 700.0])
    noisy = obj.add_noise(latents, noise, t)
    pred = torch.randn(2, *SHAPE)
    assert torch.equal(obj.loss(pred, latents, noise, t), obj.loss(pred, latents, noise, t, noisy))
    assert not torch.allclose(obj.loss(pred, latents, noise, t), obj.loss(pred, latents, noise, t, noisy + 0.1))


def test_a_kohya_config_with_every_noise_option_trains_and_records_them(tmp_path, tiny_model_dir):
    from safetensors import safe_open
    from test_config_kohya_import import KOHYA_JSON
    from test_train_support import lora_config, make_dataset, run_trainer, write_config

    import trainer.config as tc

    data = json.load(open(KOHYA_JSON))
    noise = {"noise_offset_type": "Original", "noise_offset": 0.05, "noise_offset_random_strength": True,
             "adaptive_noise_scale": 0.01, "ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True,
             "v_pred_like_loss": 0.1}
    data.update(noise)
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert {k: getattr(loaded.config, k) for k in noise} == noise and loaded.ignored_keys == []

    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), tmp_path / "out", epoch=1, **noise)
    rc, events, err = run_trainer(write_config(config, tmp_path / "run.json"))
    assert rc == 0, err[-3000:]
    assert all(math.isfinite(e["loss"]) for e in events if e["type"] == "step")
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert (meta["ss_ip_noise_gamma"], meta["ss_ip_noise_gamma_random_strength"], meta["ss_adaptive_noise_scale"],
            meta["ss_noise_offset_random_strength"]) == ("0.1", "True", "0.01", "True")


def test_zero_terminal_snr_trains_a_v_prediction_model_on_a_schedule_ending_in_pure_noise(tmp_path, tiny_model_dir):
    """sd-scripts' --zero_terminal_snr (NoobAI-XL v-pred's recipe): ᾱ at t = 999 is 0, so the input is pure
    noise and the v target is −x₀; Min-SNR weights stay finite there."""
    from safetensors import safe_open
    from test_train_support import lora_config, make_dataset, run_trainer, write_config

    from trainer.models.components import build_noise_scheduler

    base = build_noise_scheduler(True)
    ztsnr = type(base).from_config(base.config, rescale_betas_zero_snr=True)
    assert ztsnr.alphas_cumprod[-1] == 0 and base.alphas_cumprod[-1] > 0
    latents, noise, t = torch.randn(1, *SHAPE), torch.randn(1, *SHAPE), torch.tensor([999])
    assert torch.allclose(ztsnr.add_noise(latents, noise, t), noise)
    assert torch.allclose(ztsnr.get_velocity(latents, noise, t), -latents)
    for v_prediction in (True, False):
        weights = snr_loss_weights(ztsnr, torch.tensor([10, 999]), config_for("lora", min_snr_gamma=5), v_prediction)
        assert torch.isfinite(weights).all()

    model, data = tiny_model_dir("sd1"), make_dataset(tmp_path / "data")
    config = lora_config(model, data, tmp_path / "out", epoch=1, zero_terminal_snr=True, v_parameterization=True,
                         min_snr_gamma=5)
    rc, events, err = run_trainer(write_config(config, tmp_path / "run.json"))
    assert rc == 0, err[-3000:]
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), framework="pt") as fh:
        assert fh.metadata()["ss_zero_terminal_snr"] == "True"
    config = lora_config(model, data, tmp_path / "eps", epoch=1, zero_terminal_snr=True)
    rc, events, err = run_trainer(write_config(config, tmp_path / "eps.json"))
    assert rc == 0 and any("meant for v-prediction" in e.get("message", "") for e in events if e["type"] == "warning")
