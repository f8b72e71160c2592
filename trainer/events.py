"""The trainer's event stream (docs/events.md): one JSON object per line on stdout, nothing else there.

    events = EventWriter.for_process(events_file="run.jsonl")
    events.emit("plan", images=4, ...)
    events.done(outputs=[...])

Only the main process of a multi-process run writes events (the others get a disabled writer), so
`accelerate launch` — which merges every rank's stdout — still produces one clean stream.
Non-finite floats (a NaN loss) are written as null: the stream stays strict JSON.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from typing import IO, Any

VERSION = 1
# the final event types, declared here only: the GUI (monitor, job queue) imports them from this module
DONE, STOPPED, FAILED = "done", "stopped", "failed"
FINAL_TYPES = (DONE, STOPPED, FAILED)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class EventWriter:
    def __init__(self, stream: IO[str] | None = None, path: str | os.PathLike | None = None, enabled: bool = True):
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stdout
        self._file = open(path, "a", encoding="utf-8") if (path and enabled) else None
        self._lock = threading.Lock()
        self.final: str | None = None  # type of the final event, once one was written

    @classmethod
    def disabled(cls) -> "EventWriter":
        return cls(stream=open(os.devnull, "w"), enabled=False)

    def emit(self, type_: str, **fields: Any) -> dict:
        event = _clean({"v": VERSION, "type": type_, "time": round(time.time(), 3), **fields})
        if type_ in FINAL_TYPES:
            if self.final is not None:
                return event  # exactly one final event per run
            self.final = type_
        if not self.enabled:
            return event
        line = json.dumps(event, ensure_ascii=False) + "\n"
        # a timeout, not a plain acquire: a signal handler may emit while the main thread holds the lock
        locked = self._lock.acquire(timeout=2.0)
        try:
            for out in (self._stream, self._file):
                if out is None:
                    continue
                try:
                    out.write(line)
                    out.flush()
                except (OSError, ValueError):
                    pass  # a closed pipe (the GUI went away) must not kill the training run
        finally:
            if locked:
                self._lock.release()
        return event

    # --- the common events, with their fields spelled once --------------------------------------

    def warning(self, message: str) -> dict:
        return self.emit("warning", message=message)

    def error(self, message: str, hint: str = "") -> dict:
        return self.emit("error", message=message, hint=hint)

    def done(self, outputs: list) -> dict:
        return self.emit("done", outputs=[os.fspath(p) for p in outputs])

    def stopped(self, outputs: list, step: int) -> dict:
        return self.emit("stopped", outputs=[os.fspath(p) for p in outputs], step=step)

    def failed(self, message: str, hint: str = "", exit_code: int = 1) -> dict:
        return self.emit("failed", message=message, hint=hint, exit_code=exit_code)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def claim_stdout_for_events() -> IO[str]:
    """Keep the real stdout for events and point file descriptor 1 at stderr.

    Libraries (and C extensions) that print to stdout would corrupt the JSON stream; after this
    their output lands on stderr with the logs, and only the returned stream reaches the reader.
    """
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")
