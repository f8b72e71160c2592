"""FLUX.1 transformer keys: the original BFL single-file layout ↔ diffusers ``FluxTransformer2DModel``.

Our own map (diffusers' single-file converter assumes the full-size widths, 3072, so it cannot load
the tiny test models). Fused BFL tensors are split by the model's own widths:

* double block ``img_attn.qkv`` → ``attn.to_q/to_k/to_v``, ``txt_attn.qkv`` → ``attn.add_{q,k,v}_proj``
* single block ``linear1`` → ``attn.to_q/to_k/to_v`` + ``proj_mlp``
* ``final_layer.adaLN_modulation.1`` holds (shift, scale); diffusers' ``norm_out.linear`` (scale, shift).
"""
from __future__ import annotations

import torch

from trainer.models.dit_keys import own_parts, strip_prefix


def _renames(cfg: dict) -> list[tuple[str, list[str]]]:
    """(BFL module path, [diffusers module paths]) of every weight-carrying module."""
    out = [("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
           ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
           ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"]),
           ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"]),
           ("txt_in", ["context_embedder"]), ("img_in", ["x_embedder"]),
           ("final_layer.linear", ["proj_out"])]
    if cfg.get("guidance_embeds"):
        out += [("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
                ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"])]
    for i in range(cfg["num_layers"]):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out += [(b + "img_mod.lin", [d + "norm1.linear"]), (b + "txt_mod.lin", [d + "norm1_context.linear"]),
                (b + "img_attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]),
                (b + "txt_attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]),
                (b + "img_attn.proj", [d + "attn.to_out.0"]), (b + "txt_attn.proj", [d + "attn.to_add_out"]),
                (b + "img_mlp.0", [d + "ff.net.0.proj"]), (b + "img_mlp.2", [d + "ff.net.2"]),
                (b + "txt_mlp.0", [d + "ff_context.net.0.proj"]), (b + "txt_mlp.2", [d + "ff_context.net.2"])]
    for i in range(cfg["num_single_layers"]):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out += [(b + "linear1", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"]),
                (b + "linear2", [d + "proj_out"]), (b + "modulation.lin", [d + "norm.linear"])]
    return out


def _norm_renames(cfg: dict) -> list[tuple[str, str]]:
    """RMS-norm scales (single tensors, no bias)."""
    out = []
    for i in range(cfg["num_layers"]):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out += [(b + "img_attn.norm.query_norm.scale", d + "attn.norm_q.weight"),
                (b + "img_attn.norm.key_norm.scale", d + "attn.norm_k.weight"),
                (b + "txt_attn.norm.query_norm.scale", d + "attn.norm_added_q.weight"),
                (b + "txt_attn.norm.key_norm.scale", d + "attn.norm_added_k.weight")]
    for i in range(cfg["num_single_layers"]):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out += [(b + "norm.query_norm.scale", d + "attn.norm_q.weight"),
                (b + "norm.key_norm.scale", d + "attn.norm_k.weight")]
    return out


def split_sizes(cfg: dict, n_parts: int) -> list[int]:
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return [inner] * 3 + ([] if n_parts == 3 else [int(inner * cfg.get("mlp_ratio", 4.0))])


def module_map(cfg: dict) -> dict[str, list[str]]:
    """BFL module path → the diffusers module paths it is fused from (kohya LoRA names use the BFL ones)."""
    return dict(_renames(cfg))


def bfl_to_diffusers(state_dict: dict, cfg: dict) -> dict:
    sd = strip_prefix(state_dict)
    out = split_renamed(sd, cfg, _renames(cfg), _norm_renames(cfg))
    for suffix in ("weight", "bias"):
        key = f"final_layer.adaLN_modulation.1.{suffix}"
        if key in sd:
            shift, scale = sd.pop(key).chunk(2, 0)
            out[f"norm_out.linear.{suffix}"] = torch.cat([scale, shift], 0)
    # leftovers (e.g. scaled-fp8 bookkeeping tensors) are reported by assign_weights as unexpected
    out.update({k: v for k, v in sd.items() if not k.endswith(("scale_weight", "scale_input"))})
    return out


def split_renamed(sd: dict, cfg: dict, renames, norm_renames) -> dict:
    """Pop the renamed (and split, where fused) tensors of ``sd`` into a new diffusers-keyed dict."""
    out = {}
    for src, dsts in renames:
        for suffix in ("weight", "bias"):
            key = f"{src}.{suffix}"
            if key not in sd:
                continue
            fused = sd.pop(key)
            parts = own_parts(fused, split_sizes(cfg, len(dsts))) if len(dsts) > 1 else [fused]
            out.update({f"{d}.{suffix}": p for d, p in zip(dsts, parts)})
    for src, dst in norm_renames:
        if src in sd:
            out[dst] = sd.pop(src)
    return out


def join_renamed(sd: dict, renames, norm_renames) -> dict:
    """The inverse of split_renamed: pop diffusers tensors of ``sd`` into original (fused) keys."""
    out = {}
    for dst, srcs in renames:
        for suffix in ("weight", "bias"):
            keys = [f"{s}.{suffix}" for s in srcs]
            if all(k in sd for k in keys):
                out[f"{dst}.{suffix}"] = torch.cat([sd.pop(k) for k in keys], 0)
    for dst, src in norm_renames:
        if src in sd:
            out[dst] = sd.pop(src)
    return out


def diffusers_to_bfl(state_dict: dict, cfg: dict) -> dict:
    sd = dict(state_dict)
    out = join_renamed(sd, _renames(cfg), _norm_renames(cfg))
    for suffix in ("weight", "bias"):
        key = f"norm_out.linear.{suffix}"
        if key in sd:
            scale, shift = sd.pop(key).chunk(2, 0)
            out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale], 0)
    if sd:
        raise KeyError(f"transformer parameters with no place in the FLUX.1 file layout: {sorted(sd)[:5]}")
    return out


def config_from_bfl(state_dict: dict, template: dict) -> dict:
    """The transformer config of a BFL state dict: block counts and guidance from its keys, widths from the
    template whose hidden size matches."""
    sd = state_dict
    double = {int(k.split(".")[1]) for k in sd if k.startswith("double_blocks.")}
    single = {int(k.split(".")[1]) for k in sd if k.startswith("single_blocks.")}
    return {**template, "num_layers": len(double), "num_single_layers": len(single),
            "guidance_embeds": any(k.startswith("guidance_in.") for k in sd)}


# the names every DiT family's key map offers (trainer/models/dit.py's "keys" seam)
to_diffusers, to_original = bfl_to_diffusers, diffusers_to_bfl
