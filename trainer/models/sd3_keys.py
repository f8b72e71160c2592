"""SD3 / SD3.5 MMDiT keys: the original SAI single-file layout ↔ diffusers ``SD3Transformer2DModel``.

Our own map, both directions (diffusers only converts one way): ``joint_blocks.N.{x,context}_block``
(fused ``attn.qkv``, ``attn2`` on SD3.5 Medium's MMDiT-X layers, RMS ``ln_q``/``ln_k`` on 3.5) ↔
``transformer_blocks.N`` (``to_q/k/v``, ``add_{q,k,v}_proj``, ``attn2.*``). The last block's context half
is "pre-only" (attention input and modulation only), and its modulation and the final layer's hold
(shift, scale) where diffusers holds (scale, shift).
"""
from __future__ import annotations

import torch

from trainer.models.dit_keys import own_parts, strip_prefix


def _renames(cfg: dict) -> list[tuple[str, list[str], bool]]:
    """(SAI module, [diffusers modules], swapped halves) of every Linear / conv with weight and bias."""
    out = [("x_embedder.proj", ["pos_embed.proj"], False), ("context_embedder", ["context_embedder"], False),
           ("t_embedder.mlp.0", ["time_text_embed.timestep_embedder.linear_1"], False),
           ("t_embedder.mlp.2", ["time_text_embed.timestep_embedder.linear_2"], False),
           ("y_embedder.mlp.0", ["time_text_embed.text_embedder.linear_1"], False),
           ("y_embedder.mlp.2", ["time_text_embed.text_embedder.linear_2"], False),
           ("final_layer.linear", ["proj_out"], False), ("final_layer.adaLN_modulation.1", ["norm_out.linear"], True)]
    n = cfg["num_layers"]
    dual = set(cfg.get("dual_attention_layers") or ())
    for i in range(n):
        b, d, last = f"joint_blocks.{i}.", f"transformer_blocks.{i}.", i == n - 1
        out += [(b + "x_block.attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], False),
                (b + "x_block.attn.proj", [d + "attn.to_out.0"], False),
                (b + "x_block.mlp.fc1", [d + "ff.net.0.proj"], False), (b + "x_block.mlp.fc2", [d + "ff.net.2"], False),
                (b + "x_block.adaLN_modulation.1", [d + "norm1.linear"], False),
                (b + "context_block.attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"],
                 False),
                (b + "context_block.adaLN_modulation.1", [d + "norm1_context.linear"], last)]
        if not last:
            out += [(b + "context_block.attn.proj", [d + "attn.to_add_out"], False),
                    (b + "context_block.mlp.fc1", [d + "ff_context.net.0.proj"], False),
                    (b + "context_block.mlp.fc2", [d + "ff_context.net.2"], False)]
        if i in dual:
            out += [(b + "x_block.attn2.qkv", [d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"], False),
                    (b + "x_block.attn2.proj", [d + "attn2.to_out.0"], False)]
    return out


def _norm_renames(cfg: dict) -> list[tuple[str, str]]:
    if not cfg.get("qk_norm"):
        return []
    out = []
    dual = set(cfg.get("dual_attention_layers") or ())
    for i in range(cfg["num_layers"]):
        b, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        out += [(b + "x_block.attn.ln_q.weight", d + "attn.norm_q.weight"),
                (b + "x_block.attn.ln_k.weight", d + "attn.norm_k.weight"),
                (b + "context_block.attn.ln_q.weight", d + "attn.norm_added_q.weight"),
                (b + "context_block.attn.ln_k.weight", d + "attn.norm_added_k.weight")]
        if i in dual:
            out += [(b + "x_block.attn2.ln_q.weight", d + "attn2.norm_q.weight"),
                    (b + "x_block.attn2.ln_k.weight", d + "attn2.norm_k.weight")]
    return out


def module_map(cfg: dict) -> dict[str, tuple[list[str], bool]]:
    """SAI module path → (diffusers module paths, swapped halves): kohya's SD3 LoRA names use the SAI ones."""
    return {src: (dsts, swap) for src, dsts, swap in _renames(cfg)}


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, 0)
    return torch.cat([b, a], 0)


def sai_to_diffusers(state_dict: dict, cfg: dict) -> dict:
    sd = strip_prefix(state_dict)
    out = {}
    for src, dsts, swap in _renames(cfg):
        for suffix in ("weight", "bias"):
            key = f"{src}.{suffix}"
            if key not in sd:
                continue
            value = sd.pop(key)
            if swap:
                value = _swap(value)
            parts = own_parts(value, [value.shape[0] // len(dsts)] * len(dsts)) if len(dsts) > 1 else [value]
            out.update({f"{d}.{suffix}": p for d, p in zip(dsts, parts)})
    for src, dst in _norm_renames(cfg):
        if src in sd:
            out[dst] = sd.pop(src)
    if "pos_embed" in sd:
        out["pos_embed.pos_embed"] = sd.pop("pos_embed")
    out.update(sd)  # leftovers: reported by assign_weights as unexpected
    return out


def diffusers_to_sai(state_dict: dict, cfg: dict) -> dict:
    sd = dict(state_dict)
    out = {}
    for dst, srcs, swap in _renames(cfg):
        for suffix in ("weight", "bias"):
            keys = [f"{s}.{suffix}" for s in srcs]
            if all(k in sd for k in keys):
                value = torch.cat([sd.pop(k) for k in keys], 0)
                out[f"{dst}.{suffix}"] = _swap(value) if swap else value
    for dst, src in _norm_renames(cfg):
        if src in sd:
            out[dst] = sd.pop(src)
    if "pos_embed.pos_embed" in sd:
        out["pos_embed"] = sd.pop("pos_embed.pos_embed")
    if sd:
        raise KeyError(f"transformer parameters with no place in the SD3 file layout: {sorted(sd)[:5]}")
    return out


def config_from_sai(sd: dict, template: dict) -> dict:
    """Block count, MMDiT-X layers and qk-norm from the keys; widths from the matching template."""
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("joint_blocks.")}
    dual = sorted({int(k.split(".")[1]) for k in sd if k.startswith("joint_blocks.") and ".attn2." in k})
    return {**template, "num_layers": len(layers), "dual_attention_layers": dual,
            "qk_norm": "rms_norm" if any(".ln_q." in k for k in sd) else None}


# the names every DiT family's key map offers (trainer/models/dit.py's "keys" seam)
to_diffusers, to_original = sai_to_diffusers, diffusers_to_sai
