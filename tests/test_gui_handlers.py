"""What the buttons of a training tab do, called the way Gradio calls them (no browser needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohya_gui import checks, launching
from trainer.config import CONFIG_TYPES
from trainer.problems import Problem
from gui_tab import make_tab, raw_values, split_output

KOHYA_JSON = Path(__file__).parent / "data" / "kohya_lora_v26.json"


@pytest.fixture
def tab(tmp_path):
    return make_tab(tmp_path / "ws", tmp_path)


_raw = raw_values


_split = split_output


def test_loading_a_kohya_ss_json_fills_the_form_and_lists_ignored_keys(tab, tmp_path):
    data = json.loads(KOHYA_JSON.read_text())
    data["train_norm"] = True  # LyCORIS norm training changes the run and has no counterpart here
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    fields, summary, plan, confirm, _, message = _split(tab, tab.load(str(path), *_raw(tab)))
    assert fields["network_dim"]["value"] == str(data["network_dim"]), "numbers sit in text boxes"
    assert "Imported the Kohya_ss config" in message and "Ignored" in message
    assert "train_norm" in message, "keys that would change training are named"
    assert "model_list" not in message, "GUI-only keys stay quiet"


def test_loading_a_file_with_bad_values_shows_them_next_to_the_fields(tab, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config_version": 1, "training_type": "lora", "network_dim": 9999,
                               "output_name": "a/b"}))
    fields, summary, *_ , message = _split(tab, tab.load(str(bad), *_raw(tab)))
    assert fields["network_dim"]["value"] == "9999", "the file's value is shown so it can be fixed"
    assert "⚠" in fields["network_dim"]["info"] and fields["network_dim"]["elem_classes"] == ["field-error"]
    assert "problem(s) to fix" in summary and "`network_dim`" in summary
    assert "Loaded `bad.json`" in message


def test_loading_a_config_of_another_training_type_says_which_tab_to_use(tab, tmp_path):
    other = tmp_path / "db.json"
    other.write_text(json.dumps({"config_version": 1, "training_type": "dreambooth"}))
    *_, message = _split(tab, tab.load(str(other), *_raw(tab)))
    assert "dreambooth config" in message and "Dreambooth tab" in message


def test_saved_config_loads_back_identically_and_is_never_overwritten_unasked(tab, tmp_path):
    target = tmp_path / "mine.json"
    raw = _raw(tab, network_dim=32, output_name="mychar", resolution="768")
    assert "Saved" in tab.save(str(target), False, *raw)
    assert "already exists" in tab.save(str(target), False, *_raw(tab))
    assert json.loads(target.read_text())["network_dim"] == 32
    fields, *_ = _split(tab, tab.load(str(target), *_raw(tab)))
    assert (fields["network_dim"]["value"], fields["resolution"]["value"]) == ("32", "768")
    assert "Saved" in tab.save(str(target), True, *_raw(tab))


def test_applying_a_vram_preset_fills_the_form_and_reports_changes(tab):
    fields, *_, message = _split(tab, tab.apply_preset("8 GB VRAM", *_raw(tab)))
    assert fields["network_dim"]["value"] == "16"
    assert "changed" in message and "`network_dim`" in message


def test_start_is_refused_while_problems_remain(tab):
    raw = _raw(tab, output_name="bad/name", train_data_dir="", output_dir="")
    fields, summary, *_, message = _split(tab, tab.start(False, *raw))
    assert "not started" in message
    assert "`output_name`" in summary
    assert tab.ctx.queue.snapshot() == []


def test_paths_are_checked_before_start(tab, tmp_path):
    raw = _raw(tab, train_data_dir=str(tmp_path / "missing"), output_dir=str(tmp_path / "out"),
               pretrained_model_name_or_path=str(tmp_path / "model.safetensors"))
    fields, summary, *_ = _split(tab, tab.check(*raw))
    assert "is not a folder" in fields["train_data_dir"]["info"]
    assert "neither an existing file" in fields["pretrained_model_name_or_path"]["info"]
    assert "problem(s) to fix" in summary


def test_print_training_command_shows_command_and_toml(tab, tmp_path):
    raw = _raw(tab, network_dim=12, output_dir=str(tmp_path / "out"))
    out = tab.print_command(*raw)
    group, command, toml_text = out[-3:]
    assert group["visible"] is True
    # both commands read files that exist: this trainer's TOML and the sd-scripts --config_file TOML
    assert "-m trainer run" in command and "sd-scripts/train_network.py --config_file" in command
    assert "network_dim = 12" in toml_text and 'network_module = "networks.lora"' in toml_text
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(n.startswith("config_lora-") for n in written) and any(n.startswith("kohya-studio_") for n in written)
    for path in (tmp_path / "out").iterdir():
        assert str(path) in command


def test_overwrite_guard_lists_existing_files(tmp_path):
    config = CONFIG_TYPES["lora"](output_dir=str(tmp_path), output_name="mychar")
    assert launching.existing_outputs(config) == []
    (tmp_path / "mychar.safetensors").write_bytes(b"x")
    (tmp_path / "mychar-000001.safetensors").write_bytes(b"x")
    (tmp_path / "other.safetensors").write_bytes(b"x")
    found = [p.name for p in launching.existing_outputs(config)]
    assert found == ["mychar.safetensors", "mychar-000001.safetensors"]
    assert "Confirm and start" in launching.overwrite_message(launching.existing_outputs(config))


def test_summary_says_ready_when_everything_passes():
    result = checks.CheckResult(config=object(), problems=[Problem.at("x", "note", "warning")],
                                preflight_ran=True)
    text = checks.summary_markdown(result, {})
    assert "Ready to train" in text and "1 note(s)" in text


def test_preflight_report_problems_land_on_the_image_folder_field():
    config = CONFIG_TYPES["lora"](train_data_dir="/data/images", reg_data_dir="/data/reg")
    report = {"ok": False, "errors": [{"level": "error", "message": "folder 'mychar' has no <repeats>_ prefix",
                                       "hint": "rename it to 10_mychar\nExpected layout:\n  dataset/", "path":
                                       "/data/images/mychar"}],
              "warnings": [{"level": "warning", "message": "upscaled", "path": "/data/reg/1_x/a.png"}],
              "images": 3, "train_samples_per_epoch": 30, "steps_per_epoch": 30, "epochs": 2, "total_steps": 60,
              "batch_size": 1, "buckets": {"512x512": 3}}
    issues, plan, _ = checks.parse_preflight(report, config)
    assert [(i.field, i.level) for i in issues] == [("train_data_dir", "error"), ("reg_data_dir", "warning")]
    assert plan["total_steps"] == 60
    text = checks.plan_markdown(plan)
    assert "3 images" in text and "**60 steps**" in text and "512x512: 3" in text


def test_folder_without_repeats_prefix_is_shown_on_the_image_folder_field(tab, tmp_path):
    """The trainer's own preflight (a real subprocess) explains the <repeats>_<name> layout in the page."""
    from PIL import Image

    images = tmp_path / "images"
    (images / "mychar").mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(images / "mychar" / "a.png")
    model = tmp_path / "model.safetensors"      # the dataset check only needs the file to exist
    model.write_bytes(b"x")
    raw = _raw(tab, train_data_dir=str(images), output_dir=str(tmp_path / "out"),
               pretrained_model_name_or_path=str(model), resolution="64", enable_bucket=False)
    fields, summary, *_ = _split(tab, tab.check(*raw))
    assert "repeats" in fields["train_data_dir"]["info"] and fields["train_data_dir"]["elem_classes"] == [
        "field-error"]
    assert "problem(s) to fix" in summary and "Expected layout" in summary
    (images / "mychar").rename(images / "5_mychar")
    fields, summary, plan, *_ = _split(tab, tab.check(*raw))
    assert "Ready to train" in summary, summary
    assert "1 images × 5 repeats = 5 samples" in plan
