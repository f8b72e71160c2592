"""Atomic writes: a temp file in the destination folder, then os.replace — a crash, a full disk or a
Ctrl-C never leaves half a file, and the previous version stays intact until the new one is whole.
Standard library only, so the GUI and the captioners use it too.

Files get the permissions of a plain open() — 0666 less the user's umask — not mkstemp's 0600, so a
WebUI running as another user can read the LoRA. A crash (kill -9) can leave a hidden temp entry
`.NAME.<random>.tmp<suffix>` (or a folder `.NAME.<random>.tmp` / `.NAME.<random>.old`); the trainer
removes its own at its next start (trainer/train/leftovers.py)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from trainer.crashpoints import crash_point


def _umask() -> int:
    """The process umask: from /proc where there is one (reading it with os.umask means setting it, which
    races with other threads), else set it and straight back."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; when the block succeeds it is synced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        crash_point(f"before-replace:{path.name}")
        os.replace(tmp, path)
        crash_point(f"after-replace:{path.name}")
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename:  # a write() error names no file: name the target
            if exc.errno is not None:
                exc.filename = str(path)
            else:  # an errno-less OSError prints its args only: keep its words, add the file
                exc.args = (f"{exc} (writing {path})",)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return Path(path)


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder next to `folder`; on success it takes the folder's place. An existing folder
    is moved aside first and removed only once the new one is in place, so one of them always exists.
    (Callers decide whether replacing is allowed; this never asks.)"""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name[:80]}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        crash_point(f"before-replace:{folder.name}")
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name[:80]}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        crash_point(f"after-replace:{folder.name}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
