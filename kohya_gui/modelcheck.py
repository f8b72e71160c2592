"""Can the base model be had? Checked before Start, so a run does not fail half a minute later.

A path must exist; a Hugging Face id must be in the local cache when the hub cannot be reached
(HF_HUB_OFFLINE set, or no answer within a couple of seconds), and ids known to be gone from the hub
(kohya_ss's old default `runwayml/stable-diffusion-v1-5`) are refused with their replacement.
No torch and no hub client calls: only the environment, one socket and the cache folder.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from trainer.config import looks_like_hub_id
from trainer.problems import Problem

# ids removed from the hub → where the same weights live now
REMOVED_HUB_IDS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
}
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
HUB_HOST = ("huggingface.co", 443)
PROBE_SECONDS = 2.0
PROBE_TTL = 60.0
_probe: dict = {}


def offline_by_env() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """False when offline by the environment or no answer within `timeout`; remembered a minute."""
    if offline_by_env():
        return False
    now = time.monotonic()
    if _probe and now - _probe["at"] < PROBE_TTL:
        return _probe["ok"]
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _probe.update(at=now, ok=ok)
    return ok


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def in_hub_cache(repo_id: str) -> bool:
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def model_problem(value: str, *, cwd: Path | None = None, online=hub_reachable,
                  field: str = "pretrained_model_name_or_path") -> Problem | None:
    """The problem (on `field`) when the base model cannot be had, else None."""
    value = str(value or "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and cwd is not None:
        path = Path(cwd) / path
    if path.exists():
        return None
    if not looks_like_hub_id(value) or value.lower().endswith(MODEL_FILE_SUFFIXES):
        return Problem.at(field, f"'{value}' does not exist", hint="Pick a checkpoint file or a diffusers folder "
                          "(models/checkpoints/), or enter a Hugging Face id.")
    if in_hub_cache(value):
        return None
    if value in REMOVED_HUB_IDS:
        return Problem.at(field, f"'{value}' was removed from the Hugging Face hub",
                          hint=f"Use '{REMOVED_HUB_IDS[value]}' (the same weights) or a local checkpoint.")
    if not online():
        return Problem.at(field, f"'{value}' is not in the local Hugging Face cache and the hub cannot be reached "
                          "(offline)", hint="Download it once while online, or pick a local checkpoint file or "
                          "diffusers folder.")
    return None
