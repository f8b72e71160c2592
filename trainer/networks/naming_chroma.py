"""kohya's Chroma LoRA targets and names: sd-scripts trains Chroma with ``networks.lora_flux`` (the same
``DoubleStreamBlock`` / ``SingleStreamBlock`` targets as FLUX.1), so the names are FLUX's BFL module paths —
``lora_unet_double_blocks_0_img_attn_qkv``, ``…_img_attn_proj``, ``…_img_mlp_0/2`` (and ``txt_``),
``lora_unet_single_blocks_0_linear1``, ``…_linear2`` — without the modulation layers Chroma does not have.
T5-XXL (the only text encoder) is ``lora_te3_…`` as in a FLUX file, with ``train_t5xxl``."""
from __future__ import annotations

from trainer.models.chroma_keys import module_map

from .naming import Target
from .naming_flux import t5_targets, target_filter, transformer_targets

__all__ = ["all_targets", "target_filter"]


def all_targets(transformer, text_encoders, include_conv_blocks: bool = True) -> list[Target]:
    targets: list[Target] = []
    if text_encoders:
        targets += t5_targets(text_encoders[0])
    if transformer is not None:
        targets += transformer_targets(transformer, module_map(dict(transformer.config)))
    return targets
