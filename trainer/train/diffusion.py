"""The diffusion objective: noise, timesteps, targets and loss weights (sd-scripts §1.3).

Randomness is drawn from the global generator, reseeded at the start of every optimizer step from
(seed, rank, step), in a fixed order (all timesteps, then each sample's noise). So a step is a pure
function of the weights, the batch and its number: a resumed run repeats an uninterrupted one exactly,
and batch 2 × accumulation 1 sees the same noise as batch 1 × accumulation 2.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from trainer.config.options_train import HUBER_LOSSES


def step_seed(seed: int, rank: int, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_noise(shape: tuple, device, cfg) -> dict[str, torch.Tensor]:
    """One sample's random draws for a step ([C, H, W]), made before its latents are read:
    "noise": Gaussian noise plus the extra noise `noise_offset_type` names (Original = noise_offset,
    Multires = multi-resolution noise; Kohya_ss passes only that one's values); "offset_dir" / "offset" when
    adaptive_noise_scale needs the latents to finish the offset; "input_noise" (ip_noise_gamma), noise that
    enters the model's input only. Draws that are off take no random numbers."""
    noise = torch.randn(shape, device=device)
    draws = {}
    kind = cfg.noise_offset_type
    offset = float(cfg.noise_offset)
    if kind == "Original" and offset:
        direction = torch.randn((shape[0], 1, 1), device=device)
        strength = offset * torch.rand((), device=device) if cfg.noise_offset_random_strength else offset
        if cfg.adaptive_noise_scale:
            draws.update(offset_dir=direction, offset=torch.as_tensor(strength, device=device).reshape(1, 1, 1))
        else:
            noise = noise + strength * direction
    iterations = int(cfg.multires_noise_iterations)
    if kind == "Multires" and iterations:
        noise = pyramid_noise(noise, iterations, float(cfg.multires_noise_discount))
    gamma = float(cfg.ip_noise_gamma)
    if gamma:
        extra = torch.randn(shape, device=device)
        if cfg.ip_noise_gamma_random_strength:
            gamma = gamma * torch.rand((), device=device)
        draws["input_noise"] = noise + gamma * extra
    draws["noise"] = noise
    return draws


def finish_noise(draws: dict[str, torch.Tensor], latents: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch's (noise the loss targets, noise in the model's input) from its stacked draws. The adaptive
    noise offset (sd-scripts' apply_noise_offset) grows with each channel's mean |latent|, never below 0."""
    noise = draws["noise"]
    if "offset_dir" in draws:
        mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
        strength = (draws["offset"] + float(cfg.adaptive_noise_scale) * mean).clamp_min(0)
        offset = strength * draws["offset_dir"]
        noise = noise + offset
        if "input_noise" in draws:
            draws = {**draws, "input_noise": draws["input_noise"] + offset}
    return noise, draws.get("input_noise", noise)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise: add upsampled lower-resolution noise, then renormalise."""
    c, h, w = noise.shape
    for i in range(iterations):
        r = float(torch.rand(()) * 2 + 2)
        sh, sw = max(1, int(h / r ** (i + 1))), max(1, int(w / r ** (i + 1)))
        low = torch.randn((1, c, sh, sw), device=noise.device)
        noise = noise + F.interpolate(low, size=(h, w), mode="bilinear")[0] * discount ** (i + 1)
        if sh == 1 or sw == 1:
            break
    return noise / noise.std()


def sample_timesteps(n: int, device, cfg) -> torch.Tensor:
    low = int(cfg.min_timestep)
    high = int(cfg.max_timestep)
    return torch.randint(low, max(high, low + 1), (n,), device=device)


def training_target(noise_scheduler, latents, noise, timesteps, v_prediction: bool) -> torch.Tensor:
    if v_prediction:
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def mask_at(mask: torch.Tensor, size) -> torch.Tensor:
    """A batch of loss masks [B, H, W] (0..1, image or latent size) as weights [B, 1, h, w] of a latent pixel:
    the mean of the mask over the pixels each latent covers (sd-scripts' apply_masked_loss, mode "area")."""
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="area")


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    huber_c: float | torch.Tensor = 0.1, mask: torch.Tensor | None = None):
    """Loss per sample, computed in fp32 and averaged over channels and pixels. `huber_c`: one threshold, or
    one per sample (the scheduled Huber loss, huber_threshold). `mask` [B, H, W]: each pixel's loss weight
    (masked loss); the mean still divides by every pixel, as sd-scripts does, so a half-masked image
    weighs half."""
    pred, target = pred.float(), target.float()
    if loss_type == "l1":
        loss = (pred - target).abs()
    elif loss_type in HUBER_LOSSES:  # sd-scripts' pseudo-Huber
        if torch.is_tensor(huber_c):
            huber_c = huber_c.float().view(-1, *([1] * (pred.dim() - 1)))
        scale = 2 * huber_c if loss_type == "huber" else 2
        loss = scale * (torch.sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
    else:
        loss = F.mse_loss(pred, target, reduction="none")
    if mask is not None:
        loss = loss * mask_at(mask, loss.shape[2:])
    return loss.mean(dim=list(range(1, loss.dim())))


def huber_threshold(schedule: str, huber_c: float, huber_scale: float, t_fraction: torch.Tensor,
                    clean_share: torch.Tensor) -> torch.Tensor:
    """sd-scripts' scheduled Huber threshold per sample, from the timestep as a fraction of the schedule
    (t / 1000) and 1/(1 + σ)² with σ = 1/√SNR the noise level: snr → (1 − c)/(1 + σ)² + c (near 1 on clean
    samples, c on noisy ones; huber_scale unused, as in sd-scripts), exponential → scale · c^(t/1000),
    constant → c · scale."""
    if schedule == "snr":
        return (1 - huber_c) * clean_share.float() + huber_c
    if schedule == "exponential":
        return huber_scale * huber_c ** t_fraction.float()
    return torch.full(t_fraction.shape, huber_c * huber_scale, device=t_fraction.device)


def ddpm_huber_c(noise_scheduler, timesteps: torch.Tensor, cfg) -> torch.Tensor | float:
    """The scheduled Huber threshold for DDPM timesteps (σ² = (1 − ᾱ)/ᾱ); 0 for the losses without one."""
    if cfg.loss_type not in HUBER_LOSSES:
        return 0.0
    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return huber_threshold(cfg.huber_schedule, float(cfg.huber_c), float(cfg.huber_scale),
                           timesteps.float() / noise_scheduler.config.num_train_timesteps,
                           1 / (1 + ((1 - alphas) / alphas) ** 0.5) ** 2)


def snr_loss_weights(noise_scheduler, timesteps, cfg, v_prediction: bool) -> torch.Tensor | None:
    """Min-SNR-γ, v-pred scaling, v-pred-like loss and debiased estimation weights (None when none is on)."""
    gamma = float(cfg.min_snr_gamma)
    debiased = bool(cfg.debiased_estimation_loss)
    v_like = bool(cfg.scale_v_pred_loss_like_noise_pred) and v_prediction
    v_like_added = float(cfg.v_pred_like_loss)
    if not (gamma or debiased or v_like or v_like_added):
        return None
    snr = compute_snr(noise_scheduler, timesteps)
    weight = torch.ones_like(snr)
    if gamma:
        clipped = torch.clamp(snr, max=gamma)
        # ε: min(SNR, γ)/SNR → 1 as SNR → 0 (the last timestep under zero_terminal_snr), not 0/0
        weight = weight * (clipped / (snr + 1) if v_prediction else torch.where(snr > 0, clipped / snr, 1.0))
    if v_like:
        weight = weight * snr / (snr + 1)
    if v_like_added:  # sd-scripts' add_v_prediction_like_loss: loss + loss / (SNR/(SNR+1)) · v_pred_like_loss
        snr_c = torch.clamp(snr, max=1000)
        weight = weight * (1 + v_like_added * (snr_c + 1) / snr_c)
    if debiased:
        snr_c = torch.clamp(snr, max=1000)
        weight = weight * (1 / (snr_c + 1) if v_prediction else 1 / torch.sqrt(snr_c))
    return weight
