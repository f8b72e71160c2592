"""How an option is declared, and how the GUI, docs and CLI read the declarations back.

Every option is one pydantic field made with :func:`opt`; its metadata (section, level, help,
choices, range, visibility, the model families it applies to) rides in ``json_schema_extra`` so that nothing else has to repeat it.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field

# Sections in the order Kohya_ss shows them (Configuration is the file bar, not a section of options).
SECTIONS: list[tuple[str, str]] = [
    ("model", "Model"),
    ("folders", "Folders"),
    ("dataset", "Dataset preparation"),
    ("training", "Parameters: training"),
    ("optimizer", "Parameters: optimizer and learning rate"),
    ("network", "Parameters: network (LoRA)"),
    ("embedding", "Parameters: embedding (Textual Inversion)"),
    ("saving", "Saving, state and resume"),
    ("sampling", "Samples"),
    ("logging", "Logging and metadata"),
    ("accelerate", "Accelerate launch"),
]
SECTION_KEYS = [key for key, _ in SECTIONS]

Kind = Literal["bool", "int", "float", "str", "text", "path", "dir", "file", "choice"]


def opt(
    default: Any,
    help: str,
    *,
    section: str,
    level: Literal["basic", "advanced"] = "advanced",
    ge: float | None = None,
    le: float | None = None,
    kind: Kind | None = None,
    label: str | None = None,
    visible_if: dict[str, list[Any]] | None = None,
    families: tuple[str, ...] | None = None,
) -> Any:
    """Declare one option. `kind` refines the widget for strings (path, dir, file, text); `families` names the
    base-model families (trainer.families ids) the option means something for — None = every family."""
    if section not in SECTION_KEYS:
        raise ValueError(f"unknown section {section!r}")
    extra = {"section": section, "level": level, "kind": kind, "label": label, "visible_if": visible_if,
             "families": list(families) if families else None}
    return Field(default, description=help, ge=ge, le=le, json_schema_extra=extra)


@dataclass(frozen=True)
class FieldSpec:
    """Everything a form, a doc table or a CLI help line needs to know about one option."""

    name: str
    kind: str
    default: Any
    choices: list[Any] | None
    ge: float | None
    le: float | None
    help: str
    section: str
    level: str
    label: str
    visible_if: dict[str, list[Any]] | None
    optional: bool
    families: tuple[str, ...] | None = None  # None: applies to every model family  # None is allowed (e.g. unet_lr: empty = use learning_rate)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _bounds(field) -> tuple[float | None, float | None]:
    ge = le = None
    for meta in field.metadata:
        ge = getattr(meta, "ge", ge) if getattr(meta, "ge", None) is not None else ge
        le = getattr(meta, "le", le) if getattr(meta, "le", None) is not None else le
    return ge, le


def field_specs(config_cls: type[BaseModel]) -> list[FieldSpec]:
    """The declared options of a config class, in declaration order."""
    specs = []
    for name, field in config_cls.model_fields.items():
        extra = field.json_schema_extra or {}
        if not extra.get("section"):
            continue  # bookkeeping fields (config_version, training_type)
        annotation, optional = _unwrap_optional(field.annotation)
        choices = list(get_args(annotation)) if get_origin(annotation) is Literal else None
        if choices is not None:
            kind = "choice"
        elif extra.get("kind"):
            kind = extra["kind"]
        else:
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(annotation, "str")
        ge, le = _bounds(field)
        specs.append(
            FieldSpec(
                name=name,
                kind=kind,
                default=field.default,
                choices=choices,
                ge=ge,
                le=le,
                help=field.description or "",
                section=extra["section"],
                level=extra.get("level", "advanced"),
                label=extra.get("label") or name.replace("_", " ").capitalize(),
                visible_if=extra.get("visible_if"),
                optional=optional,
                families=tuple(extra["families"]) if extra.get("families") else None,
            )
        )
    return specs


def parse_resolution(value: str | int | float | list | tuple) -> tuple[int, int]:
    """Kohya's resolution: "512", "512,768" (width,height), 512 or [768, 512] → (width, height)."""
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        return parse_resolution(",".join(str(int(v)) for v in value))
    if isinstance(value, (int, float)):
        return int(value), int(value)
    parts = [p.strip() for p in str(value).replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f'resolution {value!r} must be "512" or "width,height" such as "512,768"')
    return int(parts[0]), int(parts[1])


def parse_face_crop_aug_range(value) -> tuple[float, float] | None:
    """sd-scripts' face_crop_aug_range: "2.0,4.0" (command line) or [2.0, 4.0] (dataset TOML) → (2.0, 4.0);
    "" / None → None (off)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        low, high = (float(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f'face_crop_aug_range {value!r} must be two numbers "low,high" such as "2.0,4.0"') from None
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"face_crop_aug_range {value!r}: the crop's short side in face sizes, from low to high, both "
                         'above 0 and low ≤ high, e.g. "2.0,4.0"')
    return low, high
