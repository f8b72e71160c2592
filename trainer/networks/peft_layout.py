"""A trained network in the diffusers / PEFT layout (``save_lora_format = diffusers``).

Keys: ``transformer.<module path>.lora_A.weight`` / ``lora_B.weight`` (``unet.`` for U-Nets) and
``text_encoder[_2|_3].<module path>…`` — what ``pipeline.load_lora_weights`` reads for every family
(diffusers' SD3 loader reads no kohya keys at all). No alpha keys: the kohya scale alpha/rank is baked
into ``lora_A``, so PEFT's default (lora_alpha = r) gives the same function. A fused kohya module (FLUX
``qkv``, ``linear1``) becomes one entry per diffusers Linear: the shared down, the up's rows for it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.atomic import atomic_path

from .fused_lora import LinearGroup

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")


def peft_state_dict(network, base) -> dict[str, torch.Tensor]:
    roots = [("transformer" if type(base.unet).__name__ != "UNet2DConditionModel" else "unet", base.unet)]
    roots += list(zip(TEXT_ENCODER_NAMES, base.text_encoders))
    where = {}
    for prefix, root in roots:
        for path, module in root.named_modules():
            where[id(module)] = f"{prefix}.{path}"
    targets = {t.lora_name: t for t in network.catalog}
    out: dict[str, torch.Tensor] = {}
    for lora in network.loras:
        module = targets[lora.lora_name].module
        down = lora.lora_down.weight.detach().float().cpu() * lora.scale
        up = lora.lora_up.weight.detach().float().cpu()
        if down.dim() != 2:
            raise ValueError(f"{lora.lora_name}: the diffusers layout is written for Linear LoRA modules only")
        if isinstance(module, LinearGroup):
            parts = [(m, up[rows]) for m, rows in zip(module.members, module.rows)]
        else:
            parts = [(module, up)]
        for member, part_up in parts:
            key = where[id(member)]
            out[f"{key}.lora_A.weight"] = down.clone()  # one copy per Linear: safetensors stores no shared tensors
            out[f"{key}.lora_B.weight"] = part_up.contiguous()
    return out


def save_peft_file(path: Path, network, base, dtype: torch.dtype | None, metadata: dict) -> Path:
    import safetensors.torch

    tensors = {k: (v.to(dtype) if dtype is not None else v) for k, v in peft_state_dict(network, base).items()}
    meta = {k: str(v) for k, v in (metadata or {}).items() if k.startswith(("ss_", "modelspec."))}
    meta["ss_lora_format"] = "diffusers"
    with atomic_path(Path(path)) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    return Path(path)
