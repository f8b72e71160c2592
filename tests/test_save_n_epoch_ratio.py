"""save_n_epoch_ratio (sd-scripts): "save at least about N files" — every floor(epochs / N) epochs, at least every
epoch, in place of save_every_n_epochs; the plan shows the cadence and the run writes exactly those files."""
from __future__ import annotations

import json

from trainer.config import load_config_file, validate_values
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.plan import epoch_save_interval


def test_the_ratio_sets_the_epoch_cadence_from_the_runs_epochs_as_sd_scripts_does():
    assert epoch_save_interval(10, 1, save_n_epoch_ratio=3) == 3  # epochs 3, 6, 9 and the final 10
    assert epoch_save_interval(10, 4, save_n_epoch_ratio=5) == 2  # the ratio replaces save_every_n_epochs
    assert epoch_save_interval(3, 0, save_n_epoch_ratio=5) == 1  # more files asked than epochs: every epoch
    assert epoch_save_interval(10, 4) == 4 and epoch_save_interval(10, 0) == 0  # off: save_every_n_epochs


def test_setting_both_warns_that_save_every_n_epochs_is_not_used():
    config, problems = validate_values("lora", {"save_n_epoch_ratio": 2, "save_every_n_epochs": 3})
    assert config is not None
    assert [(p.field, p.level) for p in problems if "save_n_epoch_ratio" in p.message] == [
        ("save_every_n_epochs", "warning")]


def test_a_kohya_ss_json_passing_it_as_an_additional_parameter_imports_and_exports_it(tmp_path):
    data = json.loads(open("tests/data/kohya_lora_v26.json").read())
    path = tmp_path / "lora.json"
    path.write_text(json.dumps({**data, "additional_parameters": "--save_n_epoch_ratio 5"}))
    loaded = load_config_file(path)
    assert loaded.config.save_n_epoch_ratio == 5 and not loaded.ignored_keys
    assert sd_scripts_export(loaded.config).toml_data["save_n_epoch_ratio"] == 5


def test_a_run_with_a_ratio_saves_the_epochs_the_plan_shows(tmp_path, tiny_model_dir):
    from test_train_support import lora_config, make_dataset, run_trainer, trainer_cli, write_config

    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=2), tmp_path / "out",
                         epoch=4, save_every_n_epochs=0, save_n_epoch_ratio=2)
    path = write_config(config, tmp_path / "run.json")
    plan = trainer_cli("plan", str(path), "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["save_every_n_epochs"] == 2
    rc, events, err = run_trainer(path)
    assert rc == 0, err
    written = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert written == ["toy-000002.safetensors", "toy.safetensors"]
