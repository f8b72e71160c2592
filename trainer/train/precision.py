"""Precision and memory settings: dtypes for frozen weights, the trained network and the VAE,
attention kernel, gradient checkpointing (what sd-scripts §7.1 does, with PyTorch SDPA by default)."""
from __future__ import annotations

import functools
import importlib.util
import logging

import torch

from .checkpointing import checkpoint_function

logger = logging.getLogger(__name__)

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def effective_mixed_precision(mixed_precision: str, device: torch.device, warn) -> str:
    """fp16 autocast with loss scaling needs a GPU; on CPU train in bf16 instead (and say so)."""
    mp = mixed_precision or "no"
    if mp == "fp16" and device.type == "cpu":
        warn("mixed_precision fp16 needs a GPU; this run trains on the CPU in bf16 instead.")
        return "bf16"
    if mp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warn("This GPU does not support bf16; training in fp16 with loss scaling instead.")
        return "fp16"
    return mp


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """Frozen base weights are stored in the compute dtype (the trained LoRA stays fp32)."""
    return DTYPES[mixed_precision or "no"]


def network_dtype(config, mixed_precision: str) -> torch.dtype:
    """full_fp16/full_bf16 keep the trained weights themselves in half precision."""
    if config.full_fp16 and mixed_precision == "fp16":
        return torch.float16
    if config.full_bf16 and mixed_precision == "bf16":
        return torch.bfloat16
    return torch.float32


def vae_dtype(config, mixed_precision: str) -> torch.dtype:
    return torch.float32 if config.no_half_vae else weight_dtype(mixed_precision)


def allow_fp16_gradients(scaler) -> None:
    """full_fp16: the GradScaler refuses to unscale fp16 gradients unless told they are expected."""
    if scaler is None or getattr(scaler, "_fp16_grads_allowed", False):
        return
    original = scaler._unscale_grads_
    scaler._unscale_grads_ = functools.partial(_unscale_allow_fp16, original)
    scaler._fp16_grads_allowed = True


def _unscale_allow_fp16(original, optimizer, inv_scale, found_inf, allow_fp16):
    return original(optimizer, inv_scale, found_inf, True)


def set_attention(unet, choice: str, warn) -> str:
    """diffusers' default processor already runs PyTorch SDPA; xformers only when it is installed."""
    if choice == "xformers":
        if importlib.util.find_spec("xformers") is None:
            warn("xformers is not installed; using PyTorch SDPA attention (as fast on recent PyTorch).")
            return "sdpa"
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as exc:  # xformers present but unusable on this device/build
            warn(f"xformers could not be enabled ({exc}); using PyTorch SDPA attention.")
            return "sdpa"
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    if isinstance(unet, UNet2DConditionModel):  # DiT transformers' own processors already use SDPA
        unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def enable_gradient_checkpointing(unet, text_encoders, train_text_encoder: bool, mode: str = "full",
                                  random_inside: bool = True, cpu_offload: bool = False) -> None:
    """full: recompute whole blocks; selective: keep the outputs of attention, convolutions and narrowing
    matrix products, recompute the cheap layers (checkpointing.py). Text encoders use HF's own.
    random_inside=False (no dropout in the trained network) skips saving/restoring the RNG state.
    cpu_offload: the blocks' kept inputs wait in CPU memory (cpu_offload_checkpointing)."""
    unet.enable_gradient_checkpointing(checkpoint_function(mode, preserve_rng_state=random_inside,
                                                           cpu_offload=cpu_offload))
    unet.train()  # diffusers' blocks only checkpoint in training mode on some versions
    if train_text_encoder:
        for te in text_encoders:
            te.gradient_checkpointing_enable()
            te.train()
