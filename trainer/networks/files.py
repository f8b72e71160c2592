"""Reading and writing kohya-format LoRA files: tensors, `ss_*` metadata, hashes, atomic writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch
import torch

from trainer.atomic import atomic_write_bytes
from trainer.models.hashing import precalculate_safetensors_hashes

from .registry import FAMILY_LORA_MODULE

SAVE_DTYPES = {
    "fp16": torch.float16, "float16": torch.float16, "float": torch.float32, "fp32": torch.float32,
    "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}

# ss_base_model_version / modelspec.architecture per family (sd-scripts values)
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1", "sd3": "sd3",
                      "chroma": "chroma"}
_MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base",
                   "flux": "flux-1-dev", "sd3": "stable-diffusion-3.5-medium", "chroma": "chroma"}
_MODELSPEC_IMPL = {"sdxl": "https://github.com/Stability-AI/generative-models",
                   "flux": "https://github.com/black-forest-labs/flux", "sd3": "https://github.com/Stability-AI/sd3.5",
                   "chroma": "https://huggingface.co/lodestones/Chroma"}
_MODELSPEC_IMPL_SAI = "https://github.com/Stability-AI/generative-models"

# header keys sd-scripts keeps even with --no_metadata
ESSENTIAL_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                  "ss_network_alpha", "ss_network_args")


class LoRAFileError(ValueError):
    """A LoRA file that cannot be read or does not fit the base model; the message says why."""


def resolve_save_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return SAVE_DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"save_precision must be one of fp16, bf16, float (fp32); got {dtype!r}") from None


def format_number(x: Any) -> str:
    """1.0 → "1", 0.5 → "0.5": what a user typed, not float noise."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def metadata_value(value: Any) -> str:
    """sd-scripts str()s scalars and JSON-encodes lists/dicts; safetensors wants str values."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def network_metadata(
    family: str,
    network_dim: int | None,
    network_alpha: float | None,
    conv_dim: int = 0,
    conv_alpha: float = 0,
    dropout: float | None = None,
    rank_dropout: float | None = None,
    module_dropout: float | None = None,
    v_prediction: bool = False,
    extra_args: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The `ss_network_*` / base-model keys describing the network itself."""
    args: dict[str, str] = {}
    if conv_dim:
        args["conv_dim"] = format_number(conv_dim)
        args["conv_alpha"] = format_number(conv_alpha or 1)  # sd-scripts: conv_alpha defaults to 1
    if rank_dropout:
        args["rank_dropout"] = format_number(rank_dropout)
    if module_dropout:
        args["module_dropout"] = format_number(module_dropout)
    for k, v in (extra_args or {}).items():
        args[k] = metadata_value(v)
    version = BASE_MODEL_VERSION[family] + ("_v" if v_prediction and family != "sdxl" else "")
    meta = {
        "ss_network_module": FAMILY_LORA_MODULE.get(family, "networks.lora"),
        "ss_network_dim": "None" if network_dim is None else format_number(network_dim),
        "ss_network_alpha": "None" if network_alpha is None else format_number(network_alpha),
        "ss_network_dropout": "None" if not dropout else format_number(dropout),
        "ss_network_args": json.dumps(args) if args else "None",
        "ss_base_model_version": version,
        "ss_v2": str(family == "sd2"),
    }
    return meta


def modelspec_metadata(family: str, title: str, resolution: str = "", v_prediction: bool = False) -> dict[str, str]:
    """SAI model spec 1.0 keys as sd-scripts writes them for a LoRA."""
    arch = _MODELSPEC_ARCH[family]
    if family == "sd2" and v_prediction:
        arch = "stable-diffusion-v2-768-v"
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": _MODELSPEC_IMPL.get(family, "diffusers"),
        "modelspec.title": title,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
    }
    if resolution:
        meta["modelspec.resolution"] = resolution
    return meta


def prepare_tensors(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies cast to the save precision (alpha included, as kohya)."""
    out = {}
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        if dtype is not None:
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_lora_file(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
) -> dict[str, str]:
    """Save tensors + metadata atomically; adds sshs hashes. Returns the metadata written."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: LoRA files are saved as .safetensors (the format every client loads)")
    tensors = prepare_tensors(state_dict, resolve_save_dtype(dtype))
    meta = {str(k): metadata_value(v) for k, v in (metadata or {}).items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = precalculate_safetensors_hashes(tensors, meta)
    atomic_write_bytes(path, safetensors.torch.save(tensors, meta))
    return meta


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a LoRA file; clear errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise LoRAFileError(f"LoRA file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise LoRAFileError(
                f"{path}: not a readable safetensors file ({e}). The file may be truncated or "
                "corrupt; save or download it again."
            ) from e
        return tensors, metadata
    if path.suffix.lower() in (".pt", ".ckpt", ".bin", ".pth"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise LoRAFileError(
                f"{path}: cannot be loaded safely ({e}). Only plain tensor files are accepted; "
                "convert it to .safetensors with a tool you trust."
            ) from e
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LoRAFileError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        return dict(obj), {}
    raise LoRAFileError(f"{path}: unknown LoRA file type {path.suffix!r}; use .safetensors")


def read_lora_source(path_or_state, metadata: Mapping[str, str] | None = None):
    """(state dict, metadata, source for messages) from a LoRA file's path or from a state dict in memory."""
    if isinstance(path_or_state, Mapping):
        return dict(path_or_state), dict(metadata or {}), "<state dict>"
    state, meta = read_lora_file(path_or_state)
    return state, meta, str(path_or_state)
