"""The base-model families and how their original-layout (CompVis/SGM, BFL, SAI) keys tell them apart.

Torch-free, so the GUI can show the detected family from a safetensors header alone; the loader
(trainer/models/detect.py) adds what needs tensor shapes (inpainting, refiner, U-Net-only files).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable, Mapping

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "FLUX.1", "sd3": "SD3.5", "chroma": "Chroma"}
# which families an option applies to (opt(families=...)): a new family joins the group it behaves like
SD_FAMILIES = ("sd1", "sd2", "sdxl")     # U-Net, DDPM noise schedule, CLIP text encoders
FLUX_FAMILIES = ("flux", "chroma")       # FLUX.1-style transformer (timestep_sampling, AE); Chroma is FLUX-derived
SD3_FAMILIES = ("sd3",)                  # SD3-style MMDiT (CLIP-L + CLIP-G + T5)
DIT_FAMILIES = FLUX_FAMILIES + SD3_FAMILIES  # rectified flow with T5-XXL
# Kohya_ss's checkboxes that force a family, in the order they win when several are ticked
FAMILY_FLAGS = (("flux1_checkbox", "flux"), ("sd3_checkbox", "sd3"), ("sdxl", "sdxl"), ("v2", "sd2"))
# DiT families: a key only their transformer has, bare (BFL/SAI files) or under UNET (ComfyUI checkpoints)
# (first match wins: Chroma's files also have FLUX.1's double blocks, so its own marker is tried first)
DIT_MARKERS = {"chroma": "distilled_guidance_layer.in_proj.weight", "flux": "double_blocks.0.img_attn.qkv.weight",
               "sd3": "joint_blocks.0.x_block.attn.qkv.weight"}
# DiT families of a diffusers folder: transformer/config.json's _class_name (trainer/models/dit.py records the same)
DIT_CLASSES = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3", "ChromaTransformer2DModel": "chroma"}

UNET = "model.diffusion_model."
SDXL_TE2 = "conditioner.embedders.1.model."  # OpenCLIP bigG
SD2_TE = "cond_stage_model.model."           # OpenCLIP ViT-H
SD1_TE = "cond_stage_model.transformer."     # CLIP ViT-L
SDXL_ADM = UNET + "label_emb.0.0.weight"     # SDXL's size/pooled-text embedding


def chosen_family(values: Mapping, detected: str | None) -> str | None:
    """The family a config trains: a ticked Kohya_ss checkbox forces it, else the one detected from the weights."""
    for flag, family in FAMILY_FLAGS:
        if values.get(flag):
            return family
    return detected


def family_from_keys(keys: Iterable[str]) -> str | None:
    """flux from its transformer keys; sdxl / sd2 / sd1 from the text-encoder (or SDXL label-embedding) keys;
    None when they don't tell."""
    keys = list(keys)
    for family, marker in DIT_MARKERS.items():
        if marker in keys or UNET + marker in keys:
            return family
    if SDXL_ADM in keys or any(k.startswith(SDXL_TE2) for k in keys):
        return "sdxl"
    if any(k.startswith(SD2_TE) for k in keys):
        return "sd2"
    if any(k.startswith(SD1_TE) for k in keys):
        return "sd1"
    return None


# a diffusers folder's model_index.json _class_name, where it names the family
PIPELINE_FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3", "ChromaPipeline": "chroma",
                     "StableDiffusionXLPipeline": "sdxl"}


def safetensors_header(path: Path) -> dict:
    """A .safetensors file's JSON header (names, dtypes, shapes; no tensor read); {} for an absurd length."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100_000_000:
            return {}
        return json.loads(fh.read(length))


def family_of_diffusers_folder(folder: Path) -> str | None:
    try:
        pipeline = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        pipeline = None
    if pipeline in PIPELINE_FAMILIES:
        return PIPELINE_FAMILIES[pipeline]
    transformer = folder / "transformer" / "config.json"
    if transformer.is_file():  # a DiT family (FLUX.1, SD3, Chroma …)
        try:
            return DIT_CLASSES.get(json.loads(transformer.read_text()).get("_class_name"))
        except ValueError:
            return None
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    cfg = folder / "text_encoder" / "config.json"
    if cfg.is_file():
        try:
            hidden = json.loads(cfg.read_text()).get("hidden_size")
        except ValueError:
            return None
        return "sd2" if hidden == 1024 else "sd1"
    return None


def local_family(value: str | Path) -> str | None:
    """The family of a local .safetensors file or diffusers folder from its header / JSON alone (None for
    anything else: a .ckpt, a hub id, a missing or unreadable path)."""
    path = Path(str(value or "").strip()).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".safetensors":
            return family_from_keys(k for k in safetensors_header(path) if k != "__metadata__")
        if path.is_dir():
            return family_of_diffusers_folder(path)
    except (OSError, ValueError, struct.error):
        return None
    return None
