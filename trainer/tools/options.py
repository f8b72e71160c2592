"""The LoRA tools' options, declared once: the CLI (`python -m trainer lora <tool>`), the page's
widgets and the docs are all read from these pydantic models. Names are those of kohya's own
scripts (resize_lora.py, merge_lora.py, svd_merge_lora.py, extract_lora_from_models.py,
convert_diffusers20_original_sd.py, kohya_ss' merge_lycoris.py,
extract_lora_from_dylora.py, LyCORIS' extract_locon.py) so users' commands carry over. No torch here: the GUI reads it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel

from .optionmodel import Widget, add_arguments, option_argv, topt, widgets

__all__ = ["TOOLS", "Tool", "Widget", "build_parser", "tool_argv", "topt", "widgets"]
PRECISION = Literal["fp16", "bf16", "float"]


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
    sd_model: Optional[str] = topt(None, "base checkpoint to merge the LoRAs into (SD1/SD2/SDXL, FLUX.1, Chroma, "
                                   "SD3.5); leave empty to merge the LoRAs into one LoRA", kind="model",
                                   label="Base model (merge into it)")
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


class ExtractLoconOptions(BaseModel):
    base_model: str = topt(..., "the original (base) model", kind="model", label="Base model", positional=True)
    db_model: str = topt(..., "the fine-tuned (DreamBooth) model", kind="model", label="Tuned model",
                         positional=True)
    output_name: str = topt(..., "the LoCon to write (.safetensors)", kind="save", label="Save to", positional=True)
    mode: Literal["fixed", "threshold", "ratio", "quantile", "full"] = topt(
        "fixed", "how each layer's rank is chosen from its singular values: fixed dims; threshold: those above a "
        "value; ratio: those above ratio × the largest; quantile: those whose running sum stays below quantile × "
        "the total; full: all (the exact difference)", label="Mode")
    linear_dim: int = topt(64, "rank of linear layers (fixed mode)", label="Linear dim")
    conv_dim: int = topt(32, "rank of 3×3 convs (fixed mode)", label="Conv dim")
    linear_threshold: float = topt(0.0, "singular-value threshold of linear layers (threshold mode)",
                                   label="Linear threshold")
    conv_threshold: float = topt(0.0, "singular-value threshold of 3×3 convs (threshold mode)",
                                 label="Conv threshold")
    linear_ratio: float = topt(0.0, "fraction of the largest singular value kept above, linear (ratio mode)",
                               label="Linear ratio")
    conv_ratio: float = topt(0.0, "fraction of the largest singular value kept above, convs (ratio mode)",
                             label="Conv ratio")
    linear_quantile: float = topt(1.0, "share of the singular values' sum kept, linear (quantile mode)",
                                  label="Linear quantile")
    conv_quantile: float = topt(1.0, "share of the singular values' sum kept, convs (quantile mode)",
                                label="Conv quantile")
    min_diff: float = topt(0.01, "a text encoder whose largest change is below this is left out", label="Min diff")
    is_sdxl: bool = topt(False, "the models are SDXL (normally detected)", label="SDXL")
    is_v2: bool = topt(False, "the models are SD2 (normally detected)", label="SD2 (v2)")
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


class MergeLycorisOptions(BaseModel):
    base_model: str = topt(..., "the checkpoint to merge into: .safetensors/.ckpt file, diffusers folder or hub id",
                           kind="model", label="Base model", positional=True)
    lycoris_model: str = topt(..., "the LyCORIS file (LoHa, LoKr, LoCon, iA3, DoRA, full, …)", kind="file",
                              label="LyCORIS file", positional=True)
    output_name: str = topt(..., "the merged model: a .safetensors/.ckpt file, or a folder name without suffix for "
                            "a diffusers folder", kind="save_model", label="Output", positional=True)
    weight: float = topt(1.0, "strength (multiplier) of the LyCORIS file", label="Weight")
    dtype: Literal["float", "fp16", "bf16", "float16", "bfloat16", "float32"] = topt(
        "float", "precision of the saved model", label="Save precision")
    device: str = topt("cpu", "where each module's weight change is computed", label="Device")
    is_sdxl: bool = topt(False, "the base model is SDXL (normally detected)", label="SDXL")
    is_v2: bool = topt(False, "the base model is SD2 (normally detected)", label="SD2 (v2)")
    overwrite: bool = topt(False, _OVERWRITE, label="Overwrite")


class ExtractDyloraOptions(BaseModel):
    model: str = topt(..., "the DyLoRA file", kind="file", label="DyLoRA file")
    save_to: str = topt(..., "the LoRA to write (.safetensors); without new_rank one file per rank, named "
                        "<save_to>-0004.safetensors etc. as sd-scripts does", kind="save", label="Save to")
    unit: Optional[int] = topt(None, "the DyLoRA unit (default: the file's, from its ss_network_args)",
                               label="Unit")
    new_rank: Optional[int] = topt(None, "the rank to keep, a multiple of unit (default: every multiple of unit "
                                   "below the file's rank)", label="New rank")
    save_precision: Optional[PRECISION] = topt(None, "precision of the saved tensors (default: the file's)",
                                               label="Save precision")
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
    Tool("extract-locon", "Extract LyCORIS LoCon", "a LoCon from a fine-tuned model, each layer's rank chosen by "
         "LyCORIS' modes (fixed, threshold, ratio, quantile, full)", ExtractLoconOptions),
    Tool("merge-lycoris", "Merge LyCORIS", "a LyCORIS file (LoHa, LoKr, LoCon, iA3, DoRA, full) into a checkpoint",
         MergeLycorisOptions),
    Tool("extract-dylora", "Extract DyLoRA", "a plain LoRA of a chosen rank from a DyLoRA file",
         ExtractDyloraOptions),
    Tool("show", "Show LoRA", "a LoRA file's metadata, modules, ranks, family and hashes", ShowOptions),
    Tool("convert", "Convert model", "a checkpoint between single file and diffusers folder", ConvertOptions),
)}


def build_parser(tool: Tool, prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} {tool.name}", description=f"{tool.title}: {tool.summary}.")
    add_arguments(p, tool.options)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def tool_argv(tool: str, values: dict[str, Any]) -> list[str]:
    """The CLI arguments for option values (what the page runs); empty values are left out."""
    return [tool, *option_argv(TOOLS[tool].options, values)]
