"""A user's wrong inputs come back as words beside the fields and in the summary, all in one round:
numbers typed as text, values out of range, a missing folder, a base model that cannot be had."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from kohya_gui import checks, modelcheck
from trainer.problems import Problem
from kohya_gui.forms import specs_for, to_python, to_widget
from gui_tab import make_tab, raw_values, split_output

KOHYA_JSON = Path(__file__).parent / "data" / "kohya_lora_v26.json"


@pytest.fixture
def tab(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return make_tab(tmp_path / "ws", tmp_path)


_raw = raw_values


_split = split_output


def test_number_fields_are_text_boxes_so_gradio_never_rejects_a_value_first(tab):
    boxes = [tab.form.components[s.name] for s in tab.form.specs if s.kind in ("int", "float")]
    assert boxes and all(isinstance(b, gr.Textbox) for b in boxes)
    spec = next(s for s in specs_for("lora") if s.name == "epoch")
    assert to_widget(spec, "") == "" and to_python(spec, "") is None
    assert to_python(spec, " 3 ") == 3 and to_python(spec, "fast") == "fast"


def test_a_kohya_ss_file_with_empty_numbers_and_a_zero_batch_loads_with_words_not_errors(tab, tmp_path):
    data = json.loads(KOHYA_JSON.read_text()) | {"max_train_steps": "", "vae_batch_size": 0, "epoch": ""}
    (tmp_path / "k.json").write_text(json.dumps(data))
    fields, summary, *_, message = _split(tab, tab.load(str(tmp_path / "k.json"), *_raw(tab)))
    assert "Imported the Kohya_ss config" in message
    # kohya_ss's "" and vae_batch_size 0 mean "not set": the import gives the defaults sd-scripts used
    assert fields["max_train_steps"]["value"] == "0" and fields["vae_batch_size"]["value"] == "1"
    assert fields["network_dim"]["value"] == str(data["network_dim"])
    for name in ("max_train_steps", "epoch", "vae_batch_size"):
        assert fields[name].get("elem_classes") != ["field-error"], f"{name} loads without an error badge"
        assert "Input should be" not in fields[name].get("info", ""), "never a pydantic message"


def test_out_of_range_and_unparsable_values_are_named_with_the_missing_folder_in_one_round(tab, tmp_path):
    raw = _raw(tab, epoch="-1", learning_rate="fast", train_data_dir=str(tmp_path / "missing"),
               output_dir=str(tmp_path / "out"))
    fields, summary, plan, *_ = _split(tab, tab.check(*raw))
    assert "-1 is out of range" in fields["epoch"]["info"] and fields["epoch"]["elem_classes"] == ["field-error"]
    assert "'fast'" in fields["learning_rate"]["info"]
    assert "is not a folder" in fields["train_data_dir"]["info"], "a value error does not hide the folder"
    assert "`epoch`" in summary and "`learning_rate`" in summary and "`train_data_dir`" in summary
    assert "Ready to train" not in summary and plan == ""


def test_the_summary_keeps_the_whole_sentence_with_its_angle_brackets():
    issue = Problem.at("train_data_dir", "'x' is not a folder; pick the parent of your <repeats>_<name> folders, "
                       "e.g. dataset/images")
    text = checks.summary_markdown(checks.CheckResult(problems=[issue]), {"train_data_dir": "Image folder"})
    assert "&lt;repeats&gt;_&lt;name&gt; folders, e.g. dataset/images" in text


def test_plan_line_says_the_repeat_count():
    plan = {"images": 4, "train_samples_per_epoch": 40, "steps_per_epoch": 20, "epochs": 2, "total_steps": 40,
            "concepts": [{"name": "10_toy", "images": 4, "repeats": 10, "is_reg": False}]}
    assert "4 images × 10 repeats = 40 samples" in checks.plan_markdown(plan)
    plan["concepts"].append({"name": "2_bg", "images": 3, "repeats": 2, "is_reg": False})
    assert "repeats (10_toy: 10, 2_bg: 2)" in checks.plan_markdown(plan)


def test_a_base_model_that_cannot_be_had_is_caught_by_check(tab, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    removed = modelcheck.model_problem("runwayml/stable-diffusion-v1-5")
    assert "removed" in removed.message and "stable-diffusion-v1-5/stable-diffusion-v1-5" in removed.hint
    assert removed.field == "pretrained_model_name_or_path" and removed.is_error
    offline = modelcheck.model_problem("someone/some-model")
    assert "not in the local Hugging Face cache" in offline.message
    assert "does not exist" in modelcheck.model_problem("models/checkpoints/gone.safetensors", field="vae").message
    cached = tmp_path / "hf" / "hub" / "models--someone--some-model" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    assert modelcheck.model_problem("someone/some-model") is None, "a cached id works offline"
    assert modelcheck.model_problem("anyone/any-model", online=lambda: True) is None
    fields, summary, *_ = _split(tab, tab.check(*_raw(tab, pretrained_model_name_or_path="runwayml/stable-diffusion-v1-5")))
    assert "removed from the Hugging Face hub" in fields["pretrained_model_name_or_path"]["info"]
    assert "problem(s) to fix" in summary
