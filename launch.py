#!/usr/bin/env python3
"""Start the studio on a fresh machine: `python launch.py [--listen 0.0.0.0 --server_port 7860 ...]`.

First run: creates `.venv` (unless already inside a virtual environment), installs the project into
it, and re-runs itself there. Later runs start at once (the install is redone only when
pyproject.toml changes). `python launch.py --test [pytest args]` runs the test suite the same way.
Every other flag is passed to the GUI (`python -m kohya_gui --help` lists them).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"


def in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pyproject_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]


def ensure_installed(extras: str) -> None:
    """pip install the project (editable) into the running environment unless already done.

    The stamp records the pyproject digest and the extras installed: a plain start after `--test`
    (which installs more) does not reinstall."""
    stamp_file = Path(sys.prefix) / ".kohya-studio-install"
    digest, _, done = (stamp_file.read_text().strip() if stamp_file.exists() else "").partition(":")
    if digest == pyproject_digest() and (not extras or extras == done):
        return
    wanted = f"{pyproject_digest()}:{extras}"
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    print(f"[launch] installing kohya-studio{f'[{extras}]' if extras else ''} into {sys.prefix} "
          "(first start only; torch is the large part)", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-e", target]
    if subprocess.call(cmd, cwd=ROOT) != 0:
        sys.exit("[launch] installing the dependencies failed; the pip output above says which package. "
                 "Fix that (or your network) and run launch.py again.")
    # open_clip ships CLIP's BPE vocabulary, which lets single-file checkpoints load with no hub access.
    # Only that data file is used, so its heavy dependencies (torchvision) are not installed.
    subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
                     "open-clip-torch>=2.20"], cwd=ROOT)
    stamp_file.write_text(wanted)


def run(cmd: list[str]) -> int:
    """Run cmd in place of this process where the OS allows (POSIX exec): a SIGTERM from docker stop or
    systemd then reaches the studio itself, which stops its running job gracefully; a launcher waiting
    in between would die and leave the studio to be killed."""
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str]) -> int:
    testing = bool(argv) and argv[0] == "--test"
    if not in_virtualenv():
        if not venv_python().exists():
            print(f"[launch] creating a virtual environment in {VENV}", flush=True)
            venv.create(VENV, with_pip=True)
        os.chdir(ROOT)
        return run([str(venv_python()), str(Path(__file__).resolve()), *argv])
    ensure_installed("test" if testing else "")
    if testing:
        os.chdir(ROOT)
        return run([sys.executable, "-m", "pytest", *argv[1:]])
    os.chdir(ROOT)
    return run([sys.executable, "-m", "kohya_gui", *argv])


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
