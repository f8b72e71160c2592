"""A config file of the wrong shape gets one line naming the file and what is wrong — never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

import trainer.config as tc
from test_train_support import ROOT, env

SHAPES = {
    "version_negative.json": ('{"config_version": -1, "training_type": "lora"}', "-1 is not a config version"),
    "version_text.json": ('{"config_version": "1", "training_type": "lora"}', "'1' is not a config version"),
    "null.json": ("null", "holds null at the top"),
    "list.json": ("[1, 2]", "holds a list at the top"),
    "string.json": ('"lora"', "holds a string at the top"),
    "deep.json": ("[" * 50000 + "]" * 50000, "nested too deeply"),
    "deep_object.json": ('{"a": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),
    "bad.toml": ("training_type = 'lora'\nx = \"C:\\x\"", "not valid TOML"),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_config_of_the_wrong_shape_is_one_clear_problem(tmp_path, name):
    text, expected = SHAPES[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(tc.ConfigError) as info:
        tc.load_config_file(path)
    message = str(info.value)
    assert expected in message and str(path) in message


def test_the_command_line_says_so_without_a_traceback(tmp_path):
    path = tmp_path / "null.json"
    path.write_text("null", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "trainer", "plan", str(path)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert "null.json holds null at the top" in proc.stdout + proc.stderr


def test_twenty_thousand_unknown_keys_are_counted_not_listed_one_by_one():
    values = {"training_type": "lora", "config_version": 1, **{f"unknown_key_{i}": i for i in range(20000)}}
    with pytest.raises(tc.ConfigError) as info:
        tc.config_from_dict(values, source="huge.json")
    lines = str(info.value).splitlines()
    # each listed key is compared with every option name (difflib): 20,000 of them took 15-40 s
    assert len(lines) == 22 and "19980 more unknown options" in lines[-1]


@pytest.mark.parametrize("values,field,limit", [
    ({"max_train_steps": 10**15}, "max_train_steps", "10000000"),   # passed, then MemoryError after 6.9 GB
    ({"resolution": "100000"}, "resolution", "8192"),              # passed, then "files changed after ..."
    ({"resolution": "100000", "enable_bucket": False}, "resolution", "8192"),
])
def test_values_beyond_what_can_run_are_refused_naming_the_limit(values, field, limit):
    with pytest.raises(tc.ConfigError) as info:
        tc.parse_config("lora", values)
    problem = next(p for p in info.value.problems if p.field == field)
    assert limit in problem.message


def test_a_run_longer_than_any_can_finish_stops_before_training_naming_the_limit():
    """400,000 steps an epoch (folder 100000_name) × 10,000 epochs: each option is in range, the product is not."""
    from types import SimpleNamespace

    from trainer.train.faults import TrainingFault
    from trainer.train.setup import plan_event

    config = tc.LoraConfig(epoch=10000)
    dataset = SimpleNamespace(samples_per_epoch=lambda: (400_000, 0))
    steps = SimpleNamespace(steps_per_epoch=lambda: 400_000)
    with pytest.raises(TrainingFault) as info:
        plan_event(config, dataset, steps, None, None)
    assert "4,000,000,000 steps" in info.value.message and "10,000,000" in info.value.message
