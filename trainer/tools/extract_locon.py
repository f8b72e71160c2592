"""Extract a LoCon from a fine-tuned model with the LyCORIS extractor's rank modes (kohya_ss' "Extract LyCORIS
LoCon", LyCORIS' tools/extract_locon.py arguments).

Each layer's ΔW gets its own rank from its singular values s (descending), as LyCORIS' extract_linear /
extract_conv choose it: `fixed` linear_dim / conv_dim; `threshold` the count of s > threshold; `ratio` the
count of s > ratio · s₀; `quantile` the count whose running sum stays below quantile · Σs; `full` every
singular value (the difference itself). 1×1 convs take the linear setting, as there. The factors are
written as a kohya LoCon (lora_down / lora_up / alpha = rank, kohya's module names) through the `extract`
tool's path, so A1111, ComfyUI and kohya's scripts load them as any LoCon.

Left out on purpose (docs/lora_tools.md): LyCORIS' sparse bias (`bias_indices` keys no other loader reads),
its Tucker split of 3×3 convs (`lora_mid`; disable_cp is the behaviour here), its switch to a full `diff`
module when the rank reaches half the outputs, and norm / embedding layers, which kohya's LoRA names do
not cover.
"""
from __future__ import annotations

import torch

from .extract import extract_lora
from .output import Report, ToolError

MODES = ("fixed", "threshold", "ratio", "quantile", "full")


def locon_rank(s: torch.Tensor, mode: str, param: float) -> int:
    """The rank LyCORIS' extractor keeps for singular values `s` (descending), at least 1."""
    s = s.float()
    if mode == "fixed":
        rank = int(param)
    elif mode == "threshold":
        rank = int((s > param).sum())
    elif mode == "ratio":
        rank = int((s > s.max() * param).sum())
    elif mode == "quantile":
        rank = int((torch.cumsum(s, 0) < param * s.sum()).sum())
    elif mode == "full":
        rank = s.numel()
    else:
        raise ToolError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return max(1, min(rank, s.numel()))


def _check(mode: str, name: str, value: float) -> None:
    if mode == "fixed" and value < 1:
        raise ToolError(f"--{name} must be ≥ 1 in fixed mode, got {value}")
    if mode == "threshold" and value < 0:
        raise ToolError(f"--{name} is a singular value, ≥ 0; got {value}")
    if mode in ("ratio", "quantile") and not 0 <= value <= 1:
        raise ToolError(f"--{name} is a fraction in [0, 1] in {mode} mode, got {value}")


def extract_locon(base_model, db_model, output_name, mode: str = "fixed", linear_dim: int = 64, conv_dim: int = 32,
                  linear_threshold: float = 0.0, conv_threshold: float = 0.0, linear_ratio: float = 0.0,
                  conv_ratio: float = 0.0, linear_quantile: float = 1.0, conv_quantile: float = 1.0,
                  min_diff: float = 0.01, is_sdxl: bool = False, is_v2: bool = False, save_precision: str = "fp16",
                  device: str = "cpu", overwrite: bool = False, show_progress: bool = True) -> Report:
    if mode not in MODES:
        raise ToolError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    params = {"fixed": (("linear_dim", linear_dim), ("conv_dim", conv_dim)),
              "threshold": (("linear_threshold", linear_threshold), ("conv_threshold", conv_threshold)),
              "ratio": (("linear_ratio", linear_ratio), ("conv_ratio", conv_ratio)),
              "quantile": (("linear_quantile", linear_quantile), ("conv_quantile", conv_quantile)),
              "full": ()}[mode]
    for name, value in params:
        _check(mode, name, value)
    linear, conv = (params[0][1], params[1][1]) if params else (0, 0)

    def rule(s: torch.Tensor, is_conv3x3: bool) -> int:
        return locon_rank(s, mode, conv if is_conv3x3 else linear)

    how = f"LyCORIS mode {mode}" + "".join(f", {n} {v:g}" for n, v in params)
    return extract_lora(base_model, db_model, output_name, clamp_quantile=1.0, min_diff=min_diff, sdxl=is_sdxl,
                        v2=is_v2, save_precision=save_precision, device=device, overwrite=overwrite,
                        show_progress=show_progress, rank_rule=rule, how=how)
