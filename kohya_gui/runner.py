"""One trainer subprocess: start it, stream its events and log, stop it gracefully or kill it.

Stop semantics (docs/events.md): the first Stop sends SIGINT, which the trainer answers by saving a
usable `NAME-stopped.safetensors` and exiting with a `stopped` event; a second Stop kills the whole
process group (accelerate launch and its child) at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .monitor import JobMonitor

IS_WINDOWS = os.name == "nt"


class TrainerProcess:
    """Runs `argv`, feeding stdout lines (events) and stderr lines (log) to a JobMonitor.

    Every event line is appended to `events_path` and every log line to `log_path`, so the run can
    be inspected (and the monitor rebuilt) after the GUI restarts.
    """

    def __init__(self, argv: list[str], *, cwd: Path, events_path: Path, log_path: Path,
                 monitor: JobMonitor | None = None, env: dict | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.cwd = Path(cwd)
        self.events_path = Path(events_path)
        self.log_path = Path(log_path)
        self.monitor = monitor or JobMonitor()
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.stop_requests = 0
        self.killed = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        kwargs: dict = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True   # own process group: Stop reaches accelerate's child too
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write("$ " + " ".join(self.argv) + "\n")
        self.proc = subprocess.Popen(
            self.argv, cwd=str(self.cwd), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            errors="replace", bufsize=1, **kwargs)
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        with open(self.events_path, "a", encoding="utf-8") as out:
            for line in self.proc.stdout:
                event = self.monitor.feed_line(line)
                if event is not None:
                    out.write(line if line.endswith("\n") else line + "\n")
                    out.flush()
                elif line.strip():
                    self._append_log(line)

    def _pump_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in self.proc.stderr:
                self.monitor.add_log(line)
                log.write(line)
                log.flush()

    def _append_log(self, line: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(line)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> str:
        """First call: ask for a graceful stop. Second call: kill. Returns what was done."""
        if not self.running:
            return "not running"
        self.stop_requests += 1
        if self.stop_requests == 1:
            self._signal_graceful()
            return "graceful"
        self._kill()
        return "killed"

    def _signal_graceful(self) -> None:
        assert self.proc
        try:
            if IS_WINDOWS:
                self.proc.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                os.killpg(self.proc.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _kill(self) -> None:
        assert self.proc
        self.killed = True
        try:
            if IS_WINDOWS:
                self.proc.kill()
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process and its pipes; record the end in the monitor."""
        assert self.proc
        returncode = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=10)
        self.monitor.process_exited(returncode, killed=self.killed)
        return returncode


def python_executable() -> str:
    return sys.executable
