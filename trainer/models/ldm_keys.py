"""Diffusers -> original (CompVis / SGM) key layout, for saving single-file checkpoints.

Diffusers ships the forward direction (``single_file_utils.convert_ldm_*``) but no general reverse
converter, so this module builds the reverse key map from the model config (block counts, which
levels have attention), which makes it exact for SD1, SD2, SDXL and the tiny test models alike.
Only renames and reshapes; tensors are never copied except the OpenCLIP q/k/v concatenation.
"""

from __future__ import annotations

import torch

from trainer.families import UNET

UNET_PREFIX = UNET
VAE_PREFIX = "first_stage_model."
RESNET_RENAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_ATTN_RENAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def unet_block_map(config: dict) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, original prefix, is_resnet) for every U-Net block, from the config."""
    lpb = config["layers_per_block"]
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    levels = len(down_types)
    pairs: list[tuple[str, str, bool]] = []
    n = 1
    for i, kind in enumerate(down_types):
        for j in range(lpb):
            pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", True))
            if kind.startswith("CrossAttn"):
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", False))
            n += 1
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op", False))
            n += 1
    pairs += [("mid_block.resnets.0", "middle_block.0", True), ("mid_block.attentions.0", "middle_block.1", False),
              ("mid_block.resnets.1", "middle_block.2", True)]
    n = 0
    for i, kind in enumerate(up_types):
        attn = kind.startswith("CrossAttn")
        for j in range(lpb + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", True))
            if attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", False))
            if j == lpb and i < levels - 1:
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{n}.{2 if attn else 1}.conv", False))
            n += 1
    return pairs


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    blocks = unet_block_map(config)
    out = {}
    for key, value in state_dict.items():
        out[UNET_PREFIX + unet_ldm_key(key, blocks)] = value
    return out


def unet_ldm_key(key: str, blocks) -> str:
    """A diffusers U-Net parameter name in the original layout (without model.diffusion_model.)."""
    for src, dst in UNET_TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    for src, dst, is_resnet in blocks:
        if key.startswith(src + "."):
            rest = key[len(src):]
            if is_resnet:
                for a, b in RESNET_RENAMES:
                    if rest.startswith("." + a + "."):
                        rest = "." + b + rest[len(a) + 1:]
                        break
            return dst + rest
    raise KeyError(f"U-Net parameter {key!r} has no place in the original layout")


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state_dict.items():
        new = key.replace("conv_norm_out", "norm_out")
        for part in ("encoder.", "decoder."):
            if not new.startswith(part):
                continue
            rest = new[len(part):]
            if rest.startswith("down_blocks."):
                i, tail = rest[len("down_blocks."):].split(".", 1)
                tail = tail.replace("resnets.", "block.", 1).replace("downsamplers.0.", "downsample.", 1)
                rest = f"down.{i}.{tail}"
            elif rest.startswith("up_blocks."):
                i, tail = rest[len("up_blocks."):].split(".", 1)
                tail = tail.replace("resnets.", "block.", 1).replace("upsamplers.0.", "upsample.", 1)
                rest = f"up.{levels - 1 - int(i)}.{tail}"
            elif rest.startswith("mid_block.resnets."):
                k, tail = rest[len("mid_block.resnets."):].split(".", 1)
                rest = f"mid.block_{int(k) + 1}.{tail}"
            elif rest.startswith("mid_block.attentions.0."):
                tail = rest[len("mid_block.attentions.0."):]
                for a, b in VAE_ATTN_RENAMES:
                    if tail.startswith(a + "."):
                        tail = b + tail[len(a):]
                        break
                rest = "mid.attn_1." + tail
                if value.ndim == 2:  # attention projections are 1x1 convs in the original VAE
                    value = value.reshape(*value.shape, 1, 1)
            new = part + rest.replace(".conv_shortcut.", ".nin_shortcut.")
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel -> ``<prefix>text_model.*`` (SD1, SDXL text encoder 1)."""
    return {prefix + "text_model." + _strip_text_model(k): v for k, v in state_dict.items()
            if not k.endswith("position_ids") and not k.startswith("text_projection")}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str, num_layers_out: int | None = None
                     ) -> dict[str, torch.Tensor]:
    """transformers CLIP text model -> OpenCLIP ``<prefix>*`` keys (SD2, SDXL text encoder 2).

    ``num_layers_out`` > the model's layers pads with copies of the last layer: SD2's HF text encoder
    has 23 layers while the original OpenCLIP model (and every SD2 loader) expects 24 resblocks; the
    24th is never used by SD2 (it conditions on the penultimate layer), as in Kohya's saver.
    """
    sd = {_strip_text_model(k): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    hidden = sd["embeddings.token_embedding.weight"].shape[1]
    out = {
        prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
    }
    proj = sd.get("text_projection.weight")
    out[prefix + "text_projection"] = proj.T.contiguous() if proj is not None else torch.eye(hidden, dtype=out[prefix + "ln_final.weight"].dtype)
    out[prefix + "logit_scale"] = torch.tensor(4.6052, dtype=out[prefix + "ln_final.weight"].dtype)  # ln(100), as trained
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        out.update(_open_clip_layer(sd, f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."))
    for extra in range(len(layers), num_layers_out or 0):
        out.update(_open_clip_layer(sd, f"encoder.layers.{layers[-1]}.", f"{prefix}transformer.resblocks.{extra}."))
    return out


def _open_clip_layer(sd: dict, src: str, dst: str) -> dict:
    attn = src + "self_attn."
    out = {
        dst + "attn.in_proj_weight": torch.cat([sd[attn + f"{p}_proj.weight"] for p in "qkv"]),
        dst + "attn.in_proj_bias": torch.cat([sd[attn + f"{p}_proj.bias"] for p in "qkv"]),
    }
    for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
        for p in ("weight", "bias"):
            out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
    return out


def _strip_text_model(key: str) -> str:
    return key[len("text_model."):] if key.startswith("text_model.") else key
