"""Live state of one training job, built from the trainer's event stream (docs/events.md).

The runner feeds every stdout line to `JobMonitor.feed_line` and every stderr line to
`add_log`; the page renders the monitor on a timer. Because the same events are also kept in the
run folder, a monitor can be rebuilt from disk after a page reload or a GUI restart.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from trainer.events import DONE, FAILED, STOPPED

MAX_LOSS_POINTS = 2000
LOG_LINES = 400
# library chatter that says nothing about the user's run: kept in trainer.log, left out of the page
NOISE = re.compile(
    r"gemm_4bit|pip install kernels"                          # bitsandbytes' CPU kernel probe
    r"|\[transformers\].*(requires torchvision|falling back)"   # image processors we never use
    r"|^\S+\.py:\d+: \w*Warning:"                             # warnings.warn(...) from a library
    r"|^\s+warnings\.warn\("
    r"|torchvision|TRANSFORMERS_CACHE|`torch_dtype` is deprecated")
CHAIN = ("During handling of the above exception", "The above exception was the direct cause")
GENERIC_HINTS = ("See the message for the file and the fix.", "Read the last log lines below for the cause.")


class LogFilter:
    """Drops library warnings and traceback frames from what the page shows; the exception's own
    line ("ValueError: …") stays. The run's log file keeps every line."""

    def __init__(self) -> None:
        self.in_trace = False

    def keep(self, line: str) -> bool:
        if line.startswith("Traceback (most recent call last)"):
            self.in_trace = True
            return False
        if line.startswith(CHAIN):          # "The above exception was the direct cause…": a trace follows
            self.in_trace = True
            return False
        if self.in_trace:
            if not line.strip() or line[:1].isspace():
                return False
            self.in_trace = False
        return not NOISE.search(line)


@dataclass
class SavedFile:
    path: str
    size: int
    kind: str
    verified: bool | None


@dataclass
class Final:
    status: str                      # one of trainer.events.FINAL_TYPES
    message: str = ""
    hint: str = ""
    exit_code: int | None = None
    outputs: list[str] = field(default_factory=list)


def first_line(text) -> str:
    """An error's first line: a message that carries a traceback or a dump shows only its head."""
    lines = [ln for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def parse_event(line: str) -> dict | None:
    """One stdout line → an event dict, or None when the line is not an event.

    Tolerates a prefix before the JSON object so a stray print cannot break the monitor.
    """
    start = line.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


class JobMonitor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.plan: dict | None = None
        self.cache: dict | None = None
        self.step: dict | None = None
        self.losses: list[tuple[int, float, float]] = []
        self.validation: list[tuple[int, float]] = []  # (step, validation loss), from `validation` events
        self.samples: list[dict] = []
        self.saved: list[SavedFile] = []
        self.warnings: list[str] = []
        self.errors: list[dict] = []
        self.final: Final | None = None
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self._filter = LogFilter()
        self.started_at: float | None = None
        self.events_seen = 0

    # ---- feeding -------------------------------------------------------------------------
    def feed_line(self, line: str) -> dict | None:
        event = parse_event(line)
        if event is None:
            if line.strip():
                self.add_log(line)
            return None
        self.feed(event)
        return event

    def feed(self, event: dict) -> None:
        kind = event.get("type")
        with self._lock:
            self.events_seen += 1
            if self.started_at is None:
                self.started_at = float(event.get("time") or time.time())
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:      # unknown types are ignored on purpose (forward compatible)
                handler(event)

    def add_log(self, line: str) -> None:
        with self._lock:
            # tqdm redraws with \r; keep only the last state of such a line
            text = line.rstrip("\n").split("\r")[-1]
            if text.strip() and self._filter.keep(text):
                self.log.append(text)

    def _on_plan(self, e: dict) -> None:
        self.plan = e

    def _on_cache(self, e: dict) -> None:
        self.cache = e

    def _on_step(self, e: dict) -> None:
        self.step = e
        loss = e.get("loss")
        if isinstance(loss, (int, float)):
            avg = e.get("avg_loss")
            self.losses.append((int(e.get("step", 0)), float(loss),
                                float(avg) if isinstance(avg, (int, float)) else float(loss)))
            if len(self.losses) > MAX_LOSS_POINTS:   # keep the chart light: drop every other point
                self.losses = self.losses[::2]

    def _on_validation(self, e: dict) -> None:
        loss = e.get("loss")
        if isinstance(loss, (int, float)):
            self.validation.append((int(e.get("step", 0)), float(loss)))
            if len(self.validation) > MAX_LOSS_POINTS:
                self.validation = self.validation[::2]

    def _on_sample(self, e: dict) -> None:
        self.samples.append(e)

    def _on_saved(self, e: dict) -> None:
        verified = e.get("verified")
        self.saved.append(SavedFile(str(e.get("path", "")), int(e.get("size") or 0),
                                    str(e.get("kind", "")),
                                    verified if isinstance(verified, bool) else None))

    def _on_warning(self, e: dict) -> None:
        self.warnings.append(str(e.get("message", "")))

    def _on_error(self, e: dict) -> None:
        self.errors.append(e)

    def _on_done(self, e: dict) -> None:
        self.final = Final(DONE, outputs=list(e.get("outputs") or []))

    def _on_stopped(self, e: dict) -> None:
        self.final = Final(STOPPED, outputs=list(e.get("outputs") or []),
                           message=f"Stopped at step {e.get('step', '?')}.")

    def _on_failed(self, e: dict) -> None:
        self.final = Final(FAILED, message=first_line(e.get("message")), hint=str(e.get("hint", "")),
                           exit_code=e.get("exit_code"))

    # ---- end of process --------------------------------------------------------------------
    def process_exited(self, returncode: int, killed: bool = False) -> Final:
        """Record how the process ended; a run that died without a final event is a failure."""
        with self._lock:
            if self.final is None:
                if killed:
                    self.final = Final(STOPPED, exit_code=returncode,
                                       message="Killed on a second Stop; only files saved before are kept.",
                                       outputs=[s.path for s in self.saved])
                else:
                    last = self.errors[-1] if self.errors else {}
                    self.final = Final(
                        FAILED, exit_code=returncode,
                        message=first_line(last.get("message")) or f"The trainer exited with code {returncode} "
                                    "without reporting an error.",
                        hint=str(last.get("hint") or "Read the last log lines below for the cause."))
            elif self.final.exit_code is None:
                self.final.exit_code = returncode
            if self.final.status == FAILED and self.final.exit_code in (None, 0) and returncode:
                self.final.exit_code = returncode
            return self.final

    # ---- read side ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """A consistent copy for rendering (the runner thread keeps writing)."""
        with self._lock:
            return {
                "plan": dict(self.plan) if self.plan else None,
                "cache": dict(self.cache) if self.cache else None,
                "step": dict(self.step) if self.step else None,
                "losses": list(self.losses),
                "validation": list(self.validation),
                "samples": list(self.samples),
                "saved": list(self.saved),
                "warnings": list(self.warnings),
                "errors": list(self.errors),
                "final": self.final,
                "log": list(self.log),
            }

    def progress_fraction(self) -> float:
        with self._lock:
            if self.final is not None and self.final.status == DONE:
                return 1.0
            if self.step and self.step.get("total"):
                return min(1.0, float(self.step.get("step", 0)) / float(self.step["total"]))
            return 0.0


def load_monitor(events_path: Path, log_path: Path | None = None) -> JobMonitor:
    """Rebuild a monitor from a run folder's saved events (and log) files."""
    monitor = JobMonitor()
    if events_path.is_file():
        with open(events_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                event = parse_event(line)
                if event is not None:
                    monitor.feed(event)
    if log_path is not None and log_path.is_file():
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            for line in deque(fh, maxlen=LOG_LINES):
                monitor.add_log(line)
    return monitor
