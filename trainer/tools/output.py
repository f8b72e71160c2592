"""What every tool does on the way out: refuse to replace a file unasked, show progress, write
atomically, check the written file before it takes its name, and report in one paragraph."""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from trainer.models.hashing import addnet_hash_safetensors
from trainer.networks.files import read_lora_file, resolve_save_dtype, save_lora_file
from trainer.networks.naming import split_key

from .lora_io import state_dict
from .lora_math import ModuleWeights


class ToolError(ValueError):
    """Bad input to a tool; the message names the file or option and the fix."""


@dataclass
class Report:
    tool: str
    output: str
    text: str  # the one paragraph shown to the user
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_output(path: str | Path, overwrite: bool, what: str = "--save_to") -> Path:
    """The output path, refused when it exists (unless `overwrite`) or its folder is missing."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise ToolError(f"{path} already exists; choose another {what} or pass --overwrite to replace it")
    if path.exists() and path.is_dir() != (path.suffix == ""):
        raise ToolError(f"{path} exists and is a {'folder' if path.is_dir() else 'file'}; choose another {what}")
    return path


def check_inputs(paths: Iterable[str | Path], what: str) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise ToolError(f"{what}: {p} does not exist; check the path")
        out.append(p)
    return out


def progress(items, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar on stderr (the page reads its percentage from there)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, disable=not enabled, mininterval=0.2,
                dynamic_ncols=False, ncols=100)


def save_checked_lora(path: Path, modules: Mapping[str, ModuleWeights], metadata: Mapping[str, str],
                      precision: str | None = "fp16", overwrite: bool = False) -> dict[str, str]:
    """Write the LoRA to a temp file beside `path`, check it (self_check), then give it its name.
    Returns the metadata written."""
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp.safetensors", dir=path.parent)
    os.close(fd)
    try:
        tensors = state_dict(modules)
        written = save_lora_file(tmp, tensors, metadata, precision)
        problems = self_check(Path(tmp), tensors, resolve_save_dtype(precision))
        if problems:
            raise ToolError(f"the written LoRA failed its self-check, nothing was saved to {path}:\n  "
                            + "\n  ".join(problems[:10]))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return written


def self_check(path: Path, intended: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> list[str]:
    """Re-read the file: every key kohya's, each module whole with matching ranks, values finite,
    tensors equal to what was meant (at the save precision), sshs hash right."""
    state, meta = read_lora_file(path)
    problems = []
    if set(state) != set(intended):
        problems.append(f"keys differ from what was written: {sorted(set(state) ^ set(intended))[:5]}")
    modules: dict[str, dict] = {}
    for key, value in state.items():
        name, suffix = split_key(key)
        if suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            problems.append(f"stray key {key}")
        modules.setdefault(name, {})[suffix] = value
        if not bool(torch.isfinite(value).all()):
            problems.append(f"{key}: NaN/inf values (fp16 overflow? save as bf16 or float)")
        want = intended.get(key)
        if want is not None:
            want = want.to(dtype) if dtype is not None else want
            if want.shape != value.shape or not torch.equal(want.to(value.dtype), value):
                problems.append(f"{key}: the file holds other values than were written")
    for name, t in modules.items():
        if set(t) != {"lora_down.weight", "lora_up.weight", "alpha"}:
            problems.append(f"{name}: has {sorted(t)}, needs lora_down, lora_up and alpha")
        elif t["lora_up.weight"].shape[1] != t["lora_down.weight"].shape[0]:
            problems.append(f"{name}: lora_up and lora_down ranks differ")
    with open(path, "rb") as fh:
        if meta.get("sshs_model_hash") != addnet_hash_safetensors(fh):
            problems.append("sshs_model_hash does not match the tensors")
    return problems


def percent(x: float) -> str:
    return f"{100 * x:.2f}%" if x < 0.9999 else f"{100 * x:.4f}%"
