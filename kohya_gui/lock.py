"""One studio per workspace: a second server on the same folder would run a second training at once and
its queue.json writes would wipe the first one's jobs. The first studio holds an OS lock on
`<workspace>/studio.lock` (released by the OS when the process dies, even by kill -9, so a crash never
leaves a stale lock); a second one is told which process holds it and does not start.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class WorkspaceBusy(RuntimeError):
    pass


class WorkspaceLock:
    def __init__(self, workspace: Path):
        self.path = Path(workspace) / "studio.lock"
        self._fh = None

    def acquire(self, url: str = "") -> "WorkspaceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            _lock(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read()
            fh.close()
            raise WorkspaceBusy(f"Another studio is already using the workspace {self.path.parent} "
                                f"({describe(holder)}). Use that one, stop it first, or start this one with "
                                "--workspace OTHER_FOLDER.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "url": url,
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            _unlock(self._fh)
            self._fh.close()
            self._fh = None


def describe(holder: str) -> str:
    try:
        info = json.loads(holder)
    except ValueError:
        return "its details are unreadable"
    where = f", serving {info['url']}" if info.get("url") else ""
    return f"process {info.get('pid')} on {info.get('host')}, started {info.get('started')}{where}"


def _lock(fh) -> None:
    try:
        import fcntl
    except ModuleNotFoundError:  # Windows
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fh) -> None:
    try:
        import fcntl
    except ModuleNotFoundError:
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
