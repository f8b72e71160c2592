"""One problem type from every check to the page: a config rule, a dataset check and the base-model
check each hand over a `trainer.problems.Problem` (level, message, hint, field, path), and the page
renders them all the same way."""
from __future__ import annotations

import json

from kohya_gui import checks, modelcheck
from test_data_helpers import make_cfg, make_concept
from trainer.config import validate_values
from trainer.data import preflight
from trainer.problems import Problem


def test_a_config_rule_a_dataset_check_and_the_model_check_report_the_same_type(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _, rule = validate_values("lora", {"full_fp16": True, "full_bf16": True})
    img = make_concept(tmp_path / "img", "sks dog", 1, size=(64, 64))   # no <repeats>_ prefix
    dataset = preflight(make_cfg(train_data_dir=str(img.parent), resolution="64"))
    model = modelcheck.model_problem("runwayml/stable-diffusion-v1-5", field="pretrained_model_name_or_path")

    found = [rule[0], Problem.from_dict(dataset.errors[0]), model]
    assert all(type(p) is Problem for p in found)
    assert (rule[0].field, model.field) == ("full_bf16", "pretrained_model_name_or_path"), "each names its option"
    assert found[1].path and "<repeats>_" in found[1].message and found[1].hint, "the data check names the folder"
    assert model.hint.startswith("Use 'stable-diffusion-v1-5/"), "the model check says the fix"

    text = checks.summary_markdown(checks.CheckResult(problems=[rule[0], model]), {})
    assert "full_fp16 and full_bf16" in text and "↳ Use 'stable-diffusion-v1-5/" in text


def test_a_problem_survives_the_trip_through_the_preflight_json():
    sent = Problem("skipped", "0 bytes", "delete or replace the file", path="/data/1_x/a.png", field="train_data_dir")
    assert Problem.from_dict(json.loads(json.dumps(sent.to_dict()))) == sent
    assert Problem.from_dict({"severity": "warning", "message": "m"}).level == "warning", "older reports still read"
    assert str(sent) == "/data/1_x/a.png: 0 bytes — delete or replace the file"
    assert str(Problem.at("epoch", "-1 is out of range")) == "epoch: -1 is out of range"
