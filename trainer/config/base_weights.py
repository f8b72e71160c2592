"""sd-scripts' `base_weights` / `base_weights_multiplier` (train_network.py): LoRA files merged into the base
model before a LoRA is trained on it.

In the studio both are text: the files one per line (or comma-separated on a single line) and the strengths
comma- or space-separated, one per file; sd-scripts' TOML lists are read into that text. No torch here: the
config rules, the page and the sd-scripts export use it; the trainer merges (trainer/networks/base_weights.py).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from trainer.problems import Problem

FILES, MULTIPLIERS = "base_weights", "base_weights_multiplier"


def base_weight_paths(text) -> list[str]:
    """The files, in order: one per line; a text without line breaks may separate them with commas. Quotes
    around a path (Windows' "Copy as path") are dropped."""
    text = str(text or "").strip()
    parts = text.splitlines() if "\n" in text else text.split(",")
    return [p.strip().strip('"').strip("'").strip() for p in parts if p.strip().strip('"\'')]


def base_weight_multipliers(text) -> list[float]:
    """"0.8, 1" → [0.8, 1.0]; "" → []. ValueError names the field, the value and the fix."""
    out = []
    for part in (p for p in re.split(r"[,\s]+", str(text or "").strip()) if p):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{MULTIPLIERS}: {part!r} is not a number; write one strength per base_weights file, "
                             "separated by commas, e.g. 0.8, 1")
        out.append(value)
    return out


def text_of(value, separator: str):
    """A TOML list (sd-scripts' nargs form) or a single number as the option's text."""
    if isinstance(value, (list, tuple)):
        return separator.join(format(v, "g") if isinstance(v, (int, float)) else str(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, "g")
    return value


def _texts(config) -> tuple[str, str]:
    from .defaults import option  # (defaults imports the schema, which imports text_of from here)

    return option(config, FILES), option(config, MULTIPLIERS)


def base_weight_files(config) -> list[tuple[str, float]]:
    """(path, multiplier) for each file of a checked config; a file without a multiplier merges at 1.0."""
    files, strengths = _texts(config)
    paths = base_weight_paths(files)
    multipliers = base_weight_multipliers(strengths) or [1.0] * len(paths)
    return list(zip(paths, multipliers))


def base_weights_problems(config) -> list[Problem]:
    """Value checks (no disk): numbers, and one multiplier per file."""
    files, strengths = _texts(config)
    paths = base_weight_paths(files)
    try:
        multipliers = base_weight_multipliers(strengths)
    except ValueError as exc:
        return [Problem.at(MULTIPLIERS, str(exc))]
    if multipliers and not paths:
        return [Problem.at(MULTIPLIERS, f"{MULTIPLIERS} is set but base_weights names no file; choose the LoRA "
                           "files to merge into the base model or clear the field")]
    if multipliers and len(multipliers) != len(paths):
        return [Problem.at(MULTIPLIERS, f"{len(multipliers)} strength{'s' * (len(multipliers) > 1)} for "
                           f"{len(paths)} base_weights file{'s' * (len(paths) > 1)}; give "
                           "one per file in the same order (e.g. " + ", ".join(["1"] * len(paths)) + ") or clear "
                           "the field for 1.0 each")]
    return []


def base_weights_path_problems(config) -> list[Problem]:
    """Each file must exist (checked on the page and by preflight, before a model is loaded)."""
    return [Problem.at(FILES, f"{path!r} does not exist; choose the LoRA file or remove that line")
            for path in base_weight_paths(_texts(config)[0]) if not Path(path).expanduser().is_file()]
