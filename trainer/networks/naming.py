"""Which modules of a base model get a LoRA, and the kohya key name of each.

kohya's rules (sd-scripts `networks/lora.py`):
* U-Net: every Linear / Conv2d inside a `Transformer2DModel`; with LoCon (`conv_dim`) also inside
  `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (3×3 convs get conv_dim, Linear and 1×1 convs
  get network_dim).
* Text encoders: the Linear children of the CLIP attention and MLP blocks.
* Name = prefix + module path with `.` → `_`. SD1/SD2 use diffusers U-Net paths; SDXL uses the
  original SGM paths (`input_blocks_4_1_…`), which we derive from the U-Net's own config so the
  map holds for any SDXL-shaped U-Net, including the tiny test ones.
* Text-encoder names are always `…text_model_encoder_layers_N_…`, whatever the installed
  transformers calls the wrapper (CLIPTextModel lost its `text_model` attribute in 5.x).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from torch import nn

FAMILIES = ("sd1", "sd2", "sdxl")
# DiT families: their own naming module (trainer/models/dit.py names it) provides all_targets / target_filter
DIT_FAMILIES = ("flux", "sd3", "chroma")

UNET_TRANSFORMER_CLASSES = ("Transformer2DModel",)
UNET_CONV_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")

PREFIX_UNET = "lora_unet"
PREFIX_TE = "lora_te"  # SD1 / SD2
PREFIX_TE_SDXL = ("lora_te1", "lora_te2")

# diffusers resnet child name → SGM (ldm) child name, as in kohya's sdxl_original_unet
_SGM_RESNET_CHILD = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


@dataclass
class Target:
    """One module that can carry a LoRA."""

    lora_name: str  # kohya name without the tensor suffix, e.g. lora_unet_..._to_q
    module: nn.Module  # the nn.Linear / nn.Conv2d of the base model
    part: str  # "unet", "te" (SD1/2), "te1", "te2"
    is_conv_block: bool  # lives in a ResnetBlock2D / Down/Upsample2D (LoCon only)
    path: str  # module path inside its root model, for messages

    @property
    def is_conv3x3(self) -> bool:
        """True for the kxk (k>1) convs that take conv_dim instead of network_dim."""
        return isinstance(self.module, nn.Conv2d) and tuple(self.module.kernel_size) != (1, 1)

    @property
    def in_features(self) -> int:
        m = self.module
        return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features

    @property
    def out_features(self) -> int:
        m = self.module
        return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def check_family(family: str) -> str:
    if family not in FAMILIES + DIT_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES + DIT_FAMILIES)}, got {family!r}")
    return family


def resolve_base(unet_or_base, text_encoders=None, family: str | None = None):
    """(unet, [text encoders], family) from a BaseModel, a tiny-component dict or explicit parts."""
    obj = unet_or_base
    if hasattr(obj, "unet") and hasattr(obj, "text_encoders"):
        unet, tes, fam = obj.unet, list(obj.text_encoders), family or getattr(obj, "family", None)
    elif isinstance(obj, Mapping):
        unet = obj["unet"]
        tes = [obj[k] for k in ("text_encoder", "text_encoder_2") if obj.get(k) is not None]
        fam = family or obj.get("family")
    else:
        unet, tes, fam = obj, list(text_encoders or []), family
    if fam is None:
        raise ValueError("family is required (sd1, sd2 or sdxl) when it cannot be read from the base model")
    return unet, tes, check_family(fam)


def te_prefixes(family: str, count: int) -> list[str]:
    """Key prefix of each text encoder, in order."""
    if check_family(family) == "sdxl":
        if count != 2:
            raise ValueError(f"an SDXL base has 2 text encoders, got {count}")
        return list(PREFIX_TE_SDXL)
    if count != 1:
        raise ValueError(f"an {family} base has 1 text encoder, got {count}")
    return [PREFIX_TE]


def _is_lora_child(module: nn.Module) -> bool:
    # class-name test as kohya does, so subclasses such as LoRACompatibleLinear are excluded
    # only when they are not Linear/Conv2d by name.
    return type(module).__name__ in ("Linear", "Conv2d")


def _is_te_block(module: nn.Module) -> bool:
    name = type(module).__name__
    return name == "CLIPMLP" or (name.startswith("CLIP") and name.endswith("Attention"))


def canonical_te_path(path: str) -> str:
    """`encoder.layers.0.self_attn.q_proj` or `text_model.encoder…` → `text_model.encoder…`."""
    if path.startswith("text_model."):
        path = path[len("text_model."):]
    return "text_model." + path


def layers_per_block_list(config, n_blocks: int) -> list[int]:
    lpb = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
    if isinstance(lpb, int):
        return [lpb] * n_blocks
    return list(lpb)


def _cfg(config, key):
    return config[key] if isinstance(config, dict) else getattr(config, key)


def sgm_block_map(config) -> dict[str, str]:
    """Map diffusers U-Net block paths to SGM paths from the U-Net config.

    e.g. for SDXL: `down_blocks.1.attentions.0` → `input_blocks.4.1`,
    `down_blocks.0.downsamplers.0` → `input_blocks.3.0`, `mid_block.attentions.0` →
    `middle_block.1`, `up_blocks.0.upsamplers.0` → `output_blocks.2.2`.
    """
    down_types = list(_cfg(config, "down_block_types"))
    up_types = list(_cfg(config, "up_block_types"))
    down_layers = layers_per_block_list(config, len(down_types))
    up_layers = list(reversed(down_layers))  # diffusers builds up blocks from the reversed list
    out: dict[str, str] = {}

    idx = 1  # input_blocks.0 is conv_in
    for b, kind in enumerate(down_types):
        for i in range(down_layers[b]):
            out[f"down_blocks.{b}.resnets.{i}"] = f"input_blocks.{idx}.0"
            if "CrossAttn" in kind:
                out[f"down_blocks.{b}.attentions.{i}"] = f"input_blocks.{idx}.1"
            idx += 1
        if b < len(down_types) - 1:
            out[f"down_blocks.{b}.downsamplers.0"] = f"input_blocks.{idx}.0"
            idx += 1

    out["mid_block.resnets.0"] = "middle_block.0"
    out["mid_block.attentions.0"] = "middle_block.1"
    out["mid_block.resnets.1"] = "middle_block.2"

    idx = 0
    for b, kind in enumerate(up_types):
        n = up_layers[b] + 1
        has_attn = "CrossAttn" in kind
        for i in range(n):
            out[f"up_blocks.{b}.resnets.{i}"] = f"output_blocks.{idx}.0"
            if has_attn:
                out[f"up_blocks.{b}.attentions.{i}"] = f"output_blocks.{idx}.1"
            if i == n - 1 and b < len(up_types) - 1:
                out[f"up_blocks.{b}.upsamplers.0"] = f"output_blocks.{idx}.{2 if has_attn else 1}"
            idx += 1
    return out


def _sgm_child(block_path: str, child: str) -> str:
    if ".resnets." in block_path:
        return _SGM_RESNET_CHILD.get(child, child)
    if ".downsamplers." in block_path:
        return "op" if child == "conv" else child
    return child


def kohya_name(prefix: str, path: str) -> str:
    """kohya's LoRA module name: ``lora_unet`` + ``down_blocks.0.proj_in`` → ``lora_unet_down_blocks_0_proj_in``."""
    return (prefix + "." + path).replace(".", "_")


def unet_targets(unet: nn.Module, family: str, include_conv_blocks: bool) -> list[Target]:
    """All U-Net modules kohya would wrap, with their kohya names."""
    classes = UNET_TRANSFORMER_CLASSES + (UNET_CONV_CLASSES if include_conv_blocks else ())
    block_map = sgm_block_map(unet.config) if check_family(family) == "sdxl" else None
    targets = []
    for block_path, block in unet.named_modules():
        if type(block).__name__ not in classes:
            continue
        is_conv_block = type(block).__name__ in UNET_CONV_CLASSES
        named_path = block_path
        if block_map is not None:
            if block_path not in block_map:
                raise ValueError(f"U-Net block {block_path} has no SGM name; is this an SDXL U-Net?")
            named_path = block_map[block_path]
        for child_path, child in block.named_modules():
            if not child_path or not _is_lora_child(child):
                continue
            child_name = _sgm_child(block_path, child_path) if block_map is not None else child_path
            targets.append(
                Target(
                    lora_name=kohya_name(PREFIX_UNET, f"{named_path}.{child_name}"),
                    module=child,
                    part="unet",
                    is_conv_block=is_conv_block,
                    path=f"{block_path}.{child_path}",
                )
            )
    return targets


def te_targets(text_encoder: nn.Module, prefix: str) -> list[Target]:
    """Attention/MLP projections of one CLIP text encoder."""
    part = prefix[len("lora_"):]
    targets = []
    for block_path, block in text_encoder.named_modules():
        if not _is_te_block(block):
            continue
        for child_path, child in block.named_children():
            if type(child).__name__ != "Linear":
                continue
            path = canonical_te_path(f"{block_path}.{child_path}")
            targets.append(Target(kohya_name(prefix, path), child, part, False, path))
    return targets


def all_targets(
    unet: nn.Module | None,
    text_encoders: Sequence[nn.Module],
    family: str,
    include_conv_blocks: bool = True,
) -> list[Target]:
    """Every module a kohya LoRA/LoCon file for this base may name (text encoders first, like kohya)."""
    naming = dit_naming(family)
    if naming is not None:
        return naming.all_targets(unet, text_encoders, include_conv_blocks)
    targets: list[Target] = []
    if text_encoders:
        for prefix, te in zip(te_prefixes(family, len(text_encoders)), text_encoders):
            targets += te_targets(te, prefix)
    if unet is not None:
        targets += unet_targets(unet, family, include_conv_blocks)
    return targets


def dit_naming(family: str):
    """The naming module of a DiT family, None for the SD families."""
    from trainer.models.dit import dit_family

    fam = dit_family(family)
    return None if fam is None else fam.module("naming")


def target_filter_for(family: str, cfg):
    """Which catalog targets a new network trains under the config's family options (None: all)."""
    naming = dit_naming(family)
    return None if naming is None or not hasattr(naming, "target_filter") else naming.target_filter(cfg)


_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


def split_key(key: str) -> tuple[str, str]:
    """`lora_unet_x.lora_down.weight` → (`lora_unet_x`, `lora_down.weight`)."""
    name, _, suffix = key.partition(".")
    return name, suffix


def is_sgm_unet_name(lora_name: str) -> bool:
    return bool(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", lora_name))


def is_diffusers_unet_name(lora_name: str) -> bool:
    return bool(re.match(r"lora_unet_(down_blocks|mid_block|up_blocks)_", lora_name))


def names_by_part(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        part = n.split("_")[1] if n.startswith(("lora_", "oft_")) else "other"
        counts[part] = counts.get(part, 0) + 1
    return counts
