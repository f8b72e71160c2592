"""kohya's SD3 / SD3.5 LoRA targets and names (sd-scripts ``networks/lora_sd3.py``).

* MMDiT: every Linear of each joint block's ``x_block`` and ``context_block`` (attention ``qkv``/``proj``,
  MMDiT-X ``attn2``, MLP ``fc1``/``fc2``, ``adaLN_modulation.1``), named by the SAI module path:
  ``lora_unet_joint_blocks_0_x_block_attn_qkv`` … Fused ``qkv`` layers and the last block's swapped
  modulation map onto the diffusers Linears through ``fused_lora.LinearGroup``.
* Text encoders: ``lora_te1_`` CLIP-L, ``lora_te2_`` CLIP-G, ``lora_te3_`` T5-XXL (only with train_t5xxl).
"""
from __future__ import annotations

from torch import nn

from trainer.models.sd3_keys import module_map

from .fused_lora import LinearGroup
from .naming import Target, kohya_name, te_targets
from .naming_flux import t5_targets

PREFIX_UNET = "lora_unet"


def _swapped_rows(n: int) -> list[int]:
    half = n // 2
    return [j + half if j < half else j - half for j in range(n)]


def transformer_targets(transformer: nn.Module) -> list[Target]:
    modules = dict(transformer.named_modules())
    targets = []
    for sai, (paths, swapped) in module_map(dict(transformer.config)).items():
        if not sai.startswith("joint_blocks."):
            continue
        members = [modules[p] for p in paths]
        if swapped:
            module = LinearGroup(members, rows=[_swapped_rows(members[0].out_features)])
        else:
            module = members[0] if len(members) == 1 else LinearGroup(members)
        targets.append(Target(kohya_name(PREFIX_UNET, sai), module, "unet", False, "+".join(paths)))
    return targets


def all_targets(transformer, text_encoders, include_conv_blocks: bool = True) -> list[Target]:
    targets: list[Target] = []
    for prefix, te in zip(("lora_te1", "lora_te2"), list(text_encoders or [])[:2]):
        targets += te_targets(te, prefix)
    if text_encoders and len(text_encoders) > 2:
        targets += t5_targets(text_encoders[2])
    if transformer is not None:
        targets += transformer_targets(transformer)
    return targets


def target_filter(cfg):
    t5 = bool(cfg.train_t5xxl)
    return lambda t: t5 if t.part == "te3" else True
