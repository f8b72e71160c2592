"""The rectified-flow objective of the DiT families (FLUX.1), with kohya's options (sd-scripts
``flux_train_utils.get_noisy_model_input_and_timesteps`` / ``apply_model_prediction_type``).

    σ ~ timestep_sampling;  x_σ = (1 − σ)·x₀ + σ·ε;  target = ε − x₀;  the model gets t = 1000·σ

timestep_sampling:
* ``sigma``: u by ``weighting_scheme`` (uniform / logit_normal / mode), σ from the shifted discrete
  flow-matching schedule (``discrete_flow_shift``) at index ⌊1000·u⌋ — sd-scripts' default
* ``uniform``: σ ~ U(0, 1);  ``sigmoid``: σ = sigmoid(sigmoid_scale · N(0, 1))
* ``shift``: sigmoid sampling, then σ ← shift·σ / (1 + (shift − 1)·σ) with shift = discrete_flow_shift
* ``flux_shift``: sigmoid sampling, then FLUX's resolution-dependent shift (μ linear in the number of
  2×2 latent patches, 0.5 at 256 → 1.15 at 4096)

model_prediction_type: ``raw`` (the output as is), ``additive`` (output + x_σ), ``sigma_scaled``
(−σ·output + x_σ, with the SD3 loss weighting of ``weighting_scheme``). As in sd-scripts the FLUX target
stays ε − x₀ in every mode; SD3's is x₀ (its family record sets ``target``).

Randomness comes from the global generator the loop reseeds each step, so resume stays exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.config.options_train import HUBER_LOSSES

from .diffusion import huber_threshold, per_sample_loss

SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
PREDICTIONS = ("raw", "additive", "sigma_scaled")
WEIGHTINGS = ("uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap", "none")


@dataclass
class FlowMatchingObjective:
    timestep_sampling: str = "sigma"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.0
    model_prediction_type: str = "raw"
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    loss_type: str = "l2"
    huber_c: float = 0.1
    huber_schedule: str = "snr"
    huber_scale: float = 1.0
    num_train_timesteps: int = 1000
    target: str = "velocity"  # ε − x₀ (sd-scripts' FLUX); "latents": x₀ (sd-scripts' SD3, with sigma_scaled)

    @classmethod
    def from_config(cls, cfg, **fixed) -> "FlowMatchingObjective":
        values = {}
        options = type(cfg).model_fields  # num_train_timesteps and target are the family's, not options
        for name in cls.__dataclass_fields__:
            v = getattr(cfg, name) if name in options else None
            if name != "target" and v is not None and v != "":
                values[name] = v
        values.update(fixed)  # what the family always uses wins over the options
        obj = cls(**values)
        for name, allowed in (("timestep_sampling", SAMPLINGS), ("model_prediction_type", PREDICTIONS),
                              ("weighting_scheme", WEIGHTINGS)):
            if getattr(obj, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(obj, name)!r}")
        return obj

    # --- timesteps and noise -----------------------------------------------------------------------
    def sample_timesteps(self, n: int, device, shapes: list[tuple[int, ...]]) -> torch.Tensor:
        """t = 1000·σ for the step's n samples (float)."""
        kind = self.timestep_sampling
        if kind == "sigma":
            u = self.density(n, device)
            idx = (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
            s = 1.0 - idx.float() / self.num_train_timesteps  # the discrete schedule's σ before the shift
            sigma = self.shift(s, self.discrete_flow_shift)
        elif kind == "uniform":
            sigma = torch.rand(n, device=device)
        else:
            sigma = torch.sigmoid(self.sigmoid_scale * torch.randn(n, device=device))
            if kind == "shift":
                sigma = self.shift(sigma, self.discrete_flow_shift)
            elif kind == "flux_shift":
                patches = torch.tensor([(s[-2] // 2) * (s[-1] // 2) for s in shapes for _ in range(s[0])],
                                       device=device, dtype=torch.float32)
                mu = 0.5 + (patches - 256) * (1.15 - 0.5) / (4096 - 256)
                sigma = torch.exp(mu) / (torch.exp(mu) + (1 / sigma - 1))
        return sigma * self.num_train_timesteps

    def density(self, n: int, device) -> torch.Tensor:
        """u in [0, 1) by weighting_scheme (diffusers' compute_density_for_timestep_sampling)."""
        if self.weighting_scheme == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device) * self.logit_std + self.logit_mean)
        u = torch.rand(n, device=device)
        if self.weighting_scheme == "mode":
            return 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        return u

    @staticmethod
    def shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
        return sigma * shift / (1 + (shift - 1) * sigma)

    def sigmas(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return (t.float() / self.num_train_timesteps).view(-1, *([1] * (ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigmas(t, latents.dim()).to(latents.dtype)
        return (1 - s) * latents + s * noise

    # --- loss ----------------------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             noisy: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss [B] (fp32). `noisy`: the model's input (differs from latents + noise with
        ip_noise_gamma); the additive / sigma_scaled predictions are offsets from it. `mask` [B, H, W]: the
        masked-loss weights (pred is already unpacked to [B, C, h, w], so the mask shrinks to the latent grid as
        for the SD families)."""
        pred = pred.float()
        sigma = self.sigmas(t, pred.dim())
        weighting = None
        if self.model_prediction_type != "raw":
            noisy = self.add_noise(latents.float(), noise.float(), t) if noisy is None else noisy.float()
            if self.model_prediction_type == "additive":
                pred = pred + noisy
            else:
                pred = pred * (-sigma) + noisy
                weighting = self.loss_weighting(sigma.flatten())
        target = latents.float() if self.target == "latents" else noise.float() - latents.float()
        loss = per_sample_loss(pred, target, self.loss_type, self.huber_threshold(sigma.flatten()), mask)
        return loss if weighting is None else loss * weighting

    def huber_threshold(self, sigma: torch.Tensor) -> torch.Tensor | float:
        """The scheduled Huber c per sample. Flow matching has no ᾱ: its SNR is ((1 − σ)/σ)², so
        1/(1 + 1/√SNR)² is (1 − σ)² (sd-scripts refuses the snr schedule for FLUX/SD3; this is the same curve
        over the noise level)."""
        if self.loss_type not in HUBER_LOSSES:
            return 0.0
        return huber_threshold(self.huber_schedule, self.huber_c, self.huber_scale, sigma, (1 - sigma) ** 2)

    def loss_weighting(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """diffusers' compute_loss_weighting_for_sd3 (sigma_sqrt, cosmap; else 1)."""
        if self.weighting_scheme == "sigma_sqrt":
            return sigma.clamp_min(1e-6) ** -2.0
        if self.weighting_scheme == "cosmap":
            bot = 1 - 2 * sigma + 2 * sigma ** 2
            return 2 / (math.pi * bot)
        return None


def objective_for(base, cfg):
    """The flow-matching objective of a DiT base (None: the SD families' DDPM objective)."""
    from trainer.models.dit import dit_family

    fam = dit_family(base.family)
    if fam is None:
        return None
    return FlowMatchingObjective.from_config(cfg, **fam.objective_fixed)
