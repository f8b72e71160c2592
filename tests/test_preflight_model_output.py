"""Preflight (CLI and the page's Check) stops a run whose base model is not there or whose output
folder is not chosen — the CLI used to train into the current folder without a word."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.test_train_support import ROOT, env, lora_config, make_dataset, write_config


def _preflight(path):
    proc = subprocess.run([sys.executable, "-m", "trainer", "preflight", str(path), "--json"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def test_a_missing_base_model_and_an_empty_output_folder_are_errors(tmp_path):
    config = lora_config(tmp_path / "no-such-model.safetensors", make_dataset(tmp_path / "data"), tmp_path / "x")
    config.output_dir = ""
    code, report = _preflight(write_config(config, tmp_path / "c.json"))
    assert code == 1 and not report["ok"]
    fields = {e["field"]: e["message"] for e in report["errors"]}
    assert "neither an existing file" in fields["pretrained_model_name_or_path"]
    assert "no output folder chosen" in fields["output_dir"]


def test_a_hub_id_and_a_chosen_output_folder_pass(tmp_path, tiny_model_dir):
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), tmp_path / "out")
    code, report = _preflight(write_config(config, tmp_path / "c.json"))
    assert code == 0 and report["ok"], report["errors"]
    config.pretrained_model_name_or_path = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # checked at load time
    code, report = _preflight(write_config(config, tmp_path / "c2.json"))
    assert code == 0, report["errors"]
