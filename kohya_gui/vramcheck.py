"""Will the run fit the card? The plan's VRAM estimate (trainer.vram: UNMEASURED, parameter counts and a
guessed activation term) against the GPU's memory: `card_vram_gb`, else the detected CUDA card's.

Shown on the plan line by Check and Start; when the estimate exceeds the card, Start asks to confirm
first (the estimate is not a measurement, so it never refuses).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from trainer.families import FAMILY_NAMES
from trainer.vram import PARAMS, config_family, estimate_vram

from . import envcheck, modelinfo

FIELD = "card_vram_gb"
# a base model file with under this share of its family's parameters is a test/tiny model: the full-size
# estimate says nothing about it
TINY_SHARE = 0.05


@dataclass(frozen=True)
class VramCheck:
    estimate_gb: float | None
    card_gb: float | None
    card_source: str  # "card_vram_gb", "detected <name>" or why none
    line: str         # the plan line's text
    warning: str = ""  # set when the estimate is above the card

    @property
    def too_big(self) -> bool:
        return self.estimate_gb is not None and self.card_gb is not None and self.estimate_gb > self.card_gb


def header_params(path: str) -> int | None:
    """Parameters in a local .safetensors file, from its header's shapes (no tensor read); None = unknown."""
    p = Path(path or "")
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return None
    try:
        header = modelinfo.safetensors_header(p)
    except (OSError, ValueError, struct.error):
        return None
    if not header:  # a header too long to be real: unknown, as before
        return None
    total = 0
    for key, entry in header.items():
        if key != "__metadata__" and isinstance(entry, dict):
            count = 1
            for side in entry.get("shape") or []:
                count *= int(side)
            total += count
    return total


def detected_card(config, python: str) -> tuple[float | None, str]:
    """(GB, where it came from): the user's card_vram_gb, else the first GPU of gpu_ids (or GPU 0) found by the
    environment check (a subprocess, once per studio)."""
    if config.card_vram_gb:
        return float(config.card_vram_gb), "card_vram_gb"
    gpus = envcheck.cached_check(python).get("gpus") or []
    wanted = str(config.gpu_ids or "").split(",")[0].strip()
    gpu = next((g for g in gpus if str(g.get("index")) == wanted), gpus[0] if gpus else None)
    if gpu is None:
        return None, "no CUDA GPU found"
    return float(gpu["vram_gb"]), f"detected {gpu['name']}"


def check_vram(config, python: str) -> VramCheck | None:
    """The estimate and the card for a config; None when there is no estimate for its family."""
    try:
        family, variant = config_family(config)
    except (OSError, ValueError, struct.error):  # not a readable safetensors header: the model check says why
        return None
    if family is None:  # a diffusers folder or a hub id: the page's own detection (model_index.json, the name)
        family = modelinfo.detect_family(config.pretrained_model_name_or_path)[0]
    estimate = estimate_vram(family, config, variant) if family else None
    if estimate is None:
        return None
    name = FAMILY_NAMES.get(family, family)
    key = f"{family}-{variant or 'large'}" if family == "sd3" else family
    params = header_params(config.pretrained_model_name_or_path)
    if params is not None and params < TINY_SHARE * PARAMS[key][0] * 1e9:
        return VramCheck(None, None, "", f"**VRAM:** no estimate: the base model holds {params / 1e6:.1f} M "
                         f"parameters, far fewer than a full-size {name} (a test model).")
    card, source = detected_card(config, python)
    text = (f"**VRAM:** about **{estimate.total_gb} GB** for {name} with these settings (weights "
            f"{estimate.weights_gb}, text encoders {estimate.text_encoders_gb}, network + optimizer "
            f"{estimate.lora_and_optimizer_gb}, activations {estimate.activations_gb}) — "
            f"{'measured' if estimate.measured else 'unmeasured estimate, not checked on a GPU yet'}.")
    if card is None:
        text += f" {source.capitalize()}: enter your card's memory in *GPU memory (GB)* to check that it fits."
    elif estimate.total_gb > card:
        warning = (f"⚠ **It may not fit the card's {card:g} GB** ({source}): choose the VRAM preset of your card, "
                   "or turn on fp8_base, cached text-encoder outputs, gradient checkpointing or blocks_to_swap.")
        return VramCheck(estimate.total_gb, card, source, f"{text}  \n{warning}", warning)
    else:
        text += f" Fits the card's {card:g} GB ({source})."
    return VramCheck(estimate.total_gb, card, source, text)
