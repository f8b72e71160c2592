"""Presets: shipped VRAM tiers (configs/presets/vram_*.json) and the user's own saved presets.

A preset is a partial set of option values. Applying one changes only the options it names (and
that the current training type has), and reports every change so nothing moves silently. VRAM
presets carry `family_values` overrides for SDXL, chosen from the detected base model family.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .jobqueue import write_json_atomic

# Options that describe one user's machine or dataset; a saved preset leaves them out (as Kohya's
# tools/prepare_presets.py does) so applying it never points a run at someone else's folders.
PERSONAL_KINDS = ("path", "dir", "file")
PERSONAL_NAMES = ("output_name", "sample_prompts", "token_string", "training_comment")
NAME_RE = re.compile(r"^[A-Za-z0-9 _.\-]{1,60}$")


class PresetError(ValueError):
    pass


@dataclass
class Preset:
    name: str
    description: str = ""
    values: dict = field(default_factory=dict)
    family_values: dict = field(default_factory=dict)
    source: str = "shipped"          # "shipped" | "user"
    path: Path | None = None
    vram_gb: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name} (yours)" if self.source == "user" else self.name

    def values_for(self, family: str | None) -> dict:
        merged = dict(self.values)
        if family and family in self.family_values:
            merged.update(self.family_values[family])
        return merged


def _read_preset(path: Path, source: str) -> Preset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PresetError(f"Preset file '{path}' cannot be read: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise PresetError(f"Preset file '{path}' needs a \"values\" object.")
    return Preset(name=str(data.get("name") or path.stem), description=str(data.get("description", "")),
                  values=data["values"], family_values=data.get("family_values") or {}, source=source,
                  path=path, vram_gb=data.get("vram_gb"))


def list_presets(shipped_dir: Path, user_dir: Path, training_type: str) -> list[Preset]:
    """Shipped VRAM presets (smallest card first), then the user's presets for this training type."""
    presets: list[Preset] = []
    if Path(shipped_dir).is_dir():
        shipped = [_read_preset(p, "shipped") for p in sorted(Path(shipped_dir).glob("*.json"))]
        presets += sorted(shipped, key=lambda p: (p.vram_gb is None, p.vram_gb or 0, p.name))
    user_type_dir = Path(user_dir) / training_type
    if user_type_dir.is_dir():
        for path in sorted(user_type_dir.glob("*.json")):
            try:
                presets.append(_read_preset(path, "user"))
            except PresetError:
                continue   # a broken user file must not hide the other presets
    return presets


def find_preset(presets: list[Preset], label: str) -> Preset | None:
    return next((p for p in presets if p.label == label), None)


def apply_values(current: dict, preset_values: dict, known: set[str]) -> tuple[dict, list[tuple]]:
    """New values and the list of (name, old, new) that actually change. Unknown names are skipped."""
    new = dict(current)
    changes = []
    for name, value in preset_values.items():
        if name not in known:
            continue
        old = current.get(name)
        if old != value and not _same_number(old, value):
            changes.append((name, old, value))
        new[name] = value
    return new, changes


def apply_checked(current: dict, preset_values: dict, known: set[str], validate) -> tuple[dict, list, list]:
    """apply_values, then undo any preset value that the schema's rules reject for this training type
    (e.g. cached text-encoder outputs in Textual Inversion, which trains the text encoder).

    `validate(values) -> problems`. Returns (values, changes, [(name, reason)] left unchanged)."""
    new, changes = apply_values(current, preset_values, known)
    changed = {name for name, _, _ in changes}
    kept: list[tuple[str, str]] = []
    for problem in validate(new):
        if problem.field in changed and problem.is_error:
            new[problem.field] = current.get(problem.field)
            changed.discard(problem.field)
            kept.append((problem.field, problem.message))
    return new, [c for c in changes if c[0] in changed], kept


def _same_number(a, b) -> bool:
    try:
        return not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def describe_changes(preset_name: str, changes: list[tuple], labels: dict[str, str],
                     skipped: list[str] | None = None, kept: list[tuple[str, str]] | None = None) -> str:
    if not changes:
        text = f"**{preset_name}**: the form already had these values; nothing changed."
    else:
        lines = [f"**{preset_name}** changed {len(changes)} option(s):"]
        for name, old, new in changes:
            lines.append(f"- {labels.get(name, name)} (`{name}`): `{_show(old)}` → `{_show(new)}`")
        text = "\n".join(lines)
    if skipped:
        text += "\n\nNot used by this training type: " + ", ".join(f"`{s}`" for s in skipped)
    for name, reason in kept or []:
        text += f"\n\nLeft `{name}` unchanged: {reason}"
    return text


def column_note(preset: Preset, family: str | None) -> str:
    """Which column of a VRAM preset applied: the chosen family's own, or the general one."""
    from trainer.families import FAMILY_NAMES

    name = FAMILY_NAMES.get(family or "", family)
    if family and family in preset.family_values:
        return f"Applied the **{name} column** of this preset (the chosen base model's family)."
    if family and preset.family_values:
        columns = ", ".join(FAMILY_NAMES.get(f, f) for f in preset.family_values)
        return f"This preset has no {name} column (it has {columns}): applied its general column, for SD1.x / SD2.x."
    return "Applied the general column of this preset."


def _show(value) -> str:
    return "empty" if value in (None, "") else str(value)


def personal_fields(specs) -> set[str]:
    return {s.name for s in specs if s.kind in PERSONAL_KINDS or s.name in PERSONAL_NAMES}


def save_user_preset(user_dir: Path, training_type: str, name: str, values: dict, specs,
                     *, overwrite: bool = False, description: str = "") -> Path:
    """Save the form's values (minus personal paths) as a user preset; refuses to overwrite unasked."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise PresetError("Preset name: use 1–60 letters, digits, spaces, '-', '_' or '.'.")
    skip = personal_fields(specs)
    defaults = {s.name: s.default for s in specs}
    # store only what differs from the defaults: a preset then reads as "what I changed"
    kept = {k: v for k, v in values.items() if k not in skip and k in defaults and v != defaults[k]}
    path = Path(user_dir) / training_type / (re.sub(r"\s+", "_", name) + ".json")
    if path.exists() and not overwrite:
        raise PresetError(f"A preset named '{name}' already exists ({path}). Tick 'Overwrite' to replace it "
                          "or choose another name.")
    write_json_atomic(path, {"name": name, "description": description or f"Saved from the {training_type} tab.",
                             "values": kept})
    return path
