"""Base-model listing and family detection without torch (reads safetensors headers / diffusers JSON)."""
from __future__ import annotations

import struct
from pathlib import Path

from trainer.config import looks_like_hub_id
from trainer.families import FAMILY_NAMES, family_from_keys, family_of_diffusers_folder, safetensors_header

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


def _safetensors_keys(path: Path) -> list[str]:
    return [k for k in safetensors_header(path) if k != "__metadata__"]


# What a hub id's name tells of its family, first match wins (Chroma is FLUX-based; "xl" after the DiTs).
# A name that tells nothing leaves the family unknown until the download at start: every option shows.
HUB_NAME_HINTS = (("chroma", "chroma"), ("flux", "flux"), ("stable-diffusion-3", "sd3"), ("sd3", "sd3"),
                  ("xl", "sdxl"), ("stable-diffusion-2", "sd2"), ("sd2", "sd2"), ("stable-diffusion-v1", "sd1"),
                  ("v1-5", "sd1"), ("sd15", "sd1"), ("sd-1", "sd1"))


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
            family = family_of_diffusers_folder(path)
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
    family = family_of_diffusers_folder(snapshot) if snapshot else None
    if family:
        return family, f"Hub id: {FAMILY_NAMES[family]} (read from the downloaded copy in the hub cache)."
    lower = repo_id.lower()
    family = next((fam for hint, fam in HUB_NAME_HINTS if hint in lower), None)
    if family:
        return family, f"Hub id: {FAMILY_NAMES[family]} (guessed from the name; downloaded at start)."
    return None, ("Hub id: its name does not tell the family, so every option shows; the trainer detects it "
                  "from the download at start (or tick sdxl / v2 / flux1_checkbox / sd3_checkbox).")
