"""Faults a user can act on: each becomes a message plus a hint (never a bare traceback)."""
from __future__ import annotations

import errno

EXIT_FAILED = 1
EXIT_ABORTED = 130

MEMORY_HINT = ("Lower the memory use: a smaller train_batch_size, a lower resolution, gradient_checkpointing on, "
               "cache_latents on, an 8-bit optimizer (AdamW8bit), mixed_precision bf16/fp16, a smaller network_dim, "
               "or train the U-Net only (network_train_unet_only). cuda_graphs off saves the memory captured steps keep "
               "reserved. Close other programs using the GPU.")
NAN_HINT = ("Likely causes: fp16 overflow (use mixed_precision bf16, or keep fp16 and turn off full_fp16; the SDXL "
            "VAE needs no_half_vae), a learning rate that is too high (try 1e-4 or lower, or a warm-up), or "
            "max_grad_norm 0 (turn clipping back on).")
DISK_HINT = ("Free disk space or choose another output_dir; the files saved before this one are intact.")


class TrainingFault(Exception):
    """A failure with a message and a hint the user can act on."""

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_FAILED, unexpected: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.unexpected = unexpected  # a bug, not a user's problem: its traceback goes to the log


class NonFiniteLoss(TrainingFault):
    def __init__(self, step: int, last_good: str | None):
        kept = f" The last good checkpoint is kept: {last_good}." if last_good else ""
        super().__init__(f"The loss became NaN/inf at step {step}; training stopped and nothing after that "
                         f"step was saved.{kept}", NAN_HINT)


def free_space(path) -> str:
    """Free space on the disk holding `path` (or its nearest existing parent), for disk-full messages."""
    import shutil
    from pathlib import Path

    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""


def disk_full(path, what: str = "") -> TrainingFault:
    return TrainingFault(f"The disk is full while writing {what or path} ({free_space(path)} on that disk).",
                         DISK_HINT)


def is_write_failure(exc: BaseException) -> bool:
    """A failed write: OSError ENOSPC/EDQUOT/EFBIG; safetensors' error quoting that OS error; or
    torch.save's RuntimeError from its C++ zip writer (inline_container.cc: "failed writing …" or
    "unexpected pos …"), which carries no errno."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        return any(f"os error {n}" in text for n in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
    return isinstance(exc, RuntimeError) and ("inline_container" in text or "failed writing" in text)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe(exc: BaseException) -> TrainingFault:
    """Turn any exception into a TrainingFault with a hint."""
    if isinstance(exc, TrainingFault):
        return exc
    if is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        return TrainingFault(f"Out of memory: {first}", MEMORY_HINT)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return disk_full(exc.filename or ".", exc.filename or "a file")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return TrainingFault(f"Cannot write {exc.filename or 'the output'}: {exc.strerror}.",
                             "Choose an output_dir you can write to (check its permissions); files saved "
                             "before this one are intact.")
    if exc.__class__.__name__ == "ConfigError":
        return TrainingFault(str(exc), "Fix the listed settings and start again.")
    if type(exc).__module__.startswith("trainer.") and isinstance(exc, (ValueError, RuntimeError, OSError)):
        # the project's own errors (dataset, model, LoRA file) already name the file and the fix
        return TrainingFault(str(exc), getattr(exc, "hint", "") or "See the message for the file and the fix.")
    if isinstance(exc, FileNotFoundError):
        return TrainingFault(f"File not found: {exc.filename or exc}", "Check the path in the settings.")
    return TrainingFault(f"Unexpected error: {type(exc).__name__}: {exc}",
                         "The full traceback is in the log (stderr). Please report it with the run's settings JSON.",
                         unexpected=True)
