"""``fused_backward_pass`` (sd-scripts' option for SDXL / FLUX.1 / SD3 full fine-tuning): the optimizer
updates each weight inside the backward pass, as soon as that weight's gradient is complete, and frees the
gradient at once. The model's whole set of gradients — as large as the model itself (FLUX.1: 24 GB in
bf16… 12 B parameters × 2 bytes) — never exists at one time; at most a block's worth does.

How: a ``register_post_accumulate_grad_hook`` on every trained parameter runs transformers' own
``Adafactor.step`` on that one parameter (the optimizer is shown a one-parameter copy of the parameter's
group for the call), then sets ``grad = None``. The arithmetic is the library's, so a fused step gives the
same weights as the unfused step whenever clipping is off. ``max_grad_norm`` clips each parameter's gradient
on its own (as sd-scripts does: the global norm needs every gradient at once).

The rules (Adafactor only, gradient_accumulation_steps 1, no fp16 loss scaling, one process) are checked
with the config (trainer/config/rules.py) and again here for configs that bypass it.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import torch

from .faults import TrainingFault
from .loop import StepContext, backward_passes

logger = logging.getLogger(__name__)


def inner_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def check_fused_run(ctx: StepContext) -> None:
    """What the hooks cannot do: other optimizers, loss scaling, gradients averaged between processes."""
    from transformers.optimization import Adafactor

    inner = inner_optimizer(ctx.optimizer)
    if not isinstance(inner, Adafactor):
        raise TrainingFault(f"fused_backward_pass works with the Adafactor optimizer only, not {type(inner).__name__}.",
                            "Choose optimizer Adafactor or untick fused_backward_pass.")
    if getattr(ctx.accelerator, "scaler", None) is not None:
        raise TrainingFault("fused_backward_pass cannot use fp16 loss scaling: the scaler must see every gradient "
                            "before any weight changes.", "Set mixed_precision to bf16 (or no).")
    if ctx.accelerator.num_processes > 1:
        raise TrainingFault("fused_backward_pass updates each weight before the processes average their gradients.",
                            "Set num_processes to 1 or untick fused_backward_pass.")


def step_one_parameter(optimizer, group: dict, param: torch.Tensor) -> None:
    """The optimizer's own step, on `param` alone (with its group's current settings and learning rate)."""
    groups = optimizer.param_groups
    optimizer.param_groups = [{**group, "params": [param]}]
    try:
        optimizer.step()
    finally:
        optimizer.param_groups = groups


def install_update_hooks(optimizer, max_grad_norm: float) -> list:
    """A hook on each trained parameter: clip its gradient, update it, free the gradient. Returns the handles."""
    handles = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not param.requires_grad:
                continue

            def update(p, group=group):
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(p, max_grad_norm)
                step_one_parameter(optimizer, group, p)
                p.grad = None

            handles.append(param.register_post_accumulate_grad_hook(update))
    return handles


def fused_train_step(ctx: StepContext, micro_batches: list[dict], step: int) -> torch.Tensor:
    """One step: the backward pass updates the weights; only the learning-rate schedule is left."""
    total = backward_passes(ctx, micro_batches, step)
    ctx.lr_scheduler.step()
    return total


def fused_step_fn(ctx: StepContext) -> Callable[[list[dict], int], torch.Tensor]:
    check_fused_run(ctx)
    inner = inner_optimizer(ctx.optimizer)
    ctx.optimizer.zero_grad(set_to_none=True)
    handles = install_update_hooks(inner, ctx.max_grad_norm)
    logger.info("fused_backward_pass: %d parameters are updated inside the backward pass", len(handles))
    return partial(fused_train_step, ctx)
