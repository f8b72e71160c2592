"""Optimizer parameter groups of a network, as sd-scripts makes them (shared by every network type).

* text encoder(s) and U-Net at their own learning rates (`None` → the default rate; 0 → not trained,
  the modules are frozen); `text_encoder_lr` may be a list, one per text encoder (SDXL);
* LoRA+ (`loraplus_lr_ratio`, `loraplus_unet_lr_ratio`, `loraplus_text_encoder_lr_ratio`): the "up"
  half of each module (`lora_up`, LoHa `hada_w*_a`, ... as `is_plus` decides) at lr × ratio;
* block-wise U-Net rates (`down_lr_weight` …): one group per block at lr × the block's weight.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

from torch import nn

logger = logging.getLogger(__name__)


def lora_up_is_plus(param_name: str) -> bool:
    """sd-scripts and LyCORIS put every parameter whose name holds `lora_up` in the LoRA+ group."""
    return "lora_up" in param_name


def network_param_groups(
    modules: Sequence[nn.Module],
    parts: Mapping[str, str],
    text_encoder_lr,
    unet_lr,
    default_lr,
    *,
    loraplus_lr_ratio: float | None = None,
    loraplus_unet_lr_ratio: float | None = None,
    loraplus_text_encoder_lr_ratio: float | None = None,
    is_plus: Callable[[str], bool] = lora_up_is_plus,
    block_of: Callable[[str], int] | None = None,
    block_lr: Sequence[float] | None = None,
) -> list[dict]:
    te_parts = sorted({p for p in parts.values() if p != "unet"})
    if isinstance(text_encoder_lr, (list, tuple)):
        spec = [(f"textencoder{i + 1}" if len(te_parts) > 1 else "textencoder", [p],
                 text_encoder_lr[min(i, len(text_encoder_lr) - 1)] if text_encoder_lr else None)
                for i, p in enumerate(te_parts)]
    else:
        spec = [("textencoder", te_parts, text_encoder_lr)] if te_parts else []
    spec.append(("unet", ["unet"], unet_lr))

    groups: list[dict] = []
    for name, group_parts, lr in spec:
        lr = default_lr if lr is None else lr
        members = [m for m in modules if parts[m.lora_name] in group_parts]
        if not members:
            continue
        if not lr:  # 0 or None: not trained
            for m in members:
                m.requires_grad_(False)
            logger.info("network %s modules frozen (learning rate %s)", name, lr)
            continue
        for m in members:
            m.requires_grad_(True)
        ratio = (loraplus_unet_lr_ratio if name == "unet" else loraplus_text_encoder_lr_ratio) or loraplus_lr_ratio
        if name == "unet" and block_lr is not None and block_of is not None:
            by_block: dict[int, list[nn.Module]] = {}
            for m in members:
                by_block.setdefault(block_of(m.lora_name), []).append(m)
            for idx in sorted(by_block):
                weight = block_lr[idx] if 0 <= idx < len(block_lr) else 1.0
                if weight == 0:
                    for m in by_block[idx]:
                        m.requires_grad_(False)
                    continue
                groups += _split_plus(f"unet block {idx}", by_block[idx], lr * weight, ratio, is_plus)
        else:
            groups += _split_plus(name, members, lr, ratio, is_plus)
    return groups


def _split_plus(name, members, lr, ratio, is_plus) -> list[dict]:
    params = [(n, p) for m in members for n, p in m.named_parameters() if p.requires_grad]
    if not ratio:
        return [{"name": name, "lr": lr, "params": [p for _, p in params]}] if params else []
    normal = [p for n, p in params if not is_plus(n)]
    plus = [p for n, p in params if is_plus(n)]
    out = []
    if normal:
        out.append({"name": name, "lr": lr, "params": normal})
    if plus:
        out.append({"name": f"{name} plus", "lr": lr * ratio, "params": plus})
    return out
