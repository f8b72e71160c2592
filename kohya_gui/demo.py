"""The Demo preset: a tiny generated model and a small synthetic dataset, trainable on a CPU in seconds.

`python -m trainer demo DIR` (the trainer's command) writes the model, the dataset and
`demo_lora.json`; the GUI runs it once into `<workspace>/demo/` and loads that config into the form.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

DEMO_CONFIG = "demo_lora.json"
DEMO_TIMEOUT = 300


class DemoError(RuntimeError):
    pass


def demo_dir(workspace: Path) -> Path:
    return Path(workspace) / "demo"


def prepare_demo(python: str, workspace: Path, cwd: Path | None = None) -> Path:
    """Create the demo files unless they are already there; return the demo config's path."""
    folder = demo_dir(workspace)
    config = folder / DEMO_CONFIG
    if config.is_file():
        return config
    try:
        proc = subprocess.run([python, "-m", "trainer", "demo", str(folder)], capture_output=True, text=True,
                              timeout=DEMO_TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"Creating the demo took longer than {DEMO_TIMEOUT} s.") from exc
    if proc.returncode != 0 or not config.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise DemoError(f"Creating the demo failed (exit code {proc.returncode}):\n{tail}")
    return config
