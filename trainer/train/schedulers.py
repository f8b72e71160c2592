"""Learning-rate schedules from diffusers, transformers (cosine_with_min_lr, inverse_sqrt,
warmup_stable_decay) and transformers' AdafactorSchedule, stepped once per optimizer step over exactly
the run's planned steps. `lr_scheduler_args` ("key=value ...") reaches the schedule function, or the class
`lr_scheduler_type` names (sd-scripts' custom scheduler: torch.optim.lr_scheduler or a dotted path)."""
from __future__ import annotations

import importlib
import logging

from .faults import TrainingFault
from .optimizers import is_schedule_free, parse_optimizer_args, uses_relative_step

logger = logging.getLogger(__name__)

DIFFUSERS_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                        "polynomial", "piecewise_constant")
TRANSFORMERS_SCHEDULERS = ("cosine_with_min_lr", "inverse_sqrt", "warmup_stable_decay")
# kohya_ss's dropdown: the two libraries' schedules and Adafactor's own
SCHEDULERS = ("adafactor", *DIFFUSERS_SCHEDULERS, *TRANSFORMERS_SCHEDULERS)


def warmup_steps(config, total_steps: int) -> int:
    """lr_warmup_steps when set, else lr_warmup percent of the run."""
    if config.lr_warmup_steps:
        return int(config.lr_warmup_steps)
    percent = float(config.lr_warmup)
    return int(round(total_steps * percent / 100.0))


def _extra_args(config) -> dict:
    try:
        return parse_optimizer_args(config.lr_scheduler_args)
    except TrainingFault as exc:
        raise TrainingFault(exc.message.replace("optimizer_args", "lr_scheduler_args"), exc.hint) from None


def build_scheduler(config, optimizer, total_steps: int, warn=logger.warning):
    name = config.lr_scheduler
    if uses_relative_step(optimizer):
        from transformers.optimization import AdafactorSchedule

        if config.lr_scheduler_type:
            warn(f"Adafactor with relative_step computes its own learning rate; lr_scheduler_type "
                 f"{config.lr_scheduler_type!r} is not used. Pass optimizer_args relative_step=False "
                 "scale_parameter=False to use it.")
        elif name != "adafactor":
            warn(f"Adafactor with relative_step computes its own learning rate; lr_scheduler {name!r} is not used. "
                 "Pass optimizer_args relative_step=False scale_parameter=False to use it.")
        return AdafactorSchedule(optimizer, initial_lr=float(config.learning_rate))
    if config.lr_scheduler_type:
        return custom_scheduler(config.lr_scheduler_type, optimizer, _extra_args(config))
    if name == "adafactor":
        raise TrainingFault("lr_scheduler 'adafactor' only works with the Adafactor optimizer and relative_step",
                            "Choose the Adafactor optimizer, or another lr_scheduler such as cosine.")
    if name not in SCHEDULERS:
        raise TrainingFault(f"Unknown lr_scheduler {name!r}", f"Choose one of {', '.join(SCHEDULERS)}.")
    if is_schedule_free(optimizer) and name != "constant":
        warn(f"schedule-free optimizers replace the learning-rate schedule; lr_scheduler {name!r} is used as "
             "given, which sd-scripts advises against — choose constant")
    warmup = min(warmup_steps(config, total_steps), total_steps)
    if warmup and name == "constant":
        warn(f"lr_scheduler 'constant' ignores the {warmup} warm-up steps; choose constant_with_warmup to use them.")
    kwargs = _extra_args(config)
    steps = max(total_steps, 1)
    if name in TRANSFORMERS_SCHEDULERS:
        return _transformers_schedule(name, optimizer, warmup, steps, kwargs)
    from diffusers.optimization import get_scheduler

    if name == "cosine_with_restarts":
        kwargs.setdefault("num_cycles", int(config.lr_scheduler_num_cycles))
    if name == "polynomial":
        kwargs.setdefault("power", float(config.lr_scheduler_power))
    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainingFault(f"lr_scheduler_args do not fit {name}: {exc}",
                            "Check the keys in lr_scheduler_args (e.g. step_rules for piecewise_constant).") from exc


def _transformers_schedule(name, optimizer, warmup: int, steps: int, kwargs: dict):
    from transformers.optimization import get_scheduler

    if name == "cosine_with_min_lr" and "min_lr" not in kwargs:
        kwargs.setdefault("min_lr_rate", 0.0)  # sd-scripts' lr_scheduler_min_lr_ratio default
    if name == "warmup_stable_decay":
        decay = kwargs.setdefault("num_decay_steps", 0)
        if isinstance(decay, float) and 0 < decay < 1:  # a ratio of the run, as sd-scripts' lr_decay_steps
            kwargs["num_decay_steps"] = int(decay * steps)  # sd-scripts' lr_decay_steps default: no decay phase
    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps,
                             scheduler_specific_kwargs=kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainingFault(f"lr_scheduler_args do not fit {name}: {exc}",
                            "Check the keys in lr_scheduler_args (min_lr_rate, timescale, num_decay_steps…).") from exc


def custom_scheduler(class_path: str, optimizer, kwargs: dict):
    """sd-scripts' `lr_scheduler_type`: a class in torch.optim.lr_scheduler (a bare name such as
    CosineAnnealingLR) or any importable dotted path, built as cls(optimizer, **lr_scheduler_args) and stepped
    once per optimizer step (so T_max and the like count optimizer steps)."""
    import torch

    module_name, _, class_name = class_path.strip().rpartition(".")
    hint = ("Name a class of torch.optim.lr_scheduler (CosineAnnealingLR, OneCycleLR, StepLR …) or a dotted "
            "path to one your Python can import (mypackage.schedules.MySchedule).")
    try:
        module = importlib.import_module(module_name) if module_name else torch.optim.lr_scheduler
        cls = getattr(module, class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TrainingFault(f"lr_scheduler_type {class_path!r} cannot be loaded: {exc}", hint) from None
    if cls is getattr(torch.optim.lr_scheduler, "ReduceLROnPlateau", None):
        raise TrainingFault("lr_scheduler_type ReduceLROnPlateau steps on a validation metric, which training "
                            "does not compute", "Choose a schedule driven by steps, e.g. CosineAnnealingLR.")
    try:
        scheduler = cls(optimizer, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainingFault(f"lr_scheduler_args do not fit {class_path}: {exc}",
                            f"Give {class_name}'s arguments in lr_scheduler_args, e.g. \"T_max=1000\" for "
                            "CosineAnnealingLR (counted in optimizer steps).") from None
    missing = [m for m in ("step", "state_dict", "load_state_dict", "get_last_lr") if not hasattr(scheduler, m)]
    if missing:
        raise TrainingFault(f"lr_scheduler_type {class_path!r} is not a learning-rate scheduler (it has no "
                            f"{', '.join(missing)})", hint)
    return scheduler
