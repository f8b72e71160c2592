"""kill -9 at any moment — mid model save, mid state save, between the two, between steps — and the run
still resumes from its newest state, ends bit-identical to an uninterrupted run, and leaves no temp files.

The kills land exactly where asked through the KOHYA_STUDIO_CRASH_AT hook (trainer/crashpoints.py):
SIGKILL from inside the process at a named point, so no timer has to hit a few milliseconds of saving.
One chain of runs: each is killed at the next of the chosen points, then resumed by the next run. The runs
are forked children of the worker's pre-imported trainer (tests/trainer_forks.py): a kill takes only the child.
"""
from __future__ import annotations

import json
import os
import random
import signal

import torch
from test_train_support import lora_config, lora_tensors, make_dataset, run_trainer, write_config

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

    settings = dict(epoch=EPOCHS, save_every_n_epochs=1, save_every_n_steps=EVERY_N_STEPS, save_state=True)
    rc, _, err = run_trainer(write_config(lora_config(model, data, tmp_path / "whole", **settings),
                                          tmp_path / "whole.json"))
    assert rc == 0, f"the uninterrupted run: exit {rc}\n{err[-3000:]}"
    out = tmp_path / "crashed"
    for n, point in enumerate(trials + [None]):  # each run resumes the newest state, then is killed at `point`
        resume = newest_state(out) if out.exists() else None
        config = lora_config(model, data, out, **settings, **({"resume": resume} if resume else {}))
        rc, _, err = run_trainer(write_config(config, tmp_path / f"c{n}.json"),
                                 env_extra={"KOHYA_STUDIO_CRASH_AT": point} if point else None)
        expected_rc = -signal.SIGKILL if point else 0
        assert rc == expected_rc, f"{point or 'the last run'}: exit {rc}, expected {expected_rc}\n{err[-3000:]}"

    assert [p for p in os.listdir(out) if p.startswith(".")] == [], "leftovers of the kills"
    expected, got = results(tmp_path / "whole"), results(out)
    assert got.keys() == expected.keys()
    for name in expected:  # bit-exact on CPU: every step is a function of (weights, batch, step number)
        for key in expected[name]:
            assert torch.equal(expected[name][key], got[name][key]), (name, key)


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
