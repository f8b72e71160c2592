"""Utilities: captioning (WD14, BLIP/BLIP-2, GIT), dataset tools (folder preparation, balancing, grouping,
manual captioning), Verify LoRA, TensorBoard.

Each tool builds a `python -m captioning …` command and streams its output into the page, so the
models load in a child process (never in the GUI) and nothing is reported only on the console.
"""
from __future__ import annotations

import subprocess

import gradio as gr

from ..context import AppContext
from .dataset_helpers import render_dataset_helpers, render_git_captioning
from ..picker import PathRefused, confine
from .picker_panel import PickerPanel
from .tensorboard_panel import render_tensorboard
from .verify import render_verify

EXISTING = {"keep existing captions": [], "overwrite existing captions": ["--overwrite"],
            "append new tags to existing captions": ["--append_tags"]}


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


def wd14_argv(python, folder, model_dir, repo_id, thresh, general, character, undesired, prefix, postfix,
              ext, existing, recursive, batch, remove_underscore, cpu) -> list[str]:
    argv = [python, "-m", "captioning", "wd14", str(folder or "").strip(), "--thresh", str(thresh)]
    _flag(argv, "--model_dir", model_dir)
    _flag(argv, "--repo_id", repo_id)
    _flag(argv, "--general_threshold", general or None)
    _flag(argv, "--character_threshold", character or None)
    _flag(argv, "--undesired_tags", undesired)
    _flag(argv, "--prefix", prefix)
    _flag(argv, "--postfix", postfix)
    _flag(argv, "--caption_extension", ext)
    _flag(argv, "--recursive", bool(recursive))
    _flag(argv, "--batch_size", int(batch or 1))
    _flag(argv, "--cpu", bool(cpu))
    argv += EXISTING.get(existing, [])
    argv += ["--remove_underscore"] if remove_underscore else ["--no-remove_underscore"]
    return argv


def blip_argv(python, folder, model, beam, beams, top_p, min_len, max_len, prefix, postfix, ext, existing,
              batch) -> list[str]:
    argv = [python, "-m", "captioning", "blip", str(folder or "").strip(), "--model", str(model).strip(),
            "--top_p", str(top_p)]
    argv += ["--beam_search"] if beam else ["--no-beam_search"]
    _flag(argv, "--num_beams", int(beams) if beams else None)
    _flag(argv, "--min_length", int(min_len) if min_len else None)
    _flag(argv, "--max_length", int(max_len) if max_len else None)
    _flag(argv, "--prefix", prefix)
    _flag(argv, "--postfix", postfix)
    _flag(argv, "--caption_extension", ext)
    _flag(argv, "--batch_size", int(batch or 1))
    return argv + EXISTING.get(existing, [])


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
    taggers = str(ctx.settings.models_dir / "taggers")
    with gr.Tab("Utilities", id="tab-utilities", elem_id="tab-utilities"):
        picker = PickerPanel(ctx.settings.allowed_roots, "util")
        with gr.Tab("Captioning"):
            with gr.Accordion("WD14 tagger (ONNX, anime/illustration tags)", open=True):
                w_dir = _folder("Image folder", picker, "wd14_folder")
                with gr.Row():
                    w_model = gr.Textbox(label="Tagger folder", value=taggers, elem_id="util-wd14-model",
                                         info="model.onnx + selected_tags.csv, or the store of <owner>_<repo>/")
                    w_repo = gr.Textbox(label="Repo id (optional)", info="e.g. SmilingWolf/wd-v1-4-convnextv2-tagger-v2")
                with gr.Row():
                    w_thresh = gr.Slider(0, 1, value=0.35, step=0.01, label="Threshold")
                    w_general = gr.Slider(0, 1, value=0, step=0.01, label="General threshold (0 = threshold)")
                    w_char = gr.Slider(0, 1, value=0, step=0.01, label="Character threshold (0 = threshold)")
                with gr.Row():
                    w_undesired = gr.Textbox(label="Undesired tags", placeholder="e.g. simple background, 1girl")
                    w_prefix = gr.Textbox(label="Prefix (e.g. trigger word)")
                    w_postfix = gr.Textbox(label="Postfix")
                with gr.Row():
                    w_ext = gr.Textbox(label="Caption extension", value=".txt")
                    w_existing = gr.Dropdown(list(EXISTING), value="keep existing captions", label="Existing captions",
                                             elem_id="util-wd14-existing")
                    w_batch = gr.Number(label="Batch size", value=8, precision=0)
                with gr.Row():
                    w_recursive = gr.Checkbox(label="Include sub-folders")
                    w_underscore = gr.Checkbox(label="Remove underscores", value=True)
                    w_cpu = gr.Checkbox(label="Use the CPU")
                w_btn = gr.Button("Caption images", variant="primary", elem_id="util-wd14-run")
            with gr.Accordion("BLIP / BLIP-2 captioning (sentences)", open=False):
                b_dir = _folder("Image folder", picker, "blip_folder")
                with gr.Row():
                    b_model = gr.Textbox(label="Model (hub id or local folder)",
                                         value="Salesforce/blip-image-captioning-large")
                    b_beam = gr.Checkbox(label="Beam search (else nucleus sampling)", value=True)
                    b_beams = gr.Number(label="Beams", value=1, precision=0)
                    b_top_p = gr.Slider(0, 1, value=0.9, step=0.01, label="Top p")
                with gr.Row():
                    b_min = gr.Number(label="Min length (0 = model default)", value=0, precision=0)
                    b_max = gr.Number(label="Max length (0 = model default)", value=0, precision=0)
                    b_prefix = gr.Textbox(label="Prefix")
                    b_postfix = gr.Textbox(label="Postfix")
                with gr.Row():
                    b_ext = gr.Textbox(label="Caption extension", value=".txt")
                    b_existing = gr.Dropdown(list(EXISTING)[:2], value="keep existing captions",
                                             label="Existing captions")
                    b_batch = gr.Number(label="Batch size", value=1, precision=0)
                b_btn = gr.Button("Caption images", variant="primary", elem_id="util-blip-run")
            render_git_captioning(ctx, lambda label, name: _folder(label, picker, name), stream_command)
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

    w_inputs = [w_dir, w_model, w_repo, w_thresh, w_general, w_char, w_undesired, w_prefix, w_postfix, w_ext,
                w_existing, w_recursive, w_batch, w_underscore, w_cpu]
    w_btn.click(guarded(wd14_argv, 0, 1), inputs=w_inputs, outputs=output)
    b_inputs = [b_dir, b_model, b_beam, b_beams, b_top_p, b_min, b_max, b_prefix, b_postfix, b_ext, b_existing,
                b_batch]
    b_btn.click(guarded(blip_argv, 0), inputs=b_inputs, outputs=output)
    p_inputs = [p_instance, p_class, p_images, p_repeats, p_reg, p_reg_repeats, p_dest]
    p_btn.click(guarded(prepare_argv, 2, 4, 6), inputs=p_inputs, outputs=output)
    d_inputs = [d_dir, d_steps, d_unprefixed]
    d_preview.click(guarded(balance_argv, 0, apply=False), inputs=d_inputs, outputs=output)
    d_apply.click(guarded(balance_argv, 0, apply=True), inputs=d_inputs, outputs=output)
