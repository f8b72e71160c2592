"""kohya's FLUX.1 LoRA targets and names (sd-scripts ``networks/lora_flux.py``).

* Transformer: every Linear in the double-stream and single-stream blocks, named by the original BFL
  module path: ``lora_unet_double_blocks_0_img_attn_qkv``, ``…_img_attn_proj``, ``…_img_mlp_0/2``,
  ``…_img_mod_lin`` (and ``txt_``), ``lora_unet_single_blocks_0_linear1``, ``…_linear2``,
  ``…_modulation_lin``. Fused BFL layers (``qkv``, ``linear1``) map to several diffusers Linears
  (``fused_lora.LinearGroup``), so the file has kohya's shapes.
* Text encoders: CLIP-L as ``lora_te1_text_model_encoder_layers_N_…`` (attention + MLP); T5-XXL as
  ``lora_te3_encoder_block_N_layer_M_SelfAttention_q`` … (attention + gated MLP), only with train_t5xxl.
"""
from __future__ import annotations

from torch import nn

from trainer.models.flux_keys import module_map

from .fused_lora import LinearGroup
from .naming import Target, kohya_name, te_targets

PREFIX_UNET = "lora_unet"
PREFIX_CLIP = "lora_te1"
PREFIX_T5 = "lora_te3"
T5_BLOCKS = ("T5Attention", "T5DenseGatedActDense", "T5DenseActDense")
TE_PREFIXES = {"te1": PREFIX_CLIP, "te3": PREFIX_T5}


def transformer_targets(transformer: nn.Module, mapping: dict[str, list[str]] | None = None) -> list[Target]:
    """Block Linears named by ``mapping`` (original module path → diffusers paths; default FLUX.1's)."""
    modules = dict(transformer.named_modules())
    targets = []
    for bfl, paths in (mapping or module_map(dict(transformer.config))).items():
        if not bfl.startswith(("double_blocks.", "single_blocks.")):
            continue
        members = [modules[p] for p in paths]
        module = members[0] if len(members) == 1 else LinearGroup(members)
        targets.append(Target(kohya_name(PREFIX_UNET, bfl), module, "unet", False, "+".join(paths)))
    return targets


def t5_targets(t5: nn.Module) -> list[Target]:
    targets = []
    for block_path, block in t5.named_modules():
        if type(block).__name__ not in T5_BLOCKS:
            continue
        for child_path, child in block.named_children():
            if type(child).__name__ == "Linear":
                path = f"{block_path}.{child_path}"
                targets.append(Target(kohya_name(PREFIX_T5, path), child, "te3", False, path))
    return targets


def all_targets(transformer, text_encoders, include_conv_blocks: bool = True) -> list[Target]:
    targets: list[Target] = []
    if text_encoders:
        targets += te_targets(text_encoders[0], PREFIX_CLIP)
        if len(text_encoders) > 1:
            targets += t5_targets(text_encoders[1])
    if transformer is not None:
        targets += transformer_targets(transformer)
    return targets


def target_filter(cfg):
    """Which catalog targets a new network trains: train_blocks, and T5 only with train_t5xxl."""
    blocks = cfg.train_blocks
    t5 = bool(cfg.train_t5xxl)

    def keep(t: Target) -> bool:
        if t.part == "te3":
            return t5
        if t.part == "unet" and blocks != "all":
            return t.lora_name.startswith(f"{PREFIX_UNET}_{blocks}_blocks_")
        return True

    return keep
