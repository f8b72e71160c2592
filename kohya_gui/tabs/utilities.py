"""Utilities: captioning (basic, WD14, BLIP/BLIP-2, GIT), dataset tools (folder preparation, balancing, grouping,
manual captioning), Verify LoRA, TensorBoard.

Each tool builds a `python -m captioning …` command and streams its output into the page, so the
models load in a child process (never in the GUI) and nothing is reported only on the console.
"""
from __future__ import annotations

import subprocess

import gradio as gr

from captioning.options import CAPTIONERS

from ..context import AppContext
from .captioning_form import caption_argv, render_captioner, values_from_inputs
from .dataset_helpers import render_dataset_helpers
from ..picker import PathRefused, confine
from .picker_panel import PickerPanel
from .tensorboard_panel import render_tensorboard
from .verify import render_verify

# the captioners' forms, generated from captioning/options.py (the CLI's declaration)
CAPTION_TITLES = {"basic": "Basic captioning (fixed caption, prefix/postfix, find/replace)",
                  "wd14": "WD14 tagger (ONNX, anime/illustration tags)",
                  "blip": "BLIP / BLIP-2 captioning (sentences)",
                  "git": "GIT captioning (sentences; reads text in images)"}


def stream_command(argv: list[str], cwd):
    """Run a tool and yield its output so far (the last 200 lines), ending with its exit status."""
    text = "$ " + " ".join(argv) + "\n"
    yield text
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)
    except OSError as exc:
        yield text + f"Could not start: {exc}"
        return
    lines: list[str] = []
    assert proc.stdout
    for line in proc.stdout:
        # progress counters redraw with \r; keep the latest state only
        lines.append(line.rstrip("\n").split("\r")[-1])
        lines = lines[-200:]
        yield text + "\n".join(lines)
    code = proc.wait()
    yield text + "\n".join(lines) + f"\n\n{end_line(code, lines)}"


def end_line(code: int, lines: list[str]) -> str:
    """The verdict under a tool's output: its own `result:` sentence when it printed one, so a run
    that wrote nothing is not called a success."""
    if code != 0:
        errors = [ln for ln in lines if ln.startswith("error:")]
        why = errors[-1][len("error:"):].strip() if errors else "the lines above say why"
        return f"❌ failed (exit code {code}): {why}"
    result = next((ln[len("result:"):].strip() for ln in reversed(lines) if ln.startswith("result:")), "")
    if not result:
        return "✅ finished"
    return ("⚠ " if result.startswith("0 ") else "✅ ") + result


def _flag(argv: list[str], name: str, value) -> None:
    if value not in (None, "", False):
        argv += [name] if value is True else [name, str(value)]


def prepare_argv(python, instance, klass, images, repeats, reg, reg_repeats, dest) -> list[str]:
    argv = [python, "-m", "captioning", "prepare", str(dest or "").strip(), "--instance_prompt", str(instance),
            "--training_images_dir", str(images or "").strip(), "--training_repeats", str(int(repeats or 1))]
    _flag(argv, "--class_prompt", klass)
    if str(reg or "").strip():
        argv += ["--reg_images_dir", str(reg).strip(), "--reg_repeats", str(int(reg_repeats or 1))]
    return argv


def balance_argv(python, folder, steps, rename_unprefixed, apply: bool) -> list[str]:
    argv = [python, "-m", "captioning", "balance", str(folder or "").strip(), "--steps_per_concept",
            str(int(steps or 1000))]
    _flag(argv, "--rename_unprefixed", bool(rename_unprefixed))
    _flag(argv, "--yes", apply)
    return argv


def _folder(label, picker: PickerPanel, name: str, kind: str = "dir"):
    with gr.Row(equal_height=True):
        box = gr.Textbox(label=label, scale=8, elem_id=f"util-{name}")
        button = gr.Button("📂 Browse", scale=0, min_width=100)
    picker.attach(button, box, name, kind, label)
    return box


def render_utilities(ctx: AppContext) -> None:
    py, cwd = ctx.python, str(ctx.settings.project_root)
    with gr.Tab("Utilities", id="tab-utilities", elem_id="tab-utilities"):
        picker = PickerPanel(ctx.settings.allowed_roots, "util")
        caption_inputs, caption_buttons = {}, {}
        with gr.Tab("Captioning"):
            for name, captioner in CAPTIONERS.items():  # every captioner of the CLI gets its form
                with gr.Accordion(CAPTION_TITLES.get(name, captioner.help), open=name == "wd14"):
                    caption_inputs[name] = render_captioner(name, lambda label, n: _folder(label, picker, n))
                    caption_buttons[name] = gr.Button("Caption images", variant="primary", elem_id=f"util-{name}-run")
        with gr.Tab("Dataset tools"):
            with gr.Accordion("Folder preparation (copies only, never deletes)", open=True):
                with gr.Row():
                    p_instance = gr.Textbox(label="Instance prompt", placeholder="e.g. mychar")
                    p_class = gr.Textbox(label="Class prompt", placeholder="e.g. woman")
                p_images = _folder("Training images", picker, "prep_images")
                p_repeats = gr.Number(label="Repeats", value=40, precision=0)
                p_reg = _folder("Regularization images (optional)", picker, "prep_reg")
                p_reg_repeats = gr.Number(label="Reg repeats", value=1, precision=0)
                p_dest = _folder("Destination folder", picker, "prep_dest")
                p_btn = gr.Button("Prepare training folders", variant="primary")
            with gr.Accordion("Dataset balancing (renames <repeats>_ prefixes)", open=False):
                d_dir = _folder("Dataset folder (parent of N_name folders)", picker, "balance_folder")
                with gr.Row():
                    d_steps = gr.Number(label="Steps per concept per epoch", value=1000, precision=0)
                    d_unprefixed = gr.Checkbox(label="Also rename folders without an N_ prefix")
                with gr.Row():
                    d_preview = gr.Button("Preview")
                    d_apply = gr.Button("Rename as previewed", variant="stop")
            render_dataset_helpers(ctx, lambda label, name: _folder(label, picker, name), stream_command)
        with gr.Tab("Verify LoRA"):
            render_verify(ctx, picker)
        with gr.Tab("TensorBoard"):
            render_tensorboard(ctx, lambda label, name: _folder(label, picker, name))
        output = gr.Textbox(label="Tool output", lines=14, max_lines=30, autoscroll=True, interactive=False,
                            elem_id="util-output")
        picker.wire()

    roots = ctx.settings.allowed_roots

    def guarded(build, *folder_positions, apply=None):
        """A tool run whose folders obey the picker's rule (only under the studio's folders)."""
        def run(*a):
            for i in folder_positions:
                if str(a[i] or "").strip():
                    try:
                        confine(a[i], roots)
                    except PathRefused as exc:
                        yield f"⛔ Not started: {exc}"
                        return
            argv = build(py, *a) if apply is None else build(py, *a, apply)
            yield from stream_command(argv, cwd)
        return run

    def caption(name):
        def run(*raw):
            try:
                values = values_from_inputs(name, list(raw), roots)
            except (PathRefused, ValueError) as exc:
                yield f"⛔ Not started: {exc}"
                return
            yield from stream_command(caption_argv(py, name, values), cwd)
        return run

    for name, button in caption_buttons.items():
        button.click(caption(name), inputs=caption_inputs[name], outputs=output)
    p_inputs = [p_instance, p_class, p_images, p_repeats, p_reg, p_reg_repeats, p_dest]
    p_btn.click(guarded(prepare_argv, 2, 4, 6), inputs=p_inputs, outputs=output)
    d_inputs = [d_dir, d_steps, d_unprefixed]
    d_preview.click(guarded(balance_argv, 0, apply=False), inputs=d_inputs, outputs=output)
    d_apply.click(guarded(balance_argv, 0, apply=True), inputs=d_inputs, outputs=output)
