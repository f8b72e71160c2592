"""Pure renderers: a JobMonitor snapshot → HTML/Markdown/tables for the monitor panel."""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from .jobqueue import Job
from .monitor import GENERIC_HINTS
from .picker import human_size

STATUS_ICONS = {"pending": "⏳", "running": "▶️", "done": "✅", "stopped": "⏹", "failed": "❌",
                "cancelled": "✖", "interrupted": "⚠"}


def fmt_duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_html(snap: dict, job: Job | None) -> str:
    """The progress bar with step/total, epoch, it/s, ETA and loss."""
    if job is None:
        return "<div class='ks-progress idle'>No training has run yet. Fill a form and press Start.</div>"
    step = snap.get("step") or {}
    plan = snap.get("plan") or {}
    final = snap.get("final")
    total = step.get("total") or plan.get("total_steps") or 0
    done_steps = step.get("step", 0)
    if final is not None and final.status == "done" and total:
        done_steps = total
    pct = (100.0 * done_steps / total) if total else 0.0
    if final is None and job.status == "running" and not step:
        cache = snap.get("cache")
        phase = (f"Caching {cache.get('what', '')} {cache.get('done', 0)}/{cache.get('total', '?')}"
                 if cache else "Starting: loading the model and scanning the dataset…")
    else:
        phase = ""
    parts = [f"Step {done_steps}/{total or '?'}"]
    if step.get("epoch") is not None:
        parts.append(f"epoch {step.get('epoch')}/{step.get('epochs', plan.get('epochs', '?'))}")
    if isinstance(step.get("it_s"), (int, float)):
        parts.append(f"{step['it_s']:.2f} it/s")
    if final is None and isinstance(step.get("eta_s"), (int, float)):
        parts.append(f"ETA {fmt_duration(step['eta_s'])}")
    if isinstance(step.get("loss"), (int, float)):
        avg = step.get("avg_loss")
        parts.append(f"loss {step['loss']:.4f}" + (f" (avg {avg:.4f})" if isinstance(avg, (int, float)) else ""))
    if snap.get("validation"):
        v_step, v_loss = snap["validation"][-1]
        parts.append(f"validation loss {v_loss:.4f} (step {v_step})")
    state = final.status if final is not None else job.status
    label = html.escape(f"{job.name} — {state}")
    return (f"<div class='ks-progress {state}' data-status='{state}' data-percent='{pct:.0f}'>"
            f"<div class='ks-progress-title'>{label}</div>"
            f"<div class='ks-bar'><div class='ks-fill' style='width:{pct:.1f}%'></div>"
            f"<span class='ks-pct'>{pct:.0f} %</span></div>"
            f"<div class='ks-progress-detail'>{html.escape(' · '.join(parts))}"
            f"{'<br>' + html.escape(phase) if phase else ''}</div></div>")


def loss_frame(snap: dict) -> pd.DataFrame:
    """Long format for gr.LinePlot: one row per (step, series), the validation loss (validation_split) as a
    third series. With no data yet it still holds one empty (NaN) point per series: a chart created without
    its series never draws them later."""
    steps, losses, series = [], [], []
    for step, loss, avg in snap.get("losses", []):
        steps += [step, step]
        losses += [round(loss, 4), round(avg, 4)]
        series += ["loss", "average"]
    for step, loss in snap.get("validation", []):
        steps.append(step)
        losses.append(round(loss, 4))
        series.append("validation")
    if not steps:
        steps, losses, series = [0, 0, 0], [float("nan")] * 3, ["loss", "average", "validation"]
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "loss": pd.Series(losses, dtype="float64"),
                         "series": pd.Series(series, dtype="object")})


def gallery_items(snap: dict, roots: list[Path] | None = None) -> list[tuple]:
    """(image, caption) pairs, newest 24. Files outside the served roots are passed as opened images,
    because Gradio only serves files from its allowed paths."""
    items = []
    for sample in snap.get("samples", [])[-24:]:
        path = Path(str(sample.get("path", "")))
        if not path.is_file():
            continue
        caption = f"step {sample.get('step', '?')}: {sample.get('prompt', '')}"[:120]
        real = path.resolve()
        if roots is None or any(real == r or r in real.parents for r in roots):
            items.append((str(path), caption))
        else:
            try:
                with Image.open(path) as img:
                    items.append((img.convert("RGB"), caption))
            except OSError:
                continue
    return items


def files_rows(snap: dict) -> list[list[str]]:
    rows = []
    for saved in snap.get("saved", []):
        exists = Path(saved.path).exists()
        mark = {True: "✔ verified", False: "✘ check failed", None: "—"}[saved.verified]
        rows.append([saved.path, human_size(saved.size) if saved.size else "—", saved.kind,
                     mark if exists else "missing"])
    return rows


def final_markdown(snap: dict, job: Job | None) -> str:
    final = snap.get("final")
    warnings = snap.get("warnings", [])
    warn = ("\n\n**Warnings:**\n" + "\n".join(f"- {w}" for w in warnings[-5:])) if warnings else ""
    if job is None or final is None:
        return warn.strip()
    outputs = final.outputs or [s.path for s in snap.get("saved", [])]
    listed = "\n".join(f"- `{p}`" for p in outputs) or "- (none)"
    if final.status == "done":
        return f"### ✅ Training finished\nSaved:\n{listed}{warn}"
    if final.status == "stopped":
        states = [p for p in outputs if p.endswith("-state")] or [
            str(s) for s in (Path(p).with_name(Path(p).stem + "-state") for p in outputs) if s.is_dir()]
        resume = (f"\n\nTo continue this run, put `{states[-1]}` in **Resume** (Advanced: saving, state and "
                  "resume) and press Start." if states else "")
        return f"### ⏹ Stopped\n{final.message}\nSaved before stopping:\n{listed}{resume}{warn}"
    tail = "\n".join(snap.get("log", [])[-12:])
    code = f" (exit code {final.exit_code})" if final.exit_code is not None else ""
    hint = final.hint if final.hint and final.hint not in GENERIC_HINTS else ""
    where = f"The full error is in `{job.log_path}`."
    what = f"\n\n**What to try:** {hint}" if hint else ""
    return (f"### ❌ Training failed{code}\n{html.escape(final.message)}{what}\n\n{where}\n\n"
            f"Last log lines:\n```\n{tail}\n```{warn}")


def display_status(job: Job, monitor_final=None) -> str:
    """A running job whose trainer already reported its end shows that end at once."""
    if job.status == "running" and monitor_final is not None:
        return monitor_final.status
    return job.status


def queue_rows(jobs: list[Job], finals: dict | None = None, now: float | None = None) -> list[list[str]]:
    now = time.time() if now is None else now
    rows = []
    for i, job in enumerate(jobs, 1):
        status = display_status(job, (finals or {}).get(job.id))
        when = time.strftime("%H:%M:%S", time.localtime(job.started or job.created))
        took = fmt_duration((job.finished or now) - job.started) if job.started else "—"
        detail = job.message or ""
        if status == "done" and job.outputs:
            detail = Path(job.outputs[-1]).name
        rows.append([str(i), f"{STATUS_ICONS.get(status, '')} {status}", job.name, when, took,
                     detail[:160], job.id])
    return rows


def log_text(snap: dict, lines: int = 15) -> str:
    return "\n".join(snap.get("log", [])[-lines:])
