"""SIGTERM and SIGHUP (docker stop, systemd, a closed terminal) stop the studio the way Ctrl-C stops a
run: the running job is asked to stop gracefully — it finishes its step and saves a usable `-stopped`
LoRA and its state — and the studio exits once the trainer has. Without this the default action ends
the studio at once, and the trainer dies on its broken output pipe with nothing saved.
(`docker stop` waits 10 s before SIGKILL: give it `-t 120` or more for a large model.)
"""
from __future__ import annotations

import signal
import sys

STOP_TIMEOUT_S = 600.0  # a step of a large model plus the save; the trainer is killed only after this


def stop_jobs_on_signals(queue, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Install the handlers (main thread only); returns the names of the signals handled."""
    names = []

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        busy = queue.is_busy()
        print(f"[kohya_gui] {name}: " + ("stopping the running job (it saves its LoRA and state), then exiting"
                                         if busy else "exiting"), file=sys.stderr, flush=True)
        queue.shutdown(timeout=timeout)
        queue.wait_idle(timeout=30)  # the queue records the job as stopped before the process ends
        raise SystemExit(0)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)
            names.append(name)
    return names
