"""About: version, where things live, and the environment check (run in a subprocess)."""
from __future__ import annotations

import platform

import gradio as gr

from .. import __version__, envcheck
from ..context import AppContext

def environment_markdown(python: str, refresh: bool = False) -> str:
    return envcheck.to_markdown(envcheck.cached_check(python, refresh))


def render_about(ctx: AppContext) -> None:
    s = ctx.settings
    with gr.Tab("About", id="tab-about", elem_id="tab-about"):
        gr.Markdown(
            f"### Kohya Studio v{__version__}\n"
            f"Gradio {gr.__version__} · Python {platform.python_version()}\n\n"
            f"- Workspace (runs, queue, demo, your presets): `{s.workspace}`\n"
            f"- Base models: put checkpoints in `{s.models_dir / 'checkpoints'}`\n"
            f"- Folders the file browser may show: " + ", ".join(f"`{r}`" for r in s.allowed_roots))
        check = gr.Button("Run environment check", elem_id="about-envcheck")
        env = gr.Markdown("_Press the button: it starts a separate Python that imports torch, "
                          "bitsandbytes and onnxruntime and reports what it finds._", elem_id="about-env")
        check.click(lambda: environment_markdown(ctx.python, refresh=True), outputs=env)
