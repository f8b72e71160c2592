"""Reading LoRA files into modules and describing them in kohya's metadata keys."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Mapping

import torch

from trainer.networks.checks import guess_file_family
from trainer.networks.files import LoRAFileError, format_number, read_lora_file
from trainer.networks.naming import split_key

from .lora_math import ModuleWeights

LYCORIS_MARKERS = ("hada_w1", "lokr_w1", "lokr_w2", "oft_", "dora_scale", "a1.weight", "w_norm")
# metadata written by the file writer itself; copied keys are only the user/trainer ones
KEPT_PREFIXES = ("ss_", "modelspec.")


def read_modules(path: str | Path) -> tuple[dict[str, ModuleWeights], dict[str, str]]:
    """{module name: ModuleWeights} and the metadata of a kohya LoRA / LoCon file.

    A key other than `.lora_down.weight` / `.lora_up.weight` / `.alpha` is an error naming it
    (LoHa/LoKr files have other keys; these tools handle LoRA and LoCon)."""
    state, metadata = read_lora_file(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, suffix = split_key(key)
        if suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            kind = "a LyCORIS (LoHa/LoKr/…) key" if any(m in key for m in LYCORIS_MARKERS) else "not a LoRA key"
            raise LoRAFileError(f"{path}: {key!r} is {kind}; these tools work on kohya LoRA/LoCon files "
                                "(lora_down/lora_up/alpha); to bake a LyCORIS file into a checkpoint use "
                                "merge-lycoris.")
        parts.setdefault(name, {})[suffix] = value
    modules = {}
    for name, t in parts.items():
        if "lora_down.weight" not in t or "lora_up.weight" not in t:
            raise LoRAFileError(f"{path}: module {name} lacks lora_down or lora_up; the file is incomplete")
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        alpha = float(t["alpha"]) if "alpha" in t else float(down.shape[0])  # clients' default
        if alpha == 0:
            alpha = float(down.shape[0])
        if up.shape[1] != down.shape[0]:
            raise LoRAFileError(f"{path}: module {name} has lora_up {tuple(up.shape)} and lora_down "
                                f"{tuple(down.shape)}: the ranks differ, the file is damaged")
        modules[name] = ModuleWeights(down, up, alpha)
    if not modules:
        raise LoRAFileError(f"{path}: no LoRA modules in the file")
    return modules, metadata


def state_dict(modules: Mapping[str, ModuleWeights]) -> dict[str, torch.Tensor]:
    out = {}
    for name in sorted(modules):
        out.update(modules[name].tensors(name))
    return out


def kept_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The ss_* and modelspec.* keys of a source file (sshs_* are recomputed on save)."""
    return {k: v for k, v in metadata.items() if k.startswith(KEPT_PREFIXES)}


def file_family(modules: Mapping[str, ModuleWeights], metadata: Mapping[str, str]) -> str | None:
    return guess_file_family(list(modules), metadata)


def network_fields(modules: Mapping[str, ModuleWeights], metadata: Mapping[str, str]) -> dict[str, str]:
    """ss_network_dim/alpha and the conv entries of ss_network_args as the modules now are.

    One rank for all linear (resp. conv k×k) modules → that number; several → "Dynamic" as
    sd-scripts' resize writes for per-module ranks."""
    lin = [m for m in modules.values() if not (m.is_conv and m.down.shape[-1] > 1)]
    conv = [m for m in modules.values() if m.is_conv and m.down.shape[-1] > 1]

    def dim_alpha(ms):
        dims, alphas = Counter(m.rank for m in ms), Counter(m.alpha for m in ms)
        dim = format_number(next(iter(dims))) if len(dims) == 1 else "Dynamic"
        alpha = format_number(next(iter(alphas))) if len(alphas) == 1 else "Dynamic"
        return dim, alpha

    out = {"ss_network_module": "networks.lora"}
    if lin:
        out["ss_network_dim"], out["ss_network_alpha"] = dim_alpha(lin)
    args = metadata_network_args(metadata)
    args.pop("conv_dim", None), args.pop("conv_alpha", None)
    if conv:
        args["conv_dim"], args["conv_alpha"] = dim_alpha(conv)
    out["ss_network_args"] = json.dumps(args) if args else "None"
    return out


def metadata_network_args(metadata: Mapping[str, str]) -> dict:
    """A file's ss_network_args as a new dict ({} when absent, "None" or not a JSON object)."""
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
    except ValueError:
        return {}
    return args if isinstance(args, dict) else {}


def rank_summary(modules: Mapping[str, ModuleWeights]) -> str:
    """"rank 8 (264 modules), conv rank 4 (30)" style text."""
    lin = Counter(m.rank for m in modules.values() if not (m.is_conv and m.down.shape[-1] > 1))
    conv = Counter(m.rank for m in modules.values() if m.is_conv and m.down.shape[-1] > 1)

    def text(c):
        if len(c) == 1:
            r, n = next(iter(c.items()))
            return f"{r} ({n} modules)"
        return f"{min(c)}–{max(c)} ({sum(c.values())} modules)"

    parts = [f"rank {text(lin)}"] if lin else []
    if conv:
        parts.append(f"conv rank {text(conv)}")
    return ", ".join(parts) or "no modules"
