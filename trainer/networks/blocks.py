"""Block-wise ranks and learning rates of sd-scripts' networks.lora (`block_dims`, `down_lr_weight`, ...).

The U-Net is cut into the blocks sd-scripts numbers: SD1/SD2 25 (IN00-IN11, MID, OUT00-OUT11), SDXL 23
(base, IN0-IN8, MID0-2, OUT0-8, out). Values are written as kohya_ss writes them, comma-separated
strings: `block_dims="2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2"`. The lr weights
also take sd-scripts' shapes `sine`, `cosine`, `linear`, `reverse_linear`, `zeros`, each with an
optional `+offset` (`cosine+.25`). No torch here: the config schema validates with these functions.
"""
from __future__ import annotations

import math
import re

NUM_BLOCKS = {"sd": 12, "sdxl": 9}  # IN/OUT blocks
NUM_MID = {"sd": 1, "sdxl": 3}
_RE_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
SHAPES = ("sine", "cosine", "linear", "reverse_linear", "zeros")


def _arch(family: str) -> str:
    return "sdxl" if family == "sdxl" else "sd"


def total_blocks(family: str) -> int:
    a = _arch(family)
    return NUM_BLOCKS[a] * 2 + NUM_MID[a] + (2 if a == "sdxl" else 0)


def block_index(lora_name: str, family: str) -> int:
    """sd-scripts' block of a U-Net module name (-1 for text-encoder modules and names it cannot place)."""
    if not lora_name.startswith("lora_unet_"):
        return -1
    if _arch(family) == "sd":
        m = _RE_UPDOWN.search(lora_name)
        if m:
            i, j = int(m[2]), int(m[4])
            idx = 3 * i + 2 if m[3] in ("upsamplers", "downsamplers") else 3 * i + j
            return 1 + idx if m[1] == "down" else NUM_BLOCKS["sd"] + 1 + idx
        return NUM_BLOCKS["sd"] if "mid_block_" in lora_name else -1
    name = lora_name[len("lora_unet_"):]
    for prefix, offset in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return offset + int(name.split("_")[2])
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    return 22 if name.startswith("out_") else -1


def parse_numbers(text: str, field: str, count: int | None = None, integer: bool = False) -> list[float] | None:
    """"1,2, 3" → [1, 2, 3]; empty → None. `count` demands exactly that many values."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = [int(v) if integer else float(v) for v in (p.strip() for p in text.split(",")) if v]
    except ValueError:
        kind = "whole numbers" if integer else "numbers"
        raise ValueError(f"{field}: {text!r} must be comma-separated {kind}") from None
    if count is not None and len(values) != count:
        raise ValueError(f"{field}: {len(values)} values given, the U-Net has {count} blocks "
                         f"(SD1/SD2: 25, SDXL: 23)")
    return values


def _shape(text: str, n: int, field: str) -> list[float]:
    name, _, offset = text.partition("+")
    try:
        base = float(offset) if offset else 0.0
    except ValueError:
        raise ValueError(f"{field}: offset in {text!r} is not a number") from None
    if name == "cosine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in reversed(range(n))]
    if name == "sine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in range(n)]
    if name == "linear":
        return [i / (n - 1) + base for i in range(n)]
    if name == "reverse_linear":
        return [i / (n - 1) + base for i in reversed(range(n))]
    if name == "zeros":
        return [base] * n
    raise ValueError(f"{field}: {text!r} is not a list of numbers or one of {', '.join(SHAPES)} (+offset)")


def _weights(text: str, n: int, field: str) -> list[float] | None:
    text = (text or "").strip()
    if not text:
        return None
    values = _shape(text, n, field) if text.split("+")[0] in SHAPES else parse_numbers(text, field)
    return (values + [1.0] * n)[:n]  # sd-scripts: too short → filled with 1, too long → cut


def block_lr_weights(family: str, down: str = "", mid: str = "", up: str = "",
                     zero_threshold: str | float = "") -> list[float] | None:
    """One lr multiplier per block (sd-scripts get_block_lr_weight); None when no weight is set.
    Weights at or below `block_lr_zero_threshold` become 0: those blocks are not trained."""
    a = _arch(family)
    n, n_mid = NUM_BLOCKS[a], NUM_MID[a]
    d = _weights(down, n, "down_lr_weight")
    m = _weights(mid, n_mid, "mid_lr_weight")
    u = _weights(up, n, "up_lr_weight")
    if d is None and m is None and u is None:
        return None
    threshold = float(zero_threshold) if str(zero_threshold).strip() else 0.0
    weights = [w if w > threshold else 0.0 for w in (d or [1.0] * n) + (m or [1.0] * n_mid) + (u or [1.0] * n)]
    return [1.0] + weights + [1.0] if a == "sdxl" else weights


def block_dims_alphas(family: str, dims: str = "", alphas: str = "", conv_dims: str = "", conv_alphas: str = "",
                      network_alpha: float = 1.0, conv_alpha: float | None = None):
    """(block_dims, block_alphas, conv_block_dims, conv_block_alphas) lists, or Nones when block_dims is unset."""
    n = total_blocks(family)
    d = parse_numbers(dims, "block_dims", n, integer=True)
    if d is None:
        if any(str(v).strip() for v in (alphas, conv_dims, conv_alphas)):
            raise ValueError("block_alphas / conv_block_dims / conv_block_alphas need block_dims")
        return None, None, None, None
    a = parse_numbers(alphas, "block_alphas", n) or [float(network_alpha)] * n
    cd = parse_numbers(conv_dims, "conv_block_dims", n, integer=True)
    ca = None
    if cd is not None:
        ca = parse_numbers(conv_alphas, "conv_block_alphas", n) or [float(conv_alpha or 1.0)] * n
    return d, a, cd, ca


def check_block_options(values) -> list[tuple[str, str]]:
    """(field, message) for each block-wise option that does not parse, for both SD and SDXL lengths
    (the family is only known once the model is read: a list must fit one of them)."""
    problems = []
    for field in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        try:
            _weights(str(getattr(values, field)), 12, field)
        except ValueError as e:
            problems.append((field, str(e)))
    for field, integer in (("block_dims", True), ("block_alphas", False), ("conv_block_dims", True),
                           ("conv_block_alphas", False)):
        text = str(getattr(values, field))
        try:
            values_ = parse_numbers(text, field, None, integer)
        except ValueError as e:
            problems.append((field, str(e)))
            continue
        if values_ is not None and len(values_) not in (total_blocks("sd1"), total_blocks("sdxl")):
            problems.append((field, f"{len(values_)} values given; SD1/SD2 U-Nets have 25 blocks, SDXL 23"))
    threshold = str(values.block_lr_zero_threshold).strip()
    if threshold:
        try:
            float(threshold)
        except ValueError:
            problems.append(("block_lr_zero_threshold", f"{threshold!r} is not a number"))
    return problems
