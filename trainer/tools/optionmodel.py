"""Options of a command-line tool declared once, as a pydantic model: the argparse CLI, the page's
widgets and the command the page runs are all read from it (the LoRA tools in options.py, the
captioners in captioning/options.py). Stdlib + pydantic only: the GUI imports it.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field

Kind = Literal["file", "files", "dir", "save", "model", "save_model", "int", "float", "floats", "bool", "choice",
               "str"]


def topt(default: Any, help: str, *, kind: Kind | None = None, label: str | None = None,
         positional: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """One tool option; `kind` picks the widget (file / folder / save / model pickers, numbers, choices);
    `aliases` are extra CLI spellings kohya's scripts accept (e.g. --caption_extention)."""
    return Field(default, description=help,
                 json_schema_extra={"kind": kind, "label": label, "positional": positional, "aliases": list(aliases)})


@dataclass(frozen=True)
class Widget:
    """What the page needs to draw one option."""

    name: str
    kind: str
    label: str
    help: str
    default: Any
    required: bool
    choices: list | None
    positional: bool


def _unwrap(annotation):
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def widgets(options: type[BaseModel]) -> list[Widget]:
    out = []
    for name, f in options.model_fields.items():
        extra = f.json_schema_extra or {}
        ann, _ = _unwrap(f.annotation)
        choices = list(get_args(ann)) if get_origin(ann) is Literal else None
        kind = extra.get("kind") or ("choice" if choices else {bool: "bool", int: "int", float: "float"}.get(ann, "str"))
        out.append(Widget(name, kind, extra.get("label") or name, f.description or "",
                          None if f.is_required() else f.default, f.is_required(), choices,
                          bool(extra.get("positional"))))
    return out


def add_arguments(p: argparse.ArgumentParser, options: type[BaseModel]) -> None:
    """One argparse argument per option, with the model's default (a bool defaulting to True gets --no-X)."""
    for w in widgets(options):
        field = options.model_fields[w.name]
        ann, _ = _unwrap(field.annotation)
        kw: dict[str, Any] = {"help": w.help}
        if w.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction if w.default else "store_true"
            kw["default"] = bool(w.default)
        else:
            if get_origin(ann) is list:
                kw["nargs"] = "+"
                ann = get_args(ann)[0]
            kw["type"] = ann if ann in (int, float) else str
            if w.choices:
                kw["choices"] = w.choices
                kw.pop("type")
            if not w.positional:
                kw["default"] = w.default
                kw["required"] = w.required
            if w.default not in (None, "") and not isinstance(w.default, bool) and not w.positional:
                kw["help"] += f" (default {w.default})"
        if w.positional:
            p.add_argument(w.name, **kw)
        else:
            aliases = (field.json_schema_extra or {}).get("aliases") or []
            p.add_argument(f"--{w.name}", *[f"--{a}" for a in aliases], **kw)


def option_argv(options: type[BaseModel], values: dict[str, Any]) -> list[str]:
    """The CLI arguments for option values (what the page runs); empty values and defaults of flags are
    left out."""
    args: list[str] = []
    for w in widgets(options):
        v = values.get(w.name)
        if w.kind == "bool":
            if v is not None and bool(v) != bool(w.default):
                args.append(f"--{w.name}" if v else f"--no-{w.name}")
            continue
        if v is None or v == "" or v == []:
            continue
        items = [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
        if not w.positional:
            args.append(f"--{w.name}")
        args += items
    return args
