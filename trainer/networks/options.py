"""Checks of the network options that need more than one field (run with the config rules; no torch)."""
from __future__ import annotations

from .blocks import check_block_options
from .registry import network_type


def network_option_problems(c) -> list[tuple[str, str]]:
    kind = network_type(c.LoRA_type)
    problems = check_block_options(c) if kind.builder == "lora" else []
    if kind.builder != "lora":
        set_blocks = [k for k in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                                  "down_lr_weight", "mid_lr_weight", "up_lr_weight") if str(getattr(c, k, "") or "")]
        if set_blocks:
            problems.append((set_blocks[0], f"{set_blocks[0]} is an option of sd-scripts' networks.lora (Standard, "
                             f"Kohya LoCon); {c.LoRA_type} does not use it: clear it or pick one of those types"))
    if kind.lora_type in ("Kohya DyLoRA", "LyCORIS/DyLoRA") and c.network_dim % max(c.unit, 1):
        problems.append(("unit", f"network_dim {c.network_dim} must be a multiple of unit {c.unit}"))
    if kind.lora_type == "Kohya DyLoRA":
        if c.conv_dim > 1 and c.conv_dim != c.network_dim:
            problems.append(("conv_dim", f"Kohya DyLoRA trains convolutions at network_dim: set conv_dim to "
                             f"{c.network_dim}, or to 1 to leave them out"))
        dropouts = [k for k in ("network_dropout", "rank_dropout", "module_dropout") if getattr(c, k, 0)]
        if dropouts:
            problems.append((dropouts[0], "Kohya DyLoRA has no dropout (sd-scripts ignores it); set it to 0"))
    return problems
