"""A user brings sd-scripts' custom learning-rate scheduler (`lr_scheduler_type`, e.g. CosineAnnealingLR
with "T_max=… eta_min=…") or its schedule-shape arguments (`--lr_scheduler_min_lr_ratio`, `--lr_decay_steps`,
`--lr_scheduler_timescale`) from a Kohya_ss config."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.config import config_for, validate_values
from trainer.config.kohya_import import import_kohya_json
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.train.faults import TrainingFault
from trainer.train.optimizers import build_optimizer
from trainer.train.schedulers import build_scheduler


def _optimizer(lr=1e-2):
    model = torch.nn.Linear(2, 1)
    return build_optimizer("AdamW", [{"params": list(model.parameters()), "lr": lr}], lr)


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(scheduler.get_last_lr()[0])
    return out


def test_a_torch_scheduler_named_by_its_class_shapes_the_learning_rate_per_optimizer_step():
    config = config_for("lora", learning_rate=1e-2, lr_warmup=0, lr_scheduler_type="CosineAnnealingLR",
                        lr_scheduler_args="T_max=20 eta_min=1e-4")
    optimizer = _optimizer()
    lrs = _lrs(build_scheduler(config, optimizer, 40), optimizer, 20)
    expected = [1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * t / 20)) / 2 for t in range(1, 21)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_a_dotted_path_loads_the_class_from_its_module():
    config = config_for("lora", lr_warmup=0, lr_scheduler_type="torch.optim.lr_scheduler.StepLR",
                        lr_scheduler_args="step_size=2 gamma=0.5", learning_rate=1e-2)
    optimizer = _optimizer()
    assert _lrs(build_scheduler(config, optimizer, 10), optimizer, 4) == pytest.approx([1e-2, 5e-3, 5e-3, 2.5e-3])


@pytest.mark.parametrize("name, args, message", [
    ("CosineAnnealingLRR", "", "cannot be loaded"),
    ("no_such_package.Schedule", "", "cannot be loaded"),
    ("ReduceLROnPlateau", "", "validation metric"),
    ("CosineAnnealingLR", "", "do not fit CosineAnnealingLR"),  # T_max missing
    ("torch.nn.Linear", "", "do not fit|not a learning-rate scheduler"),
])
def test_a_scheduler_that_cannot_run_is_refused_naming_the_option(name, args, message):
    config = config_for("lora", lr_warmup=0, lr_scheduler_type=name, lr_scheduler_args=args)
    with pytest.raises(TrainingFault, match=message) as info:
        build_scheduler(config, _optimizer(), 10)
    assert "lr_scheduler" in info.value.message and info.value.hint


def test_warm_up_with_a_custom_scheduler_is_an_error_on_the_warm_up_field():
    problems = validate_values("lora", {"lr_scheduler_type": "CosineAnnealingLR", "lr_warmup": 10})[1]
    errors = [p for p in problems if p.level == "error"]
    assert [p.field for p in errors] == ["lr_warmup"] and "set lr_warmup and lr_warmup_steps to 0" in errors[0].message
    problems = validate_values("lora", {"lr_scheduler_type": "my schedule", "lr_warmup": 0})[1]
    assert [p.field for p in problems if p.level == "error"] == ["lr_scheduler_type"]


def test_kohya_json_with_a_custom_scheduler_and_sd_scripts_schedule_arguments_imports():
    values, ignored, _ = import_kohya_json({
        "LoRA_type": "Standard", "lr_scheduler": "cosine_with_min_lr", "lr_scheduler_type": "",
        "additional_parameters": "--lr_scheduler_min_lr_ratio 0.1 --lr_scheduler_timescale 5"}, "lora")
    assert values["lr_scheduler_args"] == "min_lr_rate=0.1"
    assert ignored == ["additional_parameters --lr_scheduler_timescale"]  # inverse_sqrt's; cosine never read it
    values, _, _ = import_kohya_json({"LoRA_type": "Standard", "lr_scheduler": "warmup_stable_decay",
                                      "lr_scheduler_args": "", "additional_parameters":
                                      "--lr_decay_steps 20% --lr_scheduler_min_lr_ratio=0.05"}, "lora")
    assert values["lr_scheduler_args"] == "num_decay_steps=0.2 min_lr_ratio=0.05"
    values, ignored, _ = import_kohya_json({"LoRA_type": "Standard", "lr_scheduler_type": "CosineAnnealingLR",
                                            "lr_scheduler_args": "T_max=100", "lr_warmup": 0}, "lora")
    assert values["lr_scheduler_type"] == "CosineAnnealingLR" and not ignored


def test_a_ratio_of_decay_steps_counts_from_the_run_as_sd_scripts_reads_it():
    config = config_for("lora", learning_rate=1e-2, lr_warmup=0, lr_scheduler="warmup_stable_decay",
                        lr_scheduler_args="num_decay_steps=0.25")
    optimizer = _optimizer()
    lrs = _lrs(build_scheduler(config, optimizer, 40), optimizer, 40)
    assert lrs[29] == pytest.approx(1e-2) and lrs[30] < 1e-2 and lrs[-1] == pytest.approx(0, abs=1e-9)


def test_the_sd_scripts_export_passes_the_schedule_shape_as_its_own_arguments():
    """sd-scripts adds min_lr_rate=lr_scheduler_min_lr_ratio itself: min_lr_rate in lr_scheduler_args
    too would be a TypeError (a keyword given twice) there."""
    data = sd_scripts_export(config_for("lora", lr_scheduler="cosine_with_min_lr",
                                        lr_scheduler_args="min_lr_rate=0.1")).toml_data
    assert data["lr_scheduler_min_lr_ratio"] == 0.1 and "lr_scheduler_args" not in data
    data = sd_scripts_export(config_for("lora", lr_scheduler="cosine_with_min_lr")).toml_data
    assert data["lr_scheduler_min_lr_ratio"] == 0.0  # sd-scripts has no default; the run here used 0
    data = sd_scripts_export(config_for("lora", lr_scheduler="warmup_stable_decay",
                                        lr_scheduler_args="num_decay_steps=50 min_lr_ratio=0.05")).toml_data
    assert (data["lr_decay_steps"], data["lr_scheduler_min_lr_ratio"]) == (50, 0.05)
    data = sd_scripts_export(config_for("lora", lr_warmup=0, lr_scheduler_type="CosineAnnealingLR",
                                        lr_scheduler_args="T_max=100")).toml_data
    assert data["lr_scheduler_type"] == "CosineAnnealingLR" and data["lr_scheduler_args"] == ["T_max=100"]
    assert "lr_warmup_steps" not in data


@pytest.mark.slow
def test_a_whole_lora_run_steps_the_custom_scheduler_and_reports_its_rate(tmp_path, tiny_model_dir):
    from tests.test_train_support import lora_config, make_dataset, run_trainer, write_config

    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=3), tmp_path / "out",
                         epoch=1, learning_rate=1e-3, lr_scheduler_type="StepLR",
                         lr_scheduler_args="step_size=1 gamma=0.5")
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 0, err[-3000:]
    last = [e for e in events if e["type"] == "step"][-1]
    assert last["step"] == 3 and last["lr"] == pytest.approx(1e-3 * 0.5 ** 3)


def test_kohya_json_compiled_through_accelerate_imports_with_compile_on_and_exports_torch_compile():
    values, ignored, notes = import_kohya_json({"LoRA_type": "Standard", "dynamo_backend": "inductor"}, "lora")
    assert values["compile"] == "on" and not ignored and any("dynamo_backend 'inductor'" in n for n in notes)
    values, _, _ = import_kohya_json({"LoRA_type": "Standard", "dynamo_backend": "no"}, "lora")
    assert "compile" not in values
    values, ignored, _ = import_kohya_json({"LoRA_type": "Standard", "additional_parameters": "--torch_compile"},
                                           "lora")
    assert values["compile"] == "on" and not ignored
    assert sd_scripts_export(config_for("lora", compile="on")).toml_data["torch_compile"] is True
    assert "torch_compile" not in sd_scripts_export(config_for("lora", compile="auto")).toml_data
