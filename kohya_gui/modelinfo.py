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


PIPELINE_FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3", "ChromaPipeline": "chroma",
                     "StableDiffusionXLPipeline": "sdxl"}
# What a hub id's name tells of its family, first match wins (Chroma is FLUX-based; "xl" after the DiTs).
# A name that tells nothing leaves the family unknown until the download at start: every option shows.
HUB_NAME_HINTS = (("chroma", "chroma"), ("flux", "flux"), ("stable-diffusion-3", "sd3"), ("sd3", "sd3"),
                  ("xl", "sdxl"), ("stable-diffusion-2", "sd2"), ("sd2", "sd2"), ("stable-diffusion-v1", "sd1"),
                  ("v1-5", "sd1"), ("sd15", "sd1"), ("sd-1", "sd1"))


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
            return _hub_family(text)
        else:
            return None, f"'{text}' does not exist and is not a hub id like org/name."
    except (OSError, ValueError, struct.error) as exc:
        return None, f"Could not read '{text}': {exc}"
    if family is None:
        return None, "Family not recognised from the weights."
    return family, f"Detected: {FAMILY_NAMES[family]}"


def _hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's snapshot folder of `repo_id` when an earlier download left its model_index.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except (ImportError, ValueError, OSError):  # ValueError: not a valid repo id for huggingface_hub
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_family(repo_id: str) -> tuple[str | None, str]:
    snapshot = _hub_snapshot(repo_id)
    family = _family_from_diffusers(snapshot) if snapshot else None
    if family:
        return family, f"Hub id: {FAMILY_NAMES[family]} (read from the downloaded copy in the hub cache)."
    lower = repo_id.lower()
    family = next((fam for hint, fam in HUB_NAME_HINTS if hint in lower), None)
    if family:
        return family, f"Hub id: {FAMILY_NAMES[family]} (guessed from the name; downloaded at start)."
    return None, ("Hub id: its name does not tell the family, so every option shows; the trainer detects it "
                  "from the download at start (or tick sdxl / v2 / flux1_checkbox / sd3_checkbox).")
