"""Loading and saving the form's values as config files (project JSON/TOML or a Kohya_ss GUI JSON).

Loading never refuses a file because of bad values: the values go into the form and the problems
are shown next to their fields, so the user can fix them in the page (Kohya_ss silently kept the
on-screen value instead, #1846/#2749).
"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.config import (CONFIG_TYPES, ConfigError, atomic_write_text, config_to_dict, import_kohya_json,
                            migrate, read_config_dict)

from .picker import PathRefused, confine, is_dir, is_file


class LoadError(ValueError):
    pass


def confined(path: str | Path, roots: list[Path] | None) -> Path:
    """The picker's rule for typed paths too: only files under the studio's folders are read or
    written (the message never tells whether a file elsewhere exists)."""
    text = str(path).strip()
    if not roots:
        return Path(text)
    try:
        return confine(text, roots)
    except PathRefused as exc:
        raise LoadError(str(exc)) from exc


def read_values(path: str | Path, training_type: str, roots: list[Path] | None = None) -> tuple[dict, list[str]]:
    """(values known to this training type, notes for the user) from any supported config file."""
    if not str(path).strip():
        raise LoadError("Enter the path of a config file (.json or .toml), or pick one with 📂 Browse.")
    path = confined(path, roots)
    if not is_file(path):
        raise LoadError(f"'{path}' does not exist; check the path or pick the file with 📂 Browse.")
    try:
        data = read_config_dict(path)
    except ConfigError as exc:
        raise LoadError("; ".join(p.message for p in exc.problems)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"'{path.name}' cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    if not isinstance(data, dict):
        raise LoadError(f"'{path.name}' does not hold a settings object.")
    fields = CONFIG_TYPES[training_type].model_fields
    notes: list[str] = []
    if "config_version" in data or "training_type" in data:
        try:
            data = migrate(dict(data), str(path))
        except ConfigError as exc:
            raise LoadError("; ".join(p.message for p in exc.problems)) from exc
        file_type = data.get("training_type", training_type)
        if file_type != training_type:
            raise LoadError(f"'{path.name}' is a {file_type} config; open it in the "
                            f"{file_type.replace('_', ' ').title()} tab.")
        unknown = [k for k in data if k not in fields]
        if unknown:
            notes.append("Not options of this tab (left out): " + ", ".join(f"`{k}`" for k in unknown))
        values = {k: v for k, v in data.items() if k in fields and k not in ("config_version", "training_type")}
        notes.insert(0, f"Loaded `{path.name}`.")
    else:
        try:
            values, ignored, import_notes = import_kohya_json(data, training_type)
        except ConfigError as exc:  # what kohya_ss's own run would refuse too (a model family, a bad value)
            raise LoadError(f"`{path.name}` cannot be trained here: "
                            + "; ".join(f"{p.field}: {p.message}" for p in exc.problems)) from exc
        except Exception as exc:     # an importer bug must not blank the page: one message instead
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LoadError(f"'{path.name}' looks like a Kohya_ss config but could not be imported "
                            f"({type(exc).__name__}: {first}). Nothing was changed in the form.") from exc
        notes.append(f"Imported the Kohya_ss config `{path.name}` ({len(values)} options).")
        notes += import_notes
        if ignored:
            notes.append(f"Ignored {len(ignored)} Kohya_ss key(s) with no counterpart here: "
                         + ", ".join(f"`{k}`" for k in ignored[:40]) + (" …" if len(ignored) > 40 else ""))
    return values, notes


def values_to_dict(training_type: str, values: dict, config=None) -> dict:
    """What gets written: the schema's own dump when the values are valid, the raw values otherwise."""
    if config is not None:
        data = config_to_dict(config)
    else:
        from trainer.config import CONFIG_VERSION
        data = {"config_version": CONFIG_VERSION, "training_type": training_type, **values}
    return data


def save_values(path: str | Path, data: dict, *, overwrite: bool, roots: list[Path] | None = None) -> Path:
    if not str(path).strip():
        raise LoadError("Enter where to save the config, e.g. configs/mychar.json.")
    path = confined(path, roots)
    if path.suffix.lower() != ".json":
        raise LoadError(f"'{path.name}': configs are saved as .json; end the name with .json.")
    if not is_dir(path.parent):
        raise LoadError(f"The folder '{path.parent}' does not exist; create it first or save somewhere else.")
    if path.exists() and not overwrite:
        raise LoadError(f"'{path}' already exists. Tick 'Overwrite' to replace it, or choose another name.")
    try:
        return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise LoadError(f"'{path}' could not be written ({exc.strerror or exc}); choose a folder you can "
                        "write to.") from exc
