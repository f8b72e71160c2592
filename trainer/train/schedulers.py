"""Learning-rate schedules from diffusers (and transformers' AdafactorSchedule), stepped once per
optimizer step over exactly the run's planned steps."""
from __future__ import annotations

import logging

from .faults import TrainingFault
from .optimizers import uses_relative_step

logger = logging.getLogger(__name__)

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def warmup_steps(config, total_steps: int) -> int:
    """lr_warmup_steps when set (a float below 1 is a ratio of the run), else lr_warmup percent."""
    steps = getattr(config, "lr_warmup_steps", 0) or 0
    if steps:
        if isinstance(steps, float) and 0 < steps < 1:
            return int(round(steps * total_steps))
        return int(steps)
    percent = float(getattr(config, "lr_warmup", 0) or 0)
    return int(round(total_steps * percent / 100.0))


def build_scheduler(config, optimizer, total_steps: int, warn=logger.warning):
    name = getattr(config, "lr_scheduler", "constant") or "constant"
    if uses_relative_step(optimizer):
        from transformers.optimization import AdafactorSchedule

        if name != "adafactor":
            warn(f"Adafactor with relative_step computes its own learning rate; lr_scheduler {name!r} is not used. "
                 "Pass optimizer_args relative_step=False scale_parameter=False to use it.")
        return AdafactorSchedule(optimizer, initial_lr=float(config.learning_rate))
    if name not in SCHEDULERS:
        raise TrainingFault(f"Unknown lr_scheduler {name!r}", f"Choose one of {', '.join(SCHEDULERS)}.")
    from diffusers.optimization import get_scheduler

    warmup = min(warmup_steps(config, total_steps), total_steps)
    if warmup and name == "constant":
        warn(f"lr_scheduler 'constant' ignores the {warmup} warm-up steps; choose constant_with_warmup to use them.")
    kwargs = {}
    if name == "cosine_with_restarts":
        kwargs["num_cycles"] = int(getattr(config, "lr_scheduler_num_cycles", 1) or 1)
    if name == "polynomial":
        kwargs["power"] = float(getattr(config, "lr_scheduler_power", 1.0) or 1.0)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1), **kwargs)
