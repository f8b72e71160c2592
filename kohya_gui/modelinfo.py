"""Base-model listing and family detection without torch (reads safetensors headers / diffusers JSON)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from trainer.config import looks_like_hub_id
from trainer.families import DIT_CLASSES, FAMILY_NAMES, family_from_keys

HUB_MODELS = [
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-xl-base-1.0",
]
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def list_models(models_dir: Path, sub: str = "checkpoints") -> list[str]:
    """Checkpoint files and diffusers folders in models/<sub>/, as absolute paths."""
    folder = Path(models_dir) / sub
    if not folder.is_dir():
        return []
    found = []
    for item in sorted(folder.iterdir()):
        if item.name.startswith("."):
            continue
        if item.is_file() and item.suffix.lower() in CHECKPOINT_SUFFIXES:
            found.append(str(item))
        elif item.is_dir() and (item / "model_index.json").is_file():
            found.append(str(item))
    return found


def safetensors_header(path: Path) -> dict:
    """A .safetensors file's JSON header (names, dtypes, shapes; no tensor read); {} for an absurd length."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100_000_000:
            return {}
        return json.loads(fh.read(length))


def _safetensors_keys(path: Path) -> list[str]:
    return [k for k in safetensors_header(path) if k != "__metadata__"]


PIPELINE_FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}


def _family_from_diffusers(folder: Path) -> str | None:
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


def detect_family(value: str) -> tuple[str | None, str]:
    """(family or None, a short sentence for the page) for a file, a diffusers folder or a hub id."""
    text = (value or "").strip()
    if not text:
        return None, "No base model chosen."
    path = Path(text).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".safetensors":
            family = family_from_keys(_safetensors_keys(path))
        elif path.is_dir():
            family = _family_from_diffusers(path)
        elif path.exists():
            return None, "Family not detected from this file type (.ckpt); it is detected when training starts."
        elif looks_like_hub_id(text):
            lower = text.lower()
            family = ("flux" if "flux" in lower else "sd3" if "stable-diffusion-3" in lower else
                      "sdxl" if "xl" in lower else "sd2" if "stable-diffusion-2" in lower else "sd1")
            return family, f"Hub id: {FAMILY_NAMES[family]} (guessed from the name; downloaded at start)."
        else:
            return None, f"'{text}' does not exist and is not a hub id like org/name."
    except (OSError, ValueError, struct.error) as exc:
        return None, f"Could not read '{text}': {exc}"
    if family is None:
        return None, "Family not recognised from the weights."
    return family, f"Detected: {FAMILY_NAMES[family]}"
