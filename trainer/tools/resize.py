"""Resize a LoRA / LoCon to a lower rank by SVD (sd-scripts' resize_lora.py, same arguments).

Each module's ΔW = up @ down is decomposed and cut to the new rank — a fixed `new_rank`
(`new_conv_rank` for 3×3 LoCon convs), or per module by a dynamic method (`sv_ratio`,
`sv_fro`, `sv_cumulative`) capped at `new_rank`. The scale alpha/rank is kept, so the new
alpha is old_alpha / old_rank × new_rank, as kohya does. A module is never made larger.
"""
from __future__ import annotations

import time
from pathlib import Path

from .lora_io import kept_metadata, network_fields, rank_summary, read_modules
from .lora_math import dynamic_rank, factorize, svd
from .output import Report, ToolError, check_inputs, check_output, percent, progress, save_checked_lora


def resize_lora(model, save_to, new_rank: int = 4, new_conv_rank: int | None = None,
                dynamic_method: str | None = None, dynamic_param: float | None = None,
                save_precision: str = "fp16", device: str = "cpu", overwrite: bool = False,
                verbose: bool = False, show_progress: bool = True, base=None) -> Report:
    (model,) = check_inputs([model], "--model")
    save_to = _lora_output(save_to, overwrite)
    if new_rank < 1:
        raise ToolError(f"--new_rank must be ≥ 1, got {new_rank}")
    if dynamic_method and dynamic_param is None:
        raise ToolError(f"--dynamic_method {dynamic_method} needs --dynamic_param (e.g. 0.9 for sv_fro)")
    conv_rank = new_conv_rank or new_rank
    modules, metadata = read_modules(model)
    out, per_module = {}, {}
    for name, m in progress(sorted(modules.items()), "resize", enabled=show_progress):
        delta = m.delta(device)
        decomposed = svd(delta)
        s = decomposed[1]
        cap = conv_rank if (m.is_conv and m.down.shape[-1] > 1) else new_rank
        rank = dynamic_rank(s, dynamic_method, dynamic_param, cap) if dynamic_method else cap
        rank = min(rank, m.rank)
        f = factorize(delta, rank, alpha=m.scale * rank, decomposed=decomposed)
        out[name] = f.module
        per_module[name] = {"rank_before": m.rank, "rank": f.rank, "fro_kept": f.kept_fro}
    meta = kept_metadata(metadata)
    meta.update(network_fields(out, metadata))
    how = (f"dynamic_method: {dynamic_method}, dynamic_param: {dynamic_param}, max rank {new_rank}"
           if dynamic_method else f"rank {new_rank}" + (f", conv rank {conv_rank}" if new_conv_rank else ""))
    comment = f"resized from {rank_summary(modules)} to {rank_summary(out)} ({how})"
    meta["ss_training_comment"] = "; ".join(x for x in (metadata.get("ss_training_comment", "").strip(), comment)
                                            if x and x != "None")
    meta.setdefault("modelspec.title", save_to.stem)
    meta["modelspec.date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save_checked_lora(save_to, out, meta, save_precision, overwrite)
    warnings = _verify(save_to, base)
    kept = [v["fro_kept"] for v in per_module.values()]
    worst = min(per_module.items(), key=lambda kv: kv[1]["fro_kept"])
    text = (f"Resized {model.name} ({rank_summary(modules)}) to {rank_summary(out)} with {how}; saved "
            f"{save_to} at {save_precision}. The modules keep on average {percent(sum(kept) / len(kept))} of "
            f"their weight change's Frobenius norm (least: {percent(worst[1]['fro_kept'])} in {worst[0]}). "
            "The file passed its self-check and keeps the source's ss_*/modelspec metadata.")
    if verbose:
        text += "\n" + "\n".join(f"  {n}: rank {v['rank_before']} → {v['rank']}, Frobenius kept "
                                 f"{percent(v['fro_kept'])}" for n, v in sorted(per_module.items()))
    return Report("resize", str(save_to), text, {"modules": per_module}, warnings)


def _lora_output(save_to, overwrite: bool) -> Path:
    path = check_output(save_to, overwrite)
    if path.suffix.lower() != ".safetensors":
        raise ToolError(f"--save_to {path}: LoRA files are written as .safetensors")
    return path


def _verify(path: Path, base) -> list[str]:
    """With a base model, run the full Verify LoRA check; its problems become an error."""
    if base is None:
        return []
    from trainer.networks.checks import verify_lora_file

    report = verify_lora_file(path, base)
    if not report.ok:
        raise ToolError(f"{path} was written but does not fit the base model:\n  " + "\n  ".join(report.problems))
    return list(report.warnings)
