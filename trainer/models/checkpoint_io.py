"""Reading and writing single-file checkpoints safely.

* ``.safetensors`` are memory-mapped (safetensors >= 0.4 hands out copy-on-write views of the
  mapping), so reading costs no RAM until a tensor is used and nothing is copied when the model
  takes the tensor as-is (``load_state_dict(assign=True)`` at the file's dtype).
* ``.ckpt``/``.pt``/``.pth`` go through ``torch.load(weights_only=True)``: plain tensors and
  containers only; a pickle that asks to run code is refused, never executed.
* Writes go to a temporary file in the destination folder, then ``os.replace``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from trainer.atomic import atomic_path

SAFETENSORS_EXT = (".safetensors",)
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, safetensors metadata)`` of a single file; only tensors are returned."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXT:
        return _read_safetensors(path)
    if suffix in PICKLE_EXT:
        return _read_pickle(path), {}
    raise CheckpointError(f"{path}: unsupported file type {suffix!r}; use a .safetensors or .ckpt checkpoint "
                          "or a diffusers folder")


def _read_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable .safetensors file ({exc}). It is probably truncated or corrupt "
            f"({path.stat().st_size:,} bytes): download or copy it again.") from exc
    return tensors, metadata


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} was refused: its pickle needs to run Python code to load ({_first_line(exc)}), and loading "
            "it could execute anything. Only plain-tensor checkpoints are loaded. Fix: use a .safetensors version "
            "of this model, or convert the file with a tool you trust.") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({_first_line(exc)}). It is probably truncated or corrupt "
            f"({path.stat().st_size:,} bytes): download or copy it again.") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def write_checkpoint(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``.safetensors`` (with metadata) or ``.ckpt`` (``{"state_dict": ...}``) atomically."""
    import safetensors.torch

    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_EXT + PICKLE_EXT:
        raise CheckpointError(f"{path}: choose a .safetensors or .ckpt file name")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        if path.suffix.lower() in SAFETENSORS_EXT:
            safetensors.torch.save_file(_untie(tensors), str(tmp), metadata=metadata or {})
        else:
            torch.save({"state_dict": tensors}, tmp)
    return path


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory; clone the later ones of each shared storage."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ident = value.untyped_storage().data_ptr()
        if value.numel() and ident in seen:
            value = value.clone()
        seen.add(ident)
        out[key] = value
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
