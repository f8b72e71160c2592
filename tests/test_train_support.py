"""Shared pieces of the training tests (no tests here): a tiny SD1 model, a toy dataset, configs, and running the
trainer as a real subprocess while reading its event stream."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def make_dataset(folder: Path, images: int = 4, repeats: int = 1, size: int = 64) -> Path:
    """train_data_dir with one concept folder `<repeats>_toy` of coloured shapes + captions."""
    from trainer.train.demo import SHAPES, draw

    concept = folder / f"{repeats}_toy"
    concept.mkdir(parents=True)
    for i in range(images):
        colour, shape = SHAPES[i % len(SHAPES)]
        draw(colour, shape).resize((size, size)).save(concept / f"toy_{i:02d}.png")
        (concept / f"toy_{i:02d}.txt").write_text(f"toy, {colour} {shape}\n", encoding="utf-8")
    return folder


def lora_config(model: Path, data: Path, out: Path, **overrides):
    from trainer.config import parse_config

    values = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "output_name": "toy", "resolution": "64", "enable_bucket": False, "min_bucket_reso": 64,
        "max_bucket_reso": 128, "bucket_reso_steps": 32, "train_batch_size": 1, "epoch": 2,
        "save_every_n_epochs": 1, "network_dim": 4, "network_alpha": 4, "optimizer": "AdamW",
        "learning_rate": 1e-3, "lr_scheduler": "constant", "lr_warmup": 0, "mixed_precision": "no",
        "save_precision": "float", "seed": 7, "cache_latents": True, "num_cpu_threads_per_process": 1,
    }
    values.update(overrides)
    return parse_config("lora", values)


def write_config(config, path: Path) -> Path:
    from trainer.config import save_config_json

    return save_config_json(config, path)


def env() -> dict:
    # keep any PYTHONPATH already set (e.g. packages installed beside the interpreter's own)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, TOKENIZERS_PARALLELISM="false")
    e.pop("RANK", None)
    return e


def run_trainer(config_path: Path, *extra: str, timeout: float = 180, fresh: bool = False,
                env_extra: dict | None = None) -> tuple[int, list[dict], str]:
    """Run `python -m trainer run` to the end: (exit code, events, stderr)."""
    proc = trainer_cli("run", str(config_path), *extra, timeout=timeout, fresh=fresh, env_extra=env_extra)
    return proc.returncode, parse_events(proc.stdout), proc.stderr


def trainer_cli(*args: str, timeout: float = 180, fresh: bool = False,
                env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` to the end: a forked child of this worker's pre-imported trainer
    (tests/trainer_forks.py), or with `fresh` a new interpreter, as the studio starts it. `env_extra`:
    variables added to the child's environment (e.g. KOHYA_STUDIO_CRASH_AT)."""
    child_env = {**env(), **(env_extra or {})}
    if fresh or not hasattr(os, "fork"):
        return subprocess.run([PYTHON, "-m", "trainer", *args], cwd=ROOT, env=child_env, capture_output=True,
                              text=True, timeout=timeout)
    from trainer_forks import trainer_forks

    code, out, err = trainer_forks(env()).run(list(args), timeout, child_env)
    return subprocess.CompletedProcess(["python", "-m", "trainer", *args], code, out, err)


def parse_events(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON event (the contract of docs/events.md)."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


class LiveRun:
    """A trainer subprocess whose events are read as they come (for signals and mid-run faults)."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.events: list[dict] = []

    @classmethod
    def trainer(cls, config_path: Path) -> "LiveRun":
        return cls([PYTHON, "-m", "trainer", "run", str(config_path)])

    def wait_for(self, predicate, timeout: float = 120) -> dict:
        import select
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            self.events.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"event not seen; events so far: {[e['type'] for e in self.events]}; "
                             f"stderr: {self.proc.stderr.read()[-3000:] if self.proc.poll() is not None else ''}")

    def finish(self, timeout: float = 120) -> tuple[int, list[dict], str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.events += parse_events(out)
        return self.proc.returncode, self.events, err


def lora_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
