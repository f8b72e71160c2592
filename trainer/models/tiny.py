"""Tiny, seeded, random-weight SD1 / SD2(v) / SDXL models for tests and the demo.

The architectures live in ``configs/models/tiny-<family>/`` as ordinary diffusers config folders
(model_index.json, unet/vae/text_encoder configs, scheduler config, CLIP tokenizer files with a small
generated BPE vocabulary).  They keep the real block structure (SD1/SD2: 4 levels, 12 input and 12
output blocks, attention on levels 0-2; SD2 linear projections and per-level head counts; SDXL:
3 levels, no attention on level 0, ``transformer_layers_per_block``, two text encoders incl.
``CLIPTextModelWithProjection``, ``text_time`` conditioning) with widths of 16-64 channels.

Because the tiny architectures are registered config folders exactly like SD1.5/SD2.1/SDXL, the
loader finds their configs by matching tensor shapes — tests go through the same single-file and
diffusers-folder code paths as real checkpoints, and diffusers' ``from_single_file(config=...)``
works on them too.

    components = build_tiny_components("sdxl", seed=0)
    path = write_tiny_model("sd2", tmp / "tiny-sd2.safetensors", layout="single_file")
    folder = write_tiny_model("sd1", tmp / "tiny-sd1", layout="diffusers")
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.models.registry import FAMILIES, get_architecture

TINY_ARCHITECTURES = {"sd1": "tiny-sd1", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}
LAYOUTS = ("single_file", "diffusers")


def tiny_config_dir(family: str) -> Path:
    """The diffusers config folder of the tiny model of ``family`` (usable as ``config=``)."""
    return get_architecture(_tiny_name(family)).path


def build_tiny_components(family: str, seed: int = 0) -> dict:
    """Diffusers/transformers modules with seeded random weights.

    Keys: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (+ ``text_encoder_2``,
    ``tokenizer_2`` for SDXL).  The same ``(family, seed)`` always gives the same weights.
    """
    from trainer.models.components import build_components_from_config

    arch = get_architecture(_tiny_name(family))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = build_components_from_config(arch)
    for name, module in components.items():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return components


def write_tiny_model(family: str, out: Path, layout: str = "single_file", seed: int = 0) -> Path:
    """Write a tiny model in a real layout and return its path.

    ``layout="single_file"``: ``out`` is the file to write, ``.safetensors`` (original CompVis/SGM
    keys, with SAI modelspec metadata that records v-prediction for SD2) or ``.ckpt`` (a torch pickle
    ``{"state_dict": ...}`` of plain tensors).  ``layout="diffusers"``: ``out`` is the folder
    (``save_pretrained`` of every part + ``model_index.json``, tokenizer files included).
    Refuses to overwrite an existing ``out``.
    """
    from trainer.models.saving import save_diffusers, save_single_file

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another path (tiny models never overwrite files)")
    components = build_tiny_components(family, seed)
    v_pred = get_architecture(_tiny_name(family)).prediction_type == "v_prediction"
    if layout == "single_file":
        return save_single_file(components, out, dtype=torch.float32, family=family, v_prediction=v_pred,
                                title=f"tiny-{family} (seed {seed})")
    return save_diffusers(components, out, family=family, v_prediction=v_pred)


def _tiny_name(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return TINY_ARCHITECTURES[family]
