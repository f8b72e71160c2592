"""What a killed run leaves behind, and what a resume may take over.

    clean_leftovers(output_dir, names) -> list of what was removed or restored
    adoptable(paths, state, redo) -> the unlisted results of the same session whose step a resume redoes

Every write is atomic (trainer/atomic.py), so a kill -9 leaves at worst a hidden temp entry beside the
file it was writing: `.NAME.<random>.tmp.safetensors` (full size), `.NAME-state.<random>.tmp/`, or — when
a state folder was being replaced — the previous one moved aside in `.NAME-state.<random>.old/`. Only
entries for names this run would write are touched; an `.old` folder is put back when its folder is
missing (the kill came between the two renames), else removed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path


def _target(entry: str, names: set[str]) -> str | None:
    """The name a hidden temp entry was written for, when it is one of `names`."""
    for name in names:
        prefix = f".{name[:80]}."
        if entry.startswith(prefix) and re.fullmatch(r"[A-Za-z0-9_]+\.(tmp(\.[A-Za-z0-9_]+)?|old)",
                                                     entry[len(prefix):]):
            return name
    return None


def clean_leftovers(output_dir: Path, names: set[str]) -> list[str]:
    done: list[str] = []
    if not output_dir.is_dir():
        return done
    for entry in sorted(os.listdir(output_dir)):
        path = output_dir / entry
        if entry.startswith(".write-test-"):
            path.unlink(missing_ok=True)
            done.append(f"removed {entry}")
            continue
        name = _target(entry, names)
        if name is None:
            continue
        if entry.endswith(".old") and path.is_dir() and (path / name).exists() and not (output_dir / name).exists():
            os.replace(path / name, output_dir / name)
            done.append(f"put back {name} (it was being replaced)")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        done.append(f"removed {entry}")
    return done


def session_of(path: Path) -> str | None:
    """The ss_session_id a result was written under (a LoRA's metadata or a state's train_state.json)."""
    try:
        if path.is_dir():
            return str(json.loads((path / "train_state.json").read_text(encoding="utf-8")).get("session_id") or "")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return (fh.metadata() or {}).get("ss_session_id")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return None
