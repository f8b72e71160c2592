"""Utilities ▸ TensorBoard: start TensorBoard on a run's log folder and show its address."""
from __future__ import annotations

import atexit

import gradio as gr

from ..picker import PathRefused, confine
from ..tensorboard import TensorBoard


def start_message(tb: TensorBoard, folder: str, roots) -> str:
    try:
        path = confine(str(folder or "").strip(), roots)
        url = tb.start(path)
    except (PathRefused, ValueError, OSError) as exc:
        return f"⛔ {exc}"
    return f"✔ TensorBoard is running on `{path}`: [{url}]({url}) (opens in a new tab; it reads new logs as a run writes them)"


def render_tensorboard(ctx, folder_box) -> None:
    """Call inside the Utilities tab; `folder_box(label, name)` makes a path box with 📂."""
    tb = TensorBoard(ctx.python)
    atexit.register(tb.stop)
    gr.Markdown("TensorBoard shows the loss, learning rate and samples of runs whose *Logging directory* "
                "(logging_dir) was set. Choose that folder (or one run's sub-folder) and start it.")
    folder = folder_box("Log folder (logging_dir)", "tensorboard_logdir")
    defaults = ctx.settings.defaults_for("lora").get("logging_dir") or ""
    if defaults:
        folder.value = defaults
    with gr.Row():
        start = gr.Button("Start TensorBoard", variant="primary", elem_id="util-tensorboard-start")
        stop = gr.Button("Stop TensorBoard", elem_id="util-tensorboard-stop")
    status = gr.Markdown(elem_id="util-tensorboard-status")
    start.click(lambda f: start_message(tb, f, ctx.settings.allowed_roots), inputs=folder, outputs=status)
    stop.click(lambda: "TensorBoard stopped." if tb.stop() else "TensorBoard was not running.", outputs=status)
