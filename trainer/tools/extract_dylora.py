"""Cut a DyLoRA file to a plain LoRA of a lower rank (sd-scripts' extract_lora_from_dylora.py arguments).

DyLoRA trains every rank up to network_dim at once, in blocks of `unit` ranks, so its first r rows of
`lora_down` and columns of `lora_up` (r a multiple of unit) are a LoRA of rank r on their own. Each
module keeps them and its alpha, as sd-scripts does, so the cut file applies
ΔW = alpha / r · up[:, :r] @ down[:r]. Without `new_rank` every multiple of unit below the file's rank is
written, as `<save_to>-0004.safetensors`, `-0008`, … (sd-scripts' names).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

from .lora_io import kept_metadata, metadata_network_args, network_fields, rank_summary, read_modules
from .lora_math import ModuleWeights
from .output import Report, ToolError, check_inputs, progress, save_checked_lora
from .resize import _lora_output

# ss_network_args keys that describe DyLoRA training, not the plain LoRA written
_DYLORA_ARGS = ("unit", "algo", "block_size")


def extract_dylora(model, save_to, unit: int | None = None, new_rank: int | None = None,
                   save_precision: str | None = None, overwrite: bool = False, show_progress: bool = True) -> Report:
    (model,) = check_inputs([model], "--model")
    modules, metadata = read_modules(model)
    file_unit = dylora_unit(model, metadata)
    unit = _check_unit(unit, file_unit)
    max_rank = max(m.rank for m in modules.values())
    ranks = _ranks(model, new_rank, unit, max_rank)
    outputs = [_output_for(save_to, r, single=new_rank is not None, overwrite=overwrite) for r in ranks]
    written = []
    for rank, out_path in progress(list(zip(ranks, outputs)), "extract DyLoRA", enabled=show_progress):
        cut = cut_dylora(modules, rank)
        save_checked_lora(out_path, cut, _metadata(metadata, cut, max_rank, rank, out_path), save_precision,
                          overwrite)
        written.append((rank, out_path))
    files = ", ".join(f"{p} (rank {r})" for r, p in written)
    text = (f"Cut the DyLoRA {model.name} ({rank_summary(modules)}, unit {unit}) to {files}: each module keeps "
            "its first rank rows of lora_down and columns of lora_up and its alpha, as sd-scripts' "
            "extract_lora_from_dylora does (so the scale becomes alpha/new rank). Every file is a plain LoRA, "
            "passed its self-check and keeps the source's ss_*/modelspec metadata.")
    return Report("extract-dylora", str(written[0][1]) if len(written) == 1 else str(Path(save_to)), text,
                  {"ranks": [r for r, _ in written], "files": [str(p) for _, p in written], "unit": unit,
                   "source_rank": max_rank})


def dylora_unit(path: Path, metadata: Mapping[str, str]) -> int | None:
    """The file's DyLoRA unit (None when its metadata does not say); refuses a file that is not DyLoRA."""
    module = metadata.get("ss_network_module", "")
    args = metadata_network_args(metadata)
    if module == "networks.dylora" or (module.startswith("lycoris") and args.get("algo") == "dylora"):
        try:
            return int(args["unit"]) if args.get("unit") not in (None, "", "None") else None
        except (TypeError, ValueError):
            return None
    said = f"ss_network_module is {module!r}" if module else "it has no ss_network_module metadata"
    raise ToolError(f"--model {path}: not a DyLoRA file ({said}); only a DyLoRA (networks.dylora, or LyCORIS "
                    "algo=dylora) can be cut by keeping its first ranks. For another LoRA use resize, which "
                    "finds the best lower-rank approximation by SVD.")


def cut_dylora(modules: Mapping[str, ModuleWeights], rank: int) -> dict[str, ModuleWeights]:
    """Each module's first `rank` ranks with its alpha (a module already that small is kept whole)."""
    out = {}
    for name, m in modules.items():
        r = min(rank, m.rank)
        out[name] = ModuleWeights(m.down[:r].contiguous(), m.up[:, :r].contiguous(), m.alpha)
    return out


def _check_unit(unit: int | None, file_unit: int | None) -> int:
    if unit is None:
        return file_unit or 1
    if unit < 1:
        raise ToolError(f"--unit must be ≥ 1, got {unit}")
    if file_unit and unit % file_unit:
        raise ToolError(f"--unit {unit} is not a multiple of the file's DyLoRA unit {file_unit}: a cut inside a "
                        f"trained block is not a trained rank; use --unit {file_unit} or a multiple of it")
    return unit


def _ranks(path: Path, new_rank: int | None, unit: int, max_rank: int) -> list[int]:
    if new_rank is None:
        ranks = list(range(unit, max_rank, unit))
        if not ranks:
            raise ToolError(f"--model {path}: its rank {max_rank} has no multiple of unit {unit} below it; "
                            "nothing to cut")
        return ranks
    if new_rank < 1 or new_rank % unit:
        raise ToolError(f"--new_rank {new_rank} must be a positive multiple of the DyLoRA unit {unit} "
                        f"(e.g. {unit}, {2 * unit}, …)")
    if new_rank > max_rank:
        raise ToolError(f"--new_rank {new_rank} is above {path.name}'s rank {max_rank}; choose at most {max_rank}")
    return [new_rank]


def _output_for(save_to, rank: int, single: bool, overwrite: bool) -> Path:
    path = Path(save_to).expanduser()
    if not single:  # sd-scripts' names for the per-rank files
        path = path.with_name(f"{path.stem}-{rank:04d}{path.suffix}")
    return _lora_output(path, overwrite)


def _metadata(source: Mapping[str, str], cut: Mapping[str, ModuleWeights], source_rank: int, rank: int,
              out_path: Path) -> dict[str, str]:
    args = {k: v for k, v in metadata_network_args(source).items() if k not in _DYLORA_ARGS}
    plain = {**source, "ss_network_args": json.dumps(args) if args else "None"}
    meta = kept_metadata(source)
    meta.update(network_fields(cut, plain))  # networks.lora, the new dim, conv entries
    comment = source.get("ss_training_comment", "").strip()
    note = f"split from DyLoRA, rank {source_rank} to {rank}"
    meta["ss_training_comment"] = "; ".join(x for x in (note, comment) if x and x != "None")
    meta["modelspec.title"] = meta["ss_output_name"] = out_path.stem
    meta["modelspec.date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return meta
