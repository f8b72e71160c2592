"""Pressing Start again over earlier results: the page asks, and a confirmed overwrite moves the old
files aside (nothing is deleted) so the trainer, which never overwrites, trains again."""
from __future__ import annotations

import pytest

from kohya_gui import launching
from kohya_gui.forms import to_widget
from trainer.config import CONFIG_TYPES
from trainer.train.saving import SavePolicy, check_no_collisions
from gui_tab import make_tab


def test_every_name_the_trainer_would_refuse_is_listed_and_moved_aside(tmp_path):
    config = CONFIG_TYPES["lora"](output_dir=str(tmp_path), output_name="toy", save_every_n_epochs=1)
    names = ["toy.safetensors", "toy-000001.safetensors", "toy-stopped.safetensors", "toy-stopped-state",
             "toy-step00000010.safetensors"]
    for name in names:
        (tmp_path / name).mkdir() if name.endswith("-state") else (tmp_path / name).write_bytes(b"x")
    (tmp_path / "toy-other.safetensors").write_bytes(b"another run's file")
    (tmp_path / "toyota.safetensors").write_bytes(b"another name")
    found = launching.existing_outputs(config)
    assert [p.name for p in found][0] == "toy.safetensors" and sorted(p.name for p in found) == sorted(names)
    folder = launching.move_aside(found, config)
    assert folder.name.startswith("toy.replaced-") and sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert (tmp_path / "toy-other.safetensors").exists() and (tmp_path / "toyota.safetensors").exists()
    policy = SavePolicy.from_config(config)
    check_no_collisions(policy, epochs=2, total_steps=20, owned=set())   # the trainer now finds the names free
    assert launching.existing_outputs(config) == []


@pytest.fixture
def tab(tmp_path):
    return make_tab(tmp_path / "ws", tmp_path)


def test_start_asks_then_a_confirmed_start_moves_the_old_result_and_queues(tab, tmp_path):
    from PIL import Image

    images = tmp_path / "images" / "5_toy"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(images / "a.png")
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "toy.safetensors").write_bytes(b"first run")
    values = tab.form.initial_values() | dict(train_data_dir=str(images.parent), output_dir=str(out), output_name="toy",
                                              pretrained_model_name_or_path=str(model), resolution="64",
                                              enable_bucket=False)
    raw = [to_widget(s, values[s.name]) for s in tab.form.specs]
    n = len(tab.form.specs)
    first = tab.start(False, *raw)
    assert first[n + 2]["visible"] is True and "toy.safetensors" in first[n + 3]
    assert tab.ctx.queue.snapshot() == [] and (out / "toy.safetensors").read_bytes() == b"first run"
    second = tab.start(True, *raw)
    assert "paused queue" in second[-1] and "moved to" in second[-1]
    kept = next(out.glob("toy.replaced-*")) / "toy.safetensors"
    assert kept.read_bytes() == b"first run" and not (out / "toy.safetensors").exists()
    assert len(tab.ctx.queue.snapshot()) == 1
