"""The LoRA tools' options, declared once: the CLI (`python -m trainer lora <tool>`), the page's
widgets and the docs are all read from these pydantic models. Names are those of kohya's own
scripts (resize_lora.py, merge_lora.py, svd_merge_lora.py, extract_lora_from_models.py,
convert_diffusers20_original_sd.py) so users' commands carry over. No torch here: the GUI reads it.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional, get_args, get_origin

from pydantic import BaseModel, Field

Kind = Literal["file", "files", "save", "model", "save_model", "int", "float", "floats", "bool", "choice", "str"]
PRECISION = Literal["fp16", "bf16", "float"]


def topt(default: Any, help: str, *, kind: Kind | None = None, label: str | None = None,
         positional: bool = False) -> Any:
    """One tool option; `kind` picks the widget (file / save / model pickers, numbers, choices)."""
    return Field(default, description=help, json_schema_extra={"kind": kind, "label": label, "positional": positional})


_OVERWRITE = "replace the output if it exists (without this an existing file is never touched)"
_BASE = "optional base model (file, diffusers folder or hub id): also run the full Verify LoRA check against it"


class ResizeOptions(BaseModel):
    model: str = topt(..., "the LoRA / LoCon file to resize", kind="file", label="LoRA file")
    save_to: str = topt(..., "the resized LoRA to write (.safetensors)", kind="save", label="Save to")
    new_rank: int = topt(4, "the new rank (the largest rank with a dynamic method)", label="New rank")
    new_conv_rank: Optional[int] = topt(None, "the new rank of 3×3 LoCon convs (default: new_rank)",
                                        label="New conv rank")
    dynamic_method: Optional[Literal["sv_ratio", "sv_fro", "sv_cumulative"]] = topt(
        None, "choose each module's rank: sv_ratio keeps singular values ≥ largest/param, sv_fro keeps param of "
        "the Frobenius norm, sv_cumulative keeps param of the singular values' sum", label="Dynamic method")
    dynamic_param: Optional[float] = topt(None, "the dynamic method's target (sv_ratio e.g. 8, sv_fro 0.9, "
                                          "sv_cumulative 0.9)", label="Dynamic parameter")
    save_precision: PRECISION = topt("fp16", "precision of the saved tensors", label="Save precision")
    device: str = topt("cpu", "where the SVDs run (cuda is much faster for big LoRAs)", label="Device")
    verbose: bool = topt(False, "list every module's rank and kept Frobenius norm in the report", label="Verbose")
    base: Optional[str] = topt(None, _BASE, kind="model", label="Base model (optional check)")
    overwrite: bool = topt(False, _OVERWRITE, label="Overwrite")


class MergeOptions(BaseModel):
    sd_model: Optional[str] = topt(None, "base checkpoint to merge the LoRAs into; leave empty to merge the LoRAs "
                                   "into one LoRA", kind="model", label="Base model (merge into it)")
    models: list[str] = topt(..., "the LoRA files", kind="files", label="LoRA files")
    ratios: Optional[list[float]] = topt(None, "one ratio (strength) per LoRA, default 1 each", kind="floats",
                                         label="Ratios")
    save_to: str = topt(..., "output: a LoRA .safetensors, or with sd_model a .safetensors/.ckpt file or a "
                        "folder name without suffix for a diffusers folder", kind="save_model", label="Save to")
    save_precision: PRECISION = topt("fp16", "precision of the saved tensors", label="Save precision")
    concat: bool = topt(False, "stack the LoRAs' ranks (the studio always merges LoRAs this way, which is exact; "
                        "accepted for kohya's command lines)", label="Concatenate ranks")
    family: Optional[Literal["sd1", "sd2", "sdxl"]] = topt(None, "the base model's family when detection is "
                                                           "wrong", label="Model family")
    base: Optional[str] = topt(None, _BASE, kind="model", label="Base model (optional check)")
    overwrite: bool = topt(False, _OVERWRITE, label="Overwrite")


class SvdMergeOptions(BaseModel):
    models: list[str] = topt(..., "the LoRA / LoCon files (any ranks)", kind="files", label="LoRA files")
    ratios: Optional[list[float]] = topt(None, "one ratio per LoRA, default 1 each", kind="floats", label="Ratios")
    new_rank: int = topt(4, "rank of the merged LoRA", label="New rank")
    new_conv_rank: Optional[int] = topt(None, "rank of its 3×3 convs (default: new_rank)", label="New conv rank")
    save_to: str = topt(..., "the merged LoRA to write (.safetensors)", kind="save", label="Save to")
    save_precision: PRECISION = topt("fp16", "precision of the saved tensors", label="Save precision")
    clamp_quantile: float = topt(0.99, "clamp the factors' values at this quantile (kohya's 0.99; 1 = exact)",
                                 label="Clamp quantile")
    device: str = topt("cpu", "where the SVDs run", label="Device")
    base: Optional[str] = topt(None, _BASE, kind="model", label="Base model (optional check)")
    overwrite: bool = topt(False, _OVERWRITE, label="Overwrite")


class ExtractOptions(BaseModel):
    model_org: str = topt(..., "the original (base) model", kind="model", label="Original model")
    model_tuned: str = topt(..., "the fine-tuned model", kind="model", label="Tuned model")
    save_to: str = topt(..., "the LoRA to write (.safetensors)", kind="save", label="Save to")
    dim: int = topt(4, "rank of the LoRA", label="Rank (dim)")
    conv_dim: Optional[int] = topt(None, "rank of 3×3 convs: set it to extract a LoCon", label="Conv rank")
    clamp_quantile: float = topt(0.99, "clamp the factors' values at this quantile (1 = exact)",
                                 label="Clamp quantile")
    min_diff: float = topt(0.01, "a text encoder whose largest change is below this is left out", label="Min diff")
    sdxl: bool = topt(False, "the models are SDXL (normally detected)", label="SDXL")
    v2: bool = topt(False, "the models are SD2 (normally detected)", label="SD2 (v2)")
    save_precision: PRECISION = topt("fp16", "precision of the saved tensors", label="Save precision")
    device: str = topt("cpu", "where the SVDs run", label="Device")
    overwrite: bool = topt(False, _OVERWRITE, label="Overwrite")


class ShowOptions(BaseModel):
    model: str = topt(..., "the LoRA file", kind="file", label="LoRA file", positional=True)
    metadata: bool = topt(False, "also print every metadata key", label="All metadata")


class ConvertOptions(BaseModel):
    model_to_load: str = topt(..., "the model to convert: .safetensors/.ckpt file or diffusers folder",
                              kind="model", label="Model to convert", positional=True)
    model_to_save: str = topt(..., "where to write it: .safetensors/.ckpt, or a name without suffix for a "
                              "diffusers folder", kind="save_model", label="Save as", positional=True)
    save_precision_as: PRECISION = topt("float", "precision of the saved weights", label="Save precision")
    family: Optional[Literal["sd1", "sd2", "sdxl"]] = topt(None, "the family when detection is wrong",
                                                           label="Model family")
    overwrite: bool = topt(False, _OVERWRITE, label="Overwrite")


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    summary: str
    options: type[BaseModel]


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("merge", "Merge LoRA", "LoRAs into a checkpoint, or several LoRAs into one", MergeOptions),
    Tool("svd-merge", "SVD merge", "LoRAs of any ranks into one LoRA of a chosen rank", SvdMergeOptions),
    Tool("resize", "Resize LoRA", "a LoRA to a lower rank (fixed or dynamic)", ResizeOptions),
    Tool("extract", "Extract LoRA", "a LoRA from a fine-tuned model and its base", ExtractOptions),
    Tool("show", "Show LoRA", "a LoRA file's metadata, modules, ranks, family and hashes", ShowOptions),
    Tool("convert", "Convert model", "a checkpoint between single file and diffusers folder", ConvertOptions),
)}


@dataclass(frozen=True)
class Widget:
    """What the page needs to draw one option."""

    name: str
    kind: str
    label: str
    help: str
    default: Any
    required: bool
    choices: list | None
    positional: bool


def _unwrap(annotation):
    if get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def widgets(options: type[BaseModel]) -> list[Widget]:
    out = []
    for name, f in options.model_fields.items():
        extra = f.json_schema_extra or {}
        ann, _ = _unwrap(f.annotation)
        choices = list(get_args(ann)) if get_origin(ann) is Literal else None
        kind = extra.get("kind") or ("choice" if choices else {bool: "bool", int: "int", float: "float"}.get(ann, "str"))
        out.append(Widget(name, kind, extra.get("label") or name, f.description or "",
                          None if f.is_required() else f.default, f.is_required(), choices,
                          bool(extra.get("positional"))))
    return out


def build_parser(tool: Tool, prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} {tool.name}", description=f"{tool.title}: {tool.summary}.")
    for w in widgets(tool.options):
        ann, _ = _unwrap(tool.options.model_fields[w.name].annotation)
        kw: dict[str, Any] = {"help": w.help}
        if w.kind == "bool":
            kw["action"] = "store_true"
        else:
            if get_origin(ann) is list:
                kw["nargs"] = "+"
                ann = get_args(ann)[0]
            kw["type"] = ann if ann in (int, float) else str
            if w.choices:
                kw["choices"] = w.choices
                kw.pop("type")
            if not w.positional:
                kw["default"] = w.default
                kw["required"] = w.required
            if w.default is not None and not isinstance(w.default, bool) and not w.positional:
                kw["help"] += f" (default {w.default})"
        if w.positional:
            p.add_argument(w.name, **kw)
        else:
            p.add_argument(f"--{w.name}", **kw)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def tool_argv(tool: str, values: dict[str, Any]) -> list[str]:
    """The CLI arguments for option values (what the page runs); empty values are left out."""
    t = TOOLS[tool]
    args: list[str] = [tool]
    for w in widgets(t.options):
        v = values.get(w.name)
        if v is None or v == "" or v == [] or v is False:
            continue
        if w.kind == "bool":
            args.append(f"--{w.name}")
            continue
        items = [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
        if not w.positional:
            args.append(f"--{w.name}")
        args += items
    return args
