"""Start and stop one TensorBoard on a run's log folder (kohya_ss's "Start TensorBoard" button).

TensorBoard runs as its own process (`python -m tensorboard.main --logdir DIR`), on the first free
port from 6006, bound to this machine; `start` returns once it answers HTTP, so the URL shown in
the page works. Only the process started here is ever stopped.
"""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

FIRST_PORT = 6006
START_TIMEOUT = 90.0


@dataclass
class Running:
    proc: subprocess.Popen
    logdir: Path
    url: str


def free_port(host: str = "127.0.0.1", first: int = FIRST_PORT, tries: int = 50) -> int:
    for port in range(first, first + tries):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {first}–{first + tries - 1} for TensorBoard")


class TensorBoard:
    def __init__(self, python: str, host: str = "127.0.0.1"):
        self.python, self.host = python, host
        self.running: Running | None = None

    def start(self, logdir: str | Path, timeout: float = START_TIMEOUT) -> str:
        """Start (or restart on another folder) and return its URL; ValueError/OSError say why not."""
        logdir = Path(str(logdir or "").strip()).expanduser()
        if not str(logdir).strip() or not logdir.is_dir():
            raise ValueError(f"log folder '{logdir}' does not exist: set logging_dir in the run's settings, train, "
                             "then point here at that folder")
        if self.running and self.running.proc.poll() is None and self.running.logdir == logdir.resolve():
            return self.running.url
        self.stop()
        port = free_port(self.host)
        proc = subprocess.Popen([self.python, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", self.host,
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://{self.host}:{port}/"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else "")[-1500:]
                raise OSError(f"TensorBoard exited (code {proc.returncode}): {err.strip() or 'no output'}")
            try:
                with urllib.request.urlopen(url + "data/logdir", timeout=2) as r:
                    if r.status == 200:
                        self.running = Running(proc, logdir.resolve(), url)
                        return url
            except OSError:
                time.sleep(0.5)
        proc.terminate()
        proc.wait(timeout=10)
        raise OSError(f"TensorBoard did not answer on {url} within {timeout:.0f} s")

    def stop(self) -> bool:
        if not self.running:
            return False
        proc, self.running = self.running.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return True
