"""A test hook that kills the process with SIGKILL at a named moment, so the crash tests can stop a run
exactly mid-save instead of hoping a timer lands there. Standard library only; does nothing unless the
environment variable is set.

    KOHYA_STUDIO_CRASH_AT=before-replace:toy-000002.safetensors   temp file whole, not yet renamed
    KOHYA_STUDIO_CRASH_AT=after-replace:toy-000002-state          state folder in place, model not written
    KOHYA_STUDIO_CRASH_AT=step:5                                  right after optimizer step 5
"""
from __future__ import annotations

import os
import signal

ENV = "KOHYA_STUDIO_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        # SIGKILL: no handler, no finally block, no flush — what a power cut or the OOM killer does
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        os._exit(137)  # Windows has no SIGKILL
