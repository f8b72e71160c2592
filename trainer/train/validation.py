"""The validation loss (sd-scripts' train_network.py validation) over the images validation_split held out.

Comparable across evaluations: every evaluation sees the same batches, at the same 4 timesteps evenly
inside [min_timestep, max_timestep] (200, 400, 600, 800 by default; σ = t/1000 for the flow-matching
families), with noise from the validation seed. The loss is the training loss (same noise options, target,
weights, masks: the loop's own functions through the family seams), the trained modules in eval mode
(dropouts off), without gradients. The training's random state is set aside and put back, so a run with
validation trains exactly the weights of the same run without it.
"""
from __future__ import annotations

import random

import torch

from trainer.config.defaults import option

from .loop import StepContext, forward_loss, latent_shape, sample_noise, stack_draws

NUM_TIMESTEPS = 4  # sd-scripts' NUM_VALIDATION_TIMESTEPS


def fixed_timesteps(cfg) -> list[int]:
    """sd-scripts: np.linspace(min, max, 6, dtype=int)[1:-1]."""
    lo, hi = int(option(cfg, "min_timestep")), int(option(cfg, "max_timestep"))
    return [lo + (hi - lo) * k // (NUM_TIMESTEPS + 1) for k in range(1, NUM_TIMESTEPS + 1)]


def batch_loss(ctx: StepContext, batch: dict, t_value: int) -> torch.Tensor:
    """One batch's mean training loss with every sample at timestep `t_value` (draws from the global generator)."""
    shape = latent_shape(batch, ctx.latent_channels)
    n = shape[0]
    draw = stack_draws([sample_noise(shape[1:], ctx.device, ctx.cfg) for _ in range(n)])
    # the DDPM schedule indexes integer timesteps; flow matching takes t = 1000·σ as a float
    dtype = torch.long if ctx.objective is None else torch.float32
    return forward_loss(ctx, batch, draw, torch.full((n,), t_value, device=ctx.device, dtype=dtype), n)


class Validator:
    """Measures the validation loss when the schedule says so and reports it (event + tracker scalars)."""

    def __init__(self, ctx: StepContext, cfg, held_out_scan, latents, kind, events):
        from trainer.data.dataset import TrainDataset

        self.ctx, self.kind, self.events = ctx, kind, events
        self.every_steps = int(option(cfg, "validate_every_n_steps"))
        self.every_epochs = int(option(cfg, "validate_every_n_epochs"))
        self.seed = int(option(cfg, "validation_seed")) or int(cfg.seed)
        self.timesteps = fixed_timesteps(cfg)
        self.dataset = TrainDataset(held_out_scan, cfg, latents)
        limit = int(option(cfg, "max_validation_steps"))
        self.keys = self.dataset.epoch_batches(1)[:limit or None]  # the same batches every time

    def step_due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def epoch_due(self, epoch: int) -> bool:
        """sd-scripts: every epoch unless validate_every_n_epochs says otherwise."""
        return self.every_epochs <= 0 or epoch % self.every_epochs == 0

    def loss(self) -> float:
        modules = self.kind.trained_modules()
        modes = [m.training for m in modules]
        cuda = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        python_state = random.getstate()
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(self.seed)
            random.seed(self.seed)
            for m in modules:
                m.eval()
            try:
                losses = []
                for key in self.keys:
                    batch = self.dataset[key]
                    batch["captions"] = self.kind.prepare_captions(batch["captions"])
                    losses += [batch_loss(self.ctx, batch, t) for t in self.timesteps]
            finally:
                for m, mode in zip(modules, modes):
                    m.train(mode)
                random.setstate(python_state)
        return float(torch.stack(losses).mean())

    def report(self, step: int, epoch: int | None, train_average: float | None, tracker) -> float:
        """Measure and report; `epoch` is None for a step-scheduled evaluation (sd-scripts' step_average)."""
        loss = self.loss()
        self.events.emit("validation", step=step, epoch=epoch, loss=loss, batches=len(self.keys),
                         timesteps=self.timesteps)
        if tracker is not None:  # sd-scripts' tags; its epoch values are logged at x = epoch
            name, x = ("step", step) if epoch is None else ("epoch", epoch)
            tracker.add_scalar(f"loss/validation/{name}_average", loss, x)
            if train_average is not None:
                tracker.add_scalar(f"loss/validation/{name}_divergence", loss - train_average, x)
        return loss
