"""A LoRA training tab rendered as the page renders it, for the handler stories (no browser)."""
from __future__ import annotations

import gradio as gr

from kohya_gui.context import AppContext
from kohya_gui.forms import to_widget
from kohya_gui.jobqueue import JobQueue
from kohya_gui.settings import make_settings
from kohya_gui.tabs.training import TrainingTab


def make_tab(workspace, data_root, training_type="lora", title="LoRA") -> TrainingTab:
    """The tab with a paused queue (Start queues, nothing runs) and one browsable folder."""
    settings = make_settings(workspace=str(workspace), data_roots=[str(data_root)])
    queue = JobQueue(settings.workspace, cwd=settings.project_root)
    queue.pause()
    tab = TrainingTab(AppContext(settings, queue), training_type, title)
    with gr.Blocks():
        tab.render()
    return tab


def raw_values(tab, **changes) -> list:
    """The form's widget values as the browser sends them (defaults, with `changes`)."""
    values = tab.form.initial_values() | changes
    return [to_widget(s, values[s.name]) for s in tab.form.specs]


def split_output(tab, out):
    """Handler output → ({field: update}, summary, plan, confirm group, confirm text, message)."""
    n = len(tab.form.specs)
    return dict(zip(tab.form.names, out[:n])), *out[n:]
