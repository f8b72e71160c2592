"""sd-scripts' `block_lr` (sdxl_train.py): one learning rate per SDXL U-Net block, 23 comma-separated values.

The blocks are sd-scripts' (UNET_NUM_BLOCKS_FOR_BLOCK_LR = 23), in the original SGM naming: 0 = the time
and size embeddings, 1–9 = input_blocks.0–8, 10–12 = middle_block.0–2, 13–21 = output_blocks.0–8, 22 = out.
A rate of 0 leaves that block out of the optimizer (frozen). No torch here: the config rules use it.
"""
from __future__ import annotations

import math

SDXL_UNET_BLOCKS = 23
BLOCK_NAMES = ("embeddings", *(f"IN{i}" for i in range(9)), *(f"MID{i}" for i in range(3)),
               *(f"OUT{i}" for i in range(9)), "out")
FIELD = "block_lr"


def parse_block_lr(text) -> list[float] | None:
    """"1e-6,1e-6,…" (23 values) → the rates; "" → None. ValueError names the field and the fix."""
    text = str(text or "").strip()
    if not text:
        return None
    rates = []
    for part in (p.strip() for p in text.split(",")):
        try:
            rates.append(float(part))
        except ValueError:
            raise ValueError(f"{FIELD}: {part!r} is not a number; write {SDXL_UNET_BLOCKS} learning rates separated "
                             "by commas, e.g. 1e-6,1e-6,…") from None
    if len(rates) != SDXL_UNET_BLOCKS:
        raise ValueError(f"{FIELD}: {len(rates)} values given, the SDXL U-Net has {SDXL_UNET_BLOCKS} blocks "
                         "(embeddings, IN0-8, MID0-2, OUT0-8, out); give one rate for each")
    bad = [f"{BLOCK_NAMES[i]}={r:g}" for i, r in enumerate(rates) if not math.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"{FIELD}: {', '.join(bad)}: a learning rate is 0 (block frozen) or above")
    return rates


def block_lr_text(rates) -> str:
    """The rates as sd-scripts' string (what kohya_ss writes and `--block_lr` reads)."""
    return ",".join(format(float(r), "g") for r in rates)
