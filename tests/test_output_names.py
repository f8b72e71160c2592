"""The page and the trainer know a run's file names from one function (trainer/output_names.py): the
overwrite guard lists exactly what a training writes, so it never misses a file the trainer would
refuse to start over, nor lists one the trainer would not touch."""
from __future__ import annotations

import io

import pytest
from test_train_support import lora_config, make_dataset

from kohya_gui import launching
from trainer.config import CONFIG_TYPES
from trainer.output_names import model_ext, output_path, state_dir


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_the_page_predicts_every_name_a_training_writes(tmp_path, tiny_model_dir, fresh_accelerator_state):
    from trainer.events import EventWriter
    from trainer.train import run as run_module
    from trainer.train.stop import StopSignal

    out = tmp_path / "out"
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=2), out, epoch=2,
                         save_every_n_epochs=1, save_every_n_steps=1, save_state=True)
    assert launching.existing_outputs(config) == [], "nothing there before the run"
    assert run_module.run_training(config, EventWriter(stream=io.StringIO()), StopSignal()) == 0

    written = {p.name for p in out.iterdir() if p.suffix != ".json"}   # the settings JSON is never a collision
    ext = model_ext(config)
    models = [output_path(out, "toy", ext, "step", step=s) for s in (1, 2, 3)] + [
        output_path(out, "toy", ext, "epoch", epoch=1), output_path(out, "toy", ext, "final")]
    # save_state keeps a state beside each save but the final one (that is save_state_on_train_end)
    predicted = {p.name for p in models} | {state_dir(p).name for p in models[:-1]}
    assert written == predicted
    listed = launching.existing_outputs(config)
    assert {p.name for p in listed} == written and listed[0].name == "toy.safetensors", "the final model first"


@pytest.mark.parametrize("training_type, values, ext", [
    ("lora", {"save_model_as": "ckpt"}, "ckpt"),
    ("dreambooth", {"save_model_as": "diffusers_safetensors"}, ""),        # a folder
    ("textual_inversion", {"save_model_as": "pt", "embedding_format": "a1111"}, "pt"),
    ("textual_inversion", {"save_model_as": "safetensors", "sdxl": True}, "safetensors"),
])
def test_each_kind_names_its_files_as_the_trainer_does(training_type, values, ext, tmp_path):
    from trainer.kinds import create_kind

    config = CONFIG_TYPES[training_type](output_dir=str(tmp_path), output_name="x", token_string="zq", **values) \
        if training_type == "textual_inversion" else CONFIG_TYPES[training_type](output_dir=str(tmp_path),
                                                                                  output_name="x", **values)
    assert model_ext(config) == create_kind(config).output_ext == ext
    final = output_path(tmp_path, "x", ext, "final")
    (final.mkdir() if not ext else final.write_bytes(b"x"))
    state_dir(final).mkdir()
    assert [p.name for p in launching.existing_outputs(config)] == [final.name, state_dir(final).name]
