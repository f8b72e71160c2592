"""kill -9 at any moment — mid model save, mid state save, between the two, between steps — and the run
still resumes from its newest state, ends bit-identical to an uninterrupted run, and leaves no temp files.

The kills land exactly where asked through the KOHYA_STUDIO_CRASH_AT hook (trainer/crashpoints.py):
SIGKILL from inside the process at a named point, so no timer has to hit a few milliseconds of saving.
One chain of runs: each is killed at the next of the chosen points, then resumed by the next run.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess

import torch
from test_train_support import PYTHON, ROOT, env, lora_config, lora_tensors, make_dataset, run_trainer, write_config

EPOCHS, IMAGES, EVERY_N_STEPS = 4, 4, 3  # 16 steps; saves at steps 3, 6, 9, 12, 15 and epochs 1-3


def points_in_run_order() -> list[str]:
    """Every crash point an uninterrupted run passes, in the order it passes them."""
    def save(name: str) -> list[str]:
        return [f"before-replace:{name}-state", f"after-replace:{name}-state",
                f"before-replace:{name}.safetensors", f"after-replace:{name}.safetensors"]

    total = EPOCHS * IMAGES
    points = []
    for step in range(1, total + 1):
        points.append(f"step:{step}")
        if step % EVERY_N_STEPS == 0 and step < total:
            points += save(f"toy-step{step:08d}")
        if step % IMAGES == 0 and step < total:
            points += save(f"toy-{step // IMAGES:06d}")
    return points + ["before-replace:toy.safetensors"]


def newest_state(out) -> str | None:
    states = [(json.loads((d / "train_state.json").read_text())["global_step"], str(d))
              for d in out.glob("*-state") if (d / "train_state.json").is_file()]
    return max(states)[1] if states else None


def results(out) -> dict:
    return {p.name: lora_tensors(p) for p in out.glob("*.safetensors")}


def test_kill_9_at_any_moment_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir):
    model, data = tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=IMAGES)
    pool = points_in_run_order()
    must = ["before-replace:toy-000001-state", "after-replace:toy-step00000006-state",
            "before-replace:toy-step00000009.safetensors", "before-replace:toy.safetensors"]
    chosen = set(must) | set(random.Random(16).sample([p for p in pool if p not in must], 8))
    trials = [p for p in pool if p in chosen]  # in run order: each kill lies ahead of the last resume
    assert len(trials) >= 10

    # one interpreter imports torch & co once and forks a child per run (kill -9 takes only the child)
    args = [str(model), str(data), str(tmp_path), json.dumps(trials)]
    proc = subprocess.run([PYTHON, __file__, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = json.loads(proc.stdout.splitlines()[-1])
    for point, (status, log) in zip(trials + ["whole", "last"], statuses):
        if point in ("whole", "last"):
            assert status == 0, f"{point}: exit {status}\n{log}"
        else:
            assert status == -signal.SIGKILL, f"{point}: not killed there (exit {status})\n{log}"

    out = tmp_path / "crashed"
    assert [p for p in os.listdir(out) if p.startswith(".")] == [], "leftovers of the kills"
    expected, got = results(tmp_path / "whole"), results(out)
    assert got.keys() == expected.keys()
    for name in expected:  # bit-exact on CPU: every step is a function of (weights, batch, step number)
        for key in expected[name]:
            assert torch.equal(expected[name][key], got[name][key]), (name, key)


def run_forked(config, path, crash_at: str | None) -> tuple[int, str]:
    """`python -m trainer run` in a forked child of this (already importing) interpreter."""
    from trainer.__main__ import main

    config_path = write_config(config, path)
    log = path.with_suffix(".log")
    pid = os.fork()
    if pid == 0:  # the child: its own stdout/stderr, the crash hook, and never back into the parent's code
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if crash_at:
                os.environ["KOHYA_STUDIO_CRASH_AT"] = crash_at
            code = main(["run", str(config_path)])
        except BaseException:  # noqa: BLE001
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, log.read_text(errors="replace")[-3000:]


def chain(model: str, data: str, tmp: str, trials: list[str]) -> list:
    """The uninterrupted run, then one run per kill point, each resuming the newest state, then the last."""
    from pathlib import Path

    import trainer.train.run  # noqa: F401 — imported once, before any fork

    tmp = Path(tmp)
    settings = dict(epoch=EPOCHS, save_every_n_epochs=1, save_every_n_steps=EVERY_N_STEPS, save_state=True)
    statuses = [run_forked(lora_config(model, data, tmp / "whole", **settings), tmp / "whole.json", None)]
    out = tmp / "crashed"
    for n, point in enumerate(trials + [None]):
        resume = newest_state(out) if out.exists() else None
        config = lora_config(model, data, out, **settings, **({"resume": resume} if resume else {}))
        statuses.append(run_forked(config, tmp / f"c{n}.json", point))
    return statuses[1:] + statuses[:1]


def test_resuming_an_older_state_takes_over_the_later_files_of_the_same_run(tmp_path, tiny_model_dir):
    """A model file no state lists (an older version wrote it before its state and was killed; or the user
    picked an older state) is rewritten by the resume that redoes its step, not refused as 'another run's'."""
    model, data = tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=IMAGES)
    settings = dict(epoch=3, save_every_n_epochs=1, save_state=True)
    out = tmp_path / "out"
    rc, _, err = run_trainer(write_config(lora_config(model, data, out, **settings), tmp_path / "a.json"))
    assert rc == 0, err[-3000:]
    expected = results(out)
    resumed = lora_config(model, data, out, resume=str(out / "toy-000001-state"), **settings)
    rc, events, err = run_trainer(write_config(resumed, tmp_path / "b.json"))
    assert rc == 0, err[-3000:]
    assert results(out).keys() == expected.keys()
    for name, tensors in results(out).items():
        assert all(torch.equal(expected[name][k], t) for k, t in tensors.items()), name

    # the same name written by another session is still refused
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out / "toy-000002.safetensors"), framework="pt") as fh:
        meta = dict(fh.metadata(), ss_session_id="12345")
    save_file(results(out)["toy-000002.safetensors"], str(out / "toy-000002.safetensors"), metadata=meta)
    rc, events, _ = run_trainer(write_config(resumed, tmp_path / "d.json"))
    assert rc == 1 and "toy-000002.safetensors" in events[-1]["message"]


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    print(json.dumps(chain(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
