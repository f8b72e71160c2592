"""The studio's page (tabs + shared monitor) and the server; flags live in cli.py.

    python -m kohya_gui [--listen 0.0.0.0] [--server_port 7860] [--headless] [--username U --password P]
"""
from __future__ import annotations

import atexit
import sys
import threading

import gradio as gr

from . import __version__, envcheck
from .cli import access_problems, build_parser
from .context import AppContext
from .jobqueue import JobQueue
from .lock import WorkspaceBusy, WorkspaceLock
from .login import RateLimitedLogin
from .settings import SettingsError, make_settings
from .signals import stop_jobs_on_signals
from .style import CSS
from .tabs.about import render_about
from .tabs.monitor_panel import MonitorPanel
from .tabs.training import TrainingTab
from .tabs.utilities import render_utilities

ENVCHECK_DELAY_S = 30
TABS = [("dreambooth", "Dreambooth"), ("lora", "LoRA"), ("textual_inversion", "Textual Inversion"),
        ("finetune", "Finetuning")]


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=f"Kohya Studio {__version__}", fill_width=True) as app:
        gr.Markdown(f"## Kohya Studio <small>v{__version__}</small> — LoRA, DreamBooth, Textual Inversion "
                    "and fine-tuning for SD1.x / SD2.x / SDXL / FLUX.1 / SD3.5")
        with gr.Tabs(selected="tab-lora"):
            for training_type, title in TABS:
                TrainingTab(ctx, training_type, title).render()
            render_utilities(ctx)
            render_about(ctx)
        MonitorPanel(ctx.queue, ctx.settings.allowed_roots)
    return app


def main(argv: list[str] | None = None, args=None) -> int:
    args = args if args is not None else build_parser().parse_args(argv)
    warnings, refusal = access_problems(args)
    if refusal:
        print(f"[kohya_gui] {refusal}", file=sys.stderr)
        return 2
    try:
        settings = make_settings(config=args.config, data_roots=args.data_root, headless=args.headless,
                                 workspace=args.workspace)
    except SettingsError as exc:
        print(f"[kohya_gui] {exc}", file=sys.stderr)
        return 2
    for text in warnings:
        print(text, file=sys.stderr, flush=True)
    try:  # before the queue is read: a second studio must not touch queue.json
        lock = WorkspaceLock(settings.workspace).acquire(f"http://{args.listen}:{args.server_port}")
    except WorkspaceBusy as exc:
        print(f"[kohya_gui] {exc}", file=sys.stderr)
        return 2
    atexit.register(lock.release)
    queue = JobQueue(settings.workspace, cwd=settings.project_root)
    atexit.register(queue.shutdown)
    stop_jobs_on_signals(queue)
    # the GPU's memory for the VRAM check before Start: the environment check imports torch (seconds), so it runs
    # ahead of the first Check — but after launch(), whose own page check gives up when the CPU is busy
    warm = threading.Timer(ENVCHECK_DELAY_S, envcheck.cached_check, args=(settings.python,))
    warm.daemon = True
    warm.start()
    ctx = AppContext(settings, queue)
    app = build_app(ctx)
    auth = RateLimitedLogin(args.username, args.password) if args.username else None
    print(f"[kohya_gui] workspace: {settings.workspace}; browsable folders: "
          + ", ".join(str(r) for r in settings.allowed_roots), flush=True)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=args.listen, server_port=args.server_port, share=args.share,
               inbrowser=args.inbrowser and not args.headless, auth=auth, root_path=args.root_path,
               allowed_paths=[str(r) for r in settings.allowed_roots], ssr_mode=False,
               footer_links=[], css=CSS, show_error=True)
    return 0
