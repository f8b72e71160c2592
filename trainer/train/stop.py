"""Stop signals: the first SIGINT/SIGTERM asks for a graceful stop at the next step boundary,
a second one aborts at once."""
from __future__ import annotations

import logging
import signal

logger = logging.getLogger(__name__)


class AbortRequested(BaseException):
    """A second stop signal: leave now (BaseException so no `except Exception` swallows it)."""


class StopSignal:
    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def install(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test helper thread)
                pass
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def request(self, reason: str = "request") -> None:
        self.requested = True
        self.signal_name = self.signal_name or reason

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            raise AbortRequested(f"{name} received again while stopping")
        self.requested = True
        self.signal_name = name
        logger.warning("%s received: stopping after the current step and saving (send it again to abort now)",
                       name)
