"""The training step, in the shape of the diffusers example scripts.

`Denoiser` is the one module that accelerate prepares (and DDP wraps): text conditioning + U-Net,
with the LoRA modules patched into both, so gradients of U-Net and text-encoder LoRA are synchronised
together. `train_step` runs one optimizer step over its micro-batches (gradient accumulation).
No host synchronisation happens here: the loss comes back as a device tensor.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .diffusion import (ddpm_huber_c, finish_noise, per_sample_loss, sample_noise,
                        sample_timesteps, snr_loss_weights, step_seed, training_target)


class Denoiser(nn.Module):
    def __init__(self, unet, text, network, call=None):
        super().__init__()
        self.unet, self.text, self.network = unet, text, network
        self.call = call  # a DiT family's transformer call (trainer/models/dit.py); None: the U-Net's
        # frozen weights are identical on every rank: DDP need not broadcast or track them
        self._ddp_params_and_buffers_to_ignore = [
            n for n, p in self.named_parameters() if not p.requires_grad] + [n for n, _ in self.named_buffers()]

    def forward(self, noisy, timesteps, captions, time_ids=None):
        hidden, pooled = self.text(captions)
        return self.denoise(noisy, timesteps, hidden, pooled, time_ids)

    def denoise(self, noisy, timesteps, hidden, pooled=None, time_ids=None):
        if self.call is not None:
            return self.call(self.unet, noisy, timesteps, hidden, pooled, time_ids)
        added = None if time_ids is None else {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample


@dataclass
class StepContext:
    accelerator: Any
    model: nn.Module            # the prepared Denoiser
    optimizer: Any
    lr_scheduler: Any
    params: list                # trainable parameters (for clipping)
    noise_scheduler: Any
    cfg: Any                    # loss/noise options: min_snr_gamma, noise_offset, loss_type, ...
    v_prediction: bool = False
    vae: Any = None             # only when latents are not cached
    vae_scale: float = 0.18215
    vae_shift: float = 0.0
    sdxl: bool = False
    objective: Any = None       # DiT families: FlowMatchingObjective (None: DDPM with noise_scheduler)
    latent_channels: int = 4
    max_grad_norm: float = 1.0
    seed: int = 0
    rank: int = 0

    @property
    def device(self):
        return self.accelerator.device


def batch_latents(ctx: StepContext, batch: dict) -> torch.Tensor:
    if "latents" in batch:
        latents = batch["latents"].to(ctx.device, non_blocking=True)
    else:  # not cached: encode this batch (no gradient through the VAE)
        with torch.no_grad():
            param = next(ctx.vae.parameters())
            dist = ctx.vae.encode(batch["images"].to(ctx.device, param.dtype)).latent_dist
            latents = dist.sample()
    return ((latents.float() - ctx.vae_shift) * ctx.vae_scale)


def sdxl_time_ids(batch: dict, device, dtype) -> torch.Tensor:
    """(original size, crop top-left, target size), each as (h, w): SDXL's micro-conditioning."""
    # each part goes over on its own (from the loader's pinned memory, without waiting for the GPU)
    parts = [batch[k].to(device, non_blocking=True) for k in ("original_sizes_hw", "crop_top_lefts", "target_sizes_hw")]
    return torch.cat(parts, dim=1).to(dtype)


def latent_shape(batch: dict, channels: int = 4) -> tuple[int, ...]:
    if "latents" in batch:
        return tuple(batch["latents"].shape)
    b, _, h, w = batch["images"].shape
    return (b, channels, h // 8, w // 8)


def batch_mask(ctx: StepContext, batch: dict):
    """The batch's loss masks [B, H, W] on the device (None: every pixel counts)."""
    masks = batch.get("alpha_masks")
    return None if masks is None else masks.to(ctx.device, non_blocking=True)


def step_noise(ctx: StepContext, shapes: list[tuple[int, ...]], step: int):
    """The step's timesteps and noise, one tensor per micro-batch, from the step's own seed."""
    torch.manual_seed(step_seed(ctx.seed, ctx.rank, step))
    n = sum(s[0] for s in shapes)
    if ctx.objective is not None:
        timesteps = ctx.objective.sample_timesteps(n, ctx.device, shapes)
    else:
        timesteps = sample_timesteps(n, ctx.device, ctx.cfg)
    draws = [stack_draws([sample_noise(s[1:], ctx.device, ctx.cfg) for _ in range(s[0])]) for s in shapes]
    sizes = [s[0] for s in shapes]
    return list(torch.split(timesteps, sizes)), draws


def stack_draws(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([d[name] for d in samples]) for name in samples[0]}


def add_noise(ctx: StepContext, latents, noise, t):
    if ctx.objective is not None:
        return ctx.objective.add_noise(latents, noise, t)
    return ctx.noise_scheduler.add_noise(latents, noise, t)


def micro_loss(ctx: StepContext, pred, latents, noise, t, loss_weights, n: int, noisy=None,
               mask=None) -> torch.Tensor:
    """This micro-batch's share of the step's mean loss (weighted per sample; per pixel by `mask`, the
    batch's alpha masks, when it has them); `noisy`: the model's input."""
    if ctx.objective is not None:
        return (ctx.objective.loss(pred, latents, noise, t, noisy, mask) * loss_weights).sum() / n
    target = training_target(ctx.noise_scheduler, latents, noise, t, ctx.v_prediction)
    loss = per_sample_loss(pred, target, ctx.cfg.loss_type, ddpm_huber_c(ctx.noise_scheduler, t, ctx.cfg), mask)
    loss = loss * loss_weights
    weights = snr_loss_weights(ctx.noise_scheduler, t, ctx.cfg, ctx.v_prediction)
    if weights is not None:
        loss = loss * weights
    return loss.sum() / n  # the mean over the whole step, however it is split into micro-batches


def clip_gradients(ctx: StepContext) -> None:
    if ctx.max_grad_norm:
        ctx.accelerator.clip_grad_norm_(ctx.params, ctx.max_grad_norm)


def train_step(ctx: StepContext, micro_batches: list[dict], step: int) -> torch.Tensor:
    """One optimizer step; returns the mean loss over the step's samples (a device tensor)."""
    total = backward_passes(ctx, micro_batches, step)
    clip_gradients(ctx)
    ctx.optimizer.step()
    ctx.lr_scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return total


def backward_passes(ctx: StepContext, micro_batches: list[dict], step: int) -> torch.Tensor:
    """Forward and backward of each micro-batch (gradients accumulate); the step's mean loss."""
    shapes = [latent_shape(b, ctx.latent_channels) for b in micro_batches]
    n = sum(s[0] for s in shapes)
    timesteps, draws = step_noise(ctx, shapes, step)
    total = torch.zeros((), device=ctx.device)
    for i, (batch, draw, t) in enumerate(zip(micro_batches, draws, timesteps)):
        last = i == len(micro_batches) - 1
        with nullcontext() if last else ctx.accelerator.no_sync(ctx.model):
            loss = forward_loss(ctx, batch, draw, t, n)
            ctx.accelerator.backward(loss)
        total += loss.detach()
    return total


def forward_loss(ctx: StepContext, batch: dict, draw: dict, t, n: int) -> torch.Tensor:
    """A micro-batch's share of the mean loss over `n` samples, with its noise draws and timesteps `t`
    (training's backward passes and the validation loss)."""
    latents = batch_latents(ctx, batch)
    noise, input_noise = finish_noise(draw, latents, ctx.cfg)
    noisy = add_noise(ctx, latents, input_noise, t)
    time_ids = sdxl_time_ids(batch, ctx.device, latents.dtype) if ctx.sdxl else None
    pred = ctx.model(noisy, t, batch["captions"], time_ids)
    weights = batch["loss_weights"].to(ctx.device, non_blocking=True)
    return micro_loss(ctx, pred, latents, noise, t, weights, n, noisy, batch_mask(ctx, batch))
