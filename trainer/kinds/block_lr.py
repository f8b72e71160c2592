"""`block_lr` for full SDXL training: the U-Net's optimizer groups, one per sd-scripts block.

sd-scripts (sdxl_train.py `get_block_params_to_optimize`) sorts its SGM-named U-Net parameters into 23
blocks by name prefix. Our U-Net is diffusers', so each parameter name is first turned into its SGM name
with the same key map the single-file saver uses (trainer/models/ldm_keys.py), then sorted by sd-scripts'
rule: the split is the same parameter for parameter. A block at rate 0 is left out of the optimizer, as
sd-scripts does, and frozen here as well, so it gets no gradient and keeps exactly its weights.
"""
from __future__ import annotations

import torch

from trainer.config.block_lr import BLOCK_NAMES, SDXL_UNET_BLOCKS
from trainer.models.ldm_keys import unet_block_map, unet_ldm_key

from .base import KindError

# SGM prefix → first block index; the number after the prefix is added (input_blocks.3 → 1 + 3)
NUMBERED = (("input_blocks.", 1), ("middle_block.", 10), ("output_blocks.", 13))


def sgm_block_index(name: str) -> int:
    """sd-scripts' block of an SGM-named SDXL U-Net parameter (0–22)."""
    if name.startswith(("time_embed.", "label_emb.")):
        return 0
    for prefix, first in NUMBERED:
        if name.startswith(prefix):
            return first + int(name[len(prefix):].split(".")[0])
    if name.startswith("out."):
        return SDXL_UNET_BLOCKS - 1
    raise KindError(f"block_lr: the U-Net parameter {name!r} belongs to none of sd-scripts' 23 SDXL blocks")


def unet_block_indices(unet: torch.nn.Module) -> dict[str, int]:
    """Each (diffusers) parameter name of an SDXL U-Net → its block_lr index."""
    blocks = unet_block_map(dict(unet.config))
    indices = {}
    for name, _ in unet.named_parameters():
        try:
            index = sgm_block_index(unet_ldm_key(name, blocks))
        except KeyError as exc:
            raise KindError(f"block_lr: {exc.args[0]}") from None
        if index >= SDXL_UNET_BLOCKS:
            raise KindError(f"block_lr: {name} falls in block {index}, past the SDXL U-Net's {SDXL_UNET_BLOCKS}; "
                            "this U-Net is not shaped like SDXL's, clear block_lr")
        indices[name] = index
    return indices


def block_lr_param_groups(unet: torch.nn.Module, rates: list[float]) -> list[dict]:
    """One optimizer group per block with a rate above 0 (named unet_<block>); rate-0 blocks are frozen."""
    members: list[list[torch.nn.Parameter]] = [[] for _ in range(SDXL_UNET_BLOCKS)]
    params = dict(unet.named_parameters())
    for name, index in unet_block_indices(unet).items():
        members[index].append(params[name])
    groups = []
    for index, (rate, block) in enumerate(zip(rates, members)):
        if rate == 0:
            for p in block:
                p.requires_grad_(False)
        elif block:
            groups.append({"params": block, "lr": float(rate), "name": f"unet_{BLOCK_NAMES[index]}"})
    return groups
