"""SVD merge: several LoRAs / LoCons (any ranks) with ratios → one LoRA of a chosen rank
(sd-scripts' svd_merge_lora.py arguments).

Per module ΔW = Σ ratio_i · ΔW_i is built in fp32 and cut to `new_rank` (`new_conv_rank` for
3×3 convs) by SVD; alpha = rank (scale 1) as kohya writes. At a rank ≥ the sum of the input
ranks (and clamp_quantile 1) the result is the sum itself, to float precision.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .lora_io import file_family, kept_metadata, network_fields, rank_summary, read_modules
from .lora_math import ModuleWeights, factorize, svd
from .output import Report, ToolError, check_inputs, percent, progress, save_checked_lora
from .resize import _lora_output, _verify


def read_many(models, ratios) -> list[tuple[Path, float, dict[str, ModuleWeights], dict]]:
    """The input files with their ratios (default 1.0 each), all for one model family."""
    paths = check_inputs(models, "--models")
    if not paths:
        raise ToolError("--models: give at least one LoRA file")
    ratios = list(ratios or [1.0] * len(paths))
    if len(ratios) != len(paths):
        raise ToolError(f"--ratios has {len(ratios)} values for {len(paths)} --models; give one ratio per model")
    loaded, families = [], {}
    for p, r in zip(paths, ratios):
        modules, meta = read_modules(p)
        loaded.append((p, float(r), modules, meta))
        families[p.name] = file_family(modules, meta)
    known = {f for f in families.values() if f and f != "sd1 or sd2"}
    if len(known) > 1:
        raise ToolError("the LoRAs are for different model families ("
                        + ", ".join(f"{n}: {f}" for n, f in families.items()) + "); merge LoRAs of one family")
    return loaded


def merged_from(loaded) -> str:
    """SAI model spec 1.0.1 `modelspec.merged_from`: the inputs' titles (file names when untitled)."""
    return ", ".join(meta.get("modelspec.title") or p.stem for p, _, _, meta in loaded)


def summed_deltas(loaded, device="cpu", show_progress=True) -> dict[str, torch.Tensor]:
    """{module: Σ ratio · ΔW} over all files (a module missing from a file adds nothing)."""
    names = sorted({n for _, _, modules, _ in loaded for n in modules})
    out = {}
    for name in progress(names, "sum ΔW", enabled=show_progress):
        total = None
        for path, ratio, modules, _ in loaded:
            m = modules.get(name)
            if m is None:
                continue
            d = m.delta(device) * ratio
            if total is not None and total.shape != d.shape:
                raise ToolError(f"{path.name}: module {name} has shape {tuple(d.shape)}, another file "
                                f"{tuple(total.shape)}; the LoRAs are for different base models")
            total = d if total is None else total + d
        out[name] = total
    return out


def svd_merge_loras(models, save_to, ratios=None, new_rank: int = 4, new_conv_rank: int | None = None,
                    save_precision: str = "fp16", device: str = "cpu", clamp_quantile: float = 0.99,
                    overwrite: bool = False, show_progress: bool = True, base=None) -> Report:
    save_to = _lora_output(save_to, overwrite)
    if new_rank < 1:
        raise ToolError(f"--new_rank must be ≥ 1, got {new_rank}")
    if not 0 < clamp_quantile <= 1:
        raise ToolError(f"--clamp_quantile must be in (0, 1], got {clamp_quantile}")
    conv_rank = new_conv_rank or new_rank
    loaded = read_many(models, ratios)
    deltas = summed_deltas(loaded, device, show_progress)
    out, kept = {}, {}
    for name, delta in progress(sorted(deltas.items()), "svd", enabled=show_progress):
        rank = conv_rank if delta.dim() == 4 and delta.shape[-1] > 1 else new_rank
        f = factorize(delta, rank, clamp_quantile=clamp_quantile, decomposed=svd(delta))
        out[name] = ModuleWeights(f.module.down.cpu(), f.module.up.cpu(), f.module.alpha)
        kept[name] = f.kept_fro
    first_meta = loaded[0][3]
    meta = kept_metadata(first_meta)
    meta.update(network_fields(out, first_meta))
    sources = ", ".join(f"{p.name}×{r:g}" for p, r, _, _ in loaded)
    meta["ss_training_comment"] = f"SVD merge of {sources} at {rank_summary(out)}"
    meta["modelspec.title"] = save_to.stem
    meta["modelspec.merged_from"] = merged_from(loaded)
    meta["ss_output_name"] = save_to.stem
    meta["modelspec.date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save_checked_lora(save_to, out, meta, save_precision, overwrite)
    warnings = _verify(save_to, base)
    mean = sum(kept.values()) / len(kept)
    worst = min(kept.items(), key=lambda kv: kv[1])
    text = (f"SVD-merged {sources} into {save_to} ({rank_summary(out)}, alpha = rank, {save_precision}). "
            f"The merged modules keep on average {percent(mean)} of the summed weight change's Frobenius norm "
            f"(least: {percent(worst[1])} in {worst[0]}); a rank at least the sum of the input ranks keeps all "
            "of it. The file passed its self-check.")
    return Report("svd-merge", str(save_to), text, {"fro_kept": kept}, warnings)
