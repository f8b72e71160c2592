"""Chroma transformer keys: the original single-file layout (lodestones/Chroma, as sd-scripts' chroma_models
and ComfyUI read it) ↔ diffusers ``ChromaTransformer2DModel``.

Chroma is FLUX.1-schnell's double/single blocks without their modulation layers (``img_mod``, ``txt_mod``,
``modulation``, ``final_layer.adaLN_modulation``) and without ``time_in`` / ``vector_in`` / ``guidance_in``:
one approximator network, ``distilled_guidance_layer``, makes every block's shift/scale/gate. The block
keys are FLUX's (``flux_keys`` splits the fused ``qkv`` / ``linear1`` by the model's own widths, so the tiny
test models convert too — diffusers' single-file converter assumes width 3072).
"""
from __future__ import annotations

from trainer.models.flux_keys import _norm_renames, _renames, join_renamed, split_renamed, strip_prefix

MARKER = "distilled_guidance_layer.in_proj.weight"
FLUX_ONLY = ("_mod.lin", "modulation.lin", "time_in.", "vector_in.", "guidance_in.")


def _chroma_renames(cfg: dict) -> list[tuple[str, list[str]]]:
    out = [(src, dsts) for src, dsts in _renames(cfg) if not any(f in src for f in FLUX_ONLY)]
    out += [("distilled_guidance_layer.in_proj", ["distilled_guidance_layer.in_proj"]),
            ("distilled_guidance_layer.out_proj", ["distilled_guidance_layer.out_proj"])]
    for i in range(cfg["approximator_layers"]):
        b = f"distilled_guidance_layer.layers.{i}."
        out += [(b + "in_layer", [b + "linear_1"]), (b + "out_layer", [b + "linear_2"])]
    return out


def _chroma_norm_renames(cfg: dict) -> list[tuple[str, str]]:
    norms = "distilled_guidance_layer.norms"
    return _norm_renames(cfg) + [(f"{norms}.{i}.scale", f"{norms}.{i}.weight") for i in range(cfg["approximator_layers"])]


def module_map(cfg: dict) -> dict[str, list[str]]:
    """Original module path → the diffusers module paths it is fused from (kohya's LoRA names use the former)."""
    return dict(_chroma_renames(cfg))


def original_to_diffusers(state_dict: dict, cfg: dict) -> dict:
    sd = strip_prefix(state_dict)
    out = split_renamed(sd, cfg, _chroma_renames(cfg), _chroma_norm_renames(cfg))
    out.update({k: v for k, v in sd.items() if not k.endswith(("scale_weight", "scale_input"))})  # reported later
    return out


def diffusers_to_original(state_dict: dict, cfg: dict) -> dict:
    sd = dict(state_dict)
    out = join_renamed(sd, _chroma_renames(cfg), _chroma_norm_renames(cfg))
    if sd:
        raise KeyError(f"transformer parameters with no place in the Chroma file layout: {sorted(sd)[:5]}")
    return out


def config_from_original(state_dict: dict, template: dict) -> dict:
    """Block and approximator-layer counts from the keys, widths from the template whose widths match."""
    def count(prefix: str, at: int) -> int:
        return len({int(k.split(".")[at]) for k in state_dict if k.startswith(prefix)})

    return {**template, "num_layers": count("double_blocks.", 1), "num_single_layers": count("single_blocks.", 1),
            "approximator_layers": count("distilled_guidance_layer.layers.", 2),
            "approximator_hidden_dim": state_dict["distilled_guidance_layer.in_proj.weight"].shape[0],
            "approximator_num_channels": state_dict["distilled_guidance_layer.in_proj.weight"].shape[1]}


# the names every DiT family's key map offers (trainer/models/dit.py's "keys" seam)
to_diffusers, to_original = original_to_diffusers, diffusers_to_original
