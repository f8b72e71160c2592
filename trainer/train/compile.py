"""torch.compile of the U-Net: fewer, fused kernels, one graph per bucket shape.

The training step is bound by per-operator overhead far more than by arithmetic (measured in
docs/benchmarks.md), which is what compiling removes. Only training forwards
(grad enabled) take the compiled path: sample images run eagerly, so they never trigger a compile of
their own shapes. If compiling fails (an unsupported op, a dynamic shape, a missing C++ compiler),
the run logs why and continues uncompiled — a run never dies because of this option.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def compile_enabled(setting: str, device: torch.device, cuda_graphs: str = "off") -> bool:
    """auto: on with CUDA when cuda_graphs is off. Captured steps already remove the launch overhead,
    while compiling the SD1.5 U-Net's training step takes minutes per bucket shape (GPU and CPU); the
    figures behind this choice are in docs/benchmarks.md (H200, issue 9)."""
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" and cuda_graphs == "off"


def compile_unet(unet: torch.nn.Module, warn, max_shapes: int = 64) -> None:
    """Replace `unet.forward` with a compiled version that falls back to eager on any compile error."""
    eager = unet.forward
    # one graph per (bucket, batch) shape; dynamo's default limit of 8 is too small for many buckets
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, max_shapes)
    compiled = torch.compile(eager, dynamic=False)
    failed = False

    def forward(*args, **kwargs):
        nonlocal failed
        if failed or not torch.is_grad_enabled():
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 — any compile failure: keep training, say why
            failed = True
            warn(f"torch.compile could not compile the U-Net ({type(exc).__name__}: {str(exc)[:300]}); "
                 "training continues uncompiled")
            return eager(*args, **kwargs)

    unet.forward = forward
    logger.info("U-Net compiled with torch.compile (graphs are built on the first step of each bucket shape)")
