"""Selective activation checkpointing for the U-Net blocks diffusers checkpoints.

Full checkpointing keeps only each block's input and runs the whole block again in the backward
pass. Selective checkpointing (PyTorch's `create_selective_checkpoint_contexts`) keeps the outputs
of the expensive ops — attention, convolutions, matrix products — and recomputes the cheap ones
between them: group/layer norms, SiLU/GELU, additions, casts, and the widening projections (GEGLU,
LoRA up) that cost few operations per value. bench/checkpointing_bench.py measures the trade-off.

    unet.enable_gradient_checkpointing(checkpoint_function("selective", preserve_rng_state=...))
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

aten = torch.ops.aten

# matrix products, by the position of their first operand (the second one follows it)
_MATMULS = {aten.mm.default: 0, aten.bmm.default: 0, aten.addmm.default: 1, aten.baddbmm.default: 1}
_ATTENTION_NAMES = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                    "_flash_attention_forward", "_efficient_attention_forward")
_ATTENTION = {getattr(aten, name).default for name in _ATTENTION_NAMES if hasattr(aten, name)}

# A product whose output is much wider than what it sums over costs few operations per value it writes:
# a LoRA's up projection (rank 4-128 → the layer's width) or GEGLU's 8× feed-forward projection, whose
# output is the largest activation of a transformer block. Running it again is cheaper than keeping it.
WIDENING = 4


def _sizes(op, args) -> tuple[int, int]:
    """(values summed per output value, output features) of a matrix product or convolution."""
    if op is aten.convolution.default:
        weight = args[1]  # out-channels, in-channels per group, kernel...
        return math.prod(weight.shape[1:]), weight.shape[0]
    i = _MATMULS[op]
    return args[i].shape[-1], args[i + 1].shape[-1]


def save_expensive_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep attention and the products that do not widen their input; recompute everything else."""
    if op in _ATTENTION:
        return CheckpointPolicy.MUST_SAVE
    if op in _MATMULS or op is aten.convolution.default:
        summed, features = _sizes(op, args)
        return CheckpointPolicy.PREFER_RECOMPUTE if features >= WIDENING * summed else CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_function(mode: str, preserve_rng_state: bool, cpu_offload: bool = False):
    """A `gradient_checkpointing_func` for diffusers' `enable_gradient_checkpointing`.

    preserve_rng_state=False when nothing random runs inside the blocks (no LoRA dropout): the
    recomputation is then identical without saving and restoring the generators — which also keeps the
    blocks capturable in a CUDA graph (reading the RNG state there fails on older PyTorch).
    cpu_offload (kohya's cpu_offload_checkpointing, full mode): what a checkpointed block keeps for its
    backward — its inputs — waits in CPU memory; the block copies them to the device when it runs."""
    context = {"context_fn": partial(create_selective_checkpoint_contexts, save_expensive_outputs)} \
        if mode == "selective" else {}

    def run(module, *args):
        return checkpoint(module.__call__, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state,
                          **context)

    def run_offloaded(module, *args):
        device = next((a.device for a in _tensors(args)), None)
        if device is None:
            return run(module, *args)

        def on_device(*held):
            return module(*_moved(held, device))
        # the copies are differentiable, so gradients reach the inputs on the device
        return checkpoint(on_device, *_moved(args, "cpu"), use_reentrant=False, preserve_rng_state=preserve_rng_state)
    return run_offloaded if cpu_offload else run


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (tuple, list)):
            yield from _tensors(v)


def _moved(values, device):
    """`values` with every tensor (also inside tuples, as FLUX's rotary embedding) copied to `device`; a copy
    even when it is already there, so the held inputs never alias what the caller goes on to change."""
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            v = v.to(device, copy=True)
        elif isinstance(v, (tuple, list)):
            v = type(v)(_moved(v, device))
        out.append(v)
    return tuple(out)
