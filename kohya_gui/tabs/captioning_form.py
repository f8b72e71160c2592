"""The captioners' forms on the Utilities tab, generated from captioning/options.py — the same models
`python -m captioning basic|wd14|blip|git` builds its argparse from, so the page and the CLI show the same
options with the same defaults. The values turn back into that CLI's arguments (`caption_argv`)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from captioning.options import CAPTIONERS
from trainer.tools.optionmodel import Widget, option_argv, widgets

from ..picker import confine

PER_ROW = 4


def values_from_inputs(captioner: str, raw: list, roots: list[Path] | None = None) -> dict:
    """Widget values (in `widgets()` order) → option values; folders must lie under `roots` (PathRefused
    names the folder), a required one left empty is a ValueError naming the field."""
    out = {}
    for w, value in zip(widgets(CAPTIONERS[captioner].options), raw):
        if w.kind == "bool":
            value = bool(value)
        elif w.kind in ("int", "float"):
            value = None if value in (None, "") else (int(value) if w.kind == "int" else float(value))
        elif w.kind in ("dir", "model"):
            value = str(value or "").strip() or None
            if value and w.kind == "dir" and roots is not None:
                value = str(confine(value, roots))
        else:  # text as typed: a separator such as ", " keeps its space
            value = None if value in (None, "") else str(value)
        if value is None and w.required:
            raise ValueError(f"{w.label} is required: {w.help}")
        out[w.name] = value
    return out


def caption_argv(python: str, captioner: str, values: dict) -> list[str]:
    return [python, "-m", "captioning", captioner, *option_argv(CAPTIONERS[captioner].options, values)]


def _widget(w: Widget, captioner: str, folder_box):
    eid = f"util-{captioner}-{w.name}"
    if w.kind == "dir":
        return folder_box(w.label + (" *" if w.required else ""), f"{captioner}-{w.name}")
    if w.kind == "bool":
        return gr.Checkbox(label=w.label, value=bool(w.default), info=w.help, elem_id=eid)
    if w.kind == "choice":
        return gr.Dropdown(choices=list(w.choices), value=w.default, label=w.label, info=w.help, elem_id=eid)
    if w.kind in ("int", "float"):
        return gr.Number(label=w.label, value=w.default, precision=0 if w.kind == "int" else None, info=w.help,
                         elem_id=eid)
    return gr.Textbox(label=w.label, value=w.default or "", info=w.help, elem_id=eid)


def render_captioner(captioner: str, folder_box) -> list:
    """The widgets of one captioner, in `widgets()` order; folders get a 📂 (`folder_box(label, name)`)."""
    ws = widgets(CAPTIONERS[captioner].options)
    inputs = [_widget(w, captioner, folder_box) for w in ws if w.kind == "dir"]
    rest = [w for w in ws if w.kind != "dir"]
    for i in range(0, len(rest), PER_ROW):
        with gr.Row():
            inputs += [_widget(w, captioner, folder_box) for w in rest[i:i + PER_ROW]]
    order = [w.name for w in ws if w.kind == "dir"] + [w.name for w in rest]
    by_name = dict(zip(order, inputs))
    return [by_name[w.name] for w in ws]
