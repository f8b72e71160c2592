"""Validation loss (sd-scripts' validation_split): the user holds out part of the images, sees how many train and
how many validate before the run, and gets a validation loss during it that does not change what is trained."""
from __future__ import annotations

import math
import shutil

from test_data_helpers import make_cfg, make_concept
from test_train_support import lora_config, lora_tensors, make_dataset, run_trainer, write_config
from trainer.config import validate_values
from trainer.data.preflight import exact_plan, preflight
from trainer.data.scan import scan_dataset


def _held_names(cfg) -> list[str]:
    scan = scan_dataset(cfg, strict=False)
    return sorted(it.path.name for it in scan.validation.items)


def test_user_holds_out_half_the_images_and_the_plan_counts_only_the_rest(tmp_path):
    make_concept(tmp_path / "img", "2_cat", 10, captions={i: "cat" for i in range(10)})
    make_concept(tmp_path / "img", "1_dog", 4, seed0=20)
    make_concept(tmp_path / "reg", "1_animal", 3, seed0=40)
    values = dict(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="64",
                  epoch=1, seed=5, validation_split=0.3)
    cfg = make_cfg(**values)
    held = _held_names(cfg)
    assert len(held) == 3 + 1, "⌊10 × 0.3⌋ of the cats and ⌊4 × 0.3⌋ of the dogs; reg images never"
    assert held == _held_names(make_cfg(**values)), "the same seed holds out the same images"
    others = [_held_names(make_cfg(**{**values, "validation_seed": s})) for s in (11, 12, 13)]
    assert any(o != held for o in others), "validation_seed chooses which images"

    report = preflight(cfg)
    assert report.ok and report.validation_images == 4
    assert report.images == 14 - 4 and report.reg_images == 3
    cats = next(c for c in report.concepts if c.name == "2_cat")
    assert (cats.images, cats.held_out, cats.samples_per_epoch) == (7, 3, 14)
    assert "Validation images: 4 held out" in report.to_text()
    plan = exact_plan(scan_dataset(cfg, strict=False), cfg)
    assert plan.train_samples == 7 * 2 + 3 * 1 and plan.reg_samples == plan.train_samples


def test_a_split_that_leaves_nothing_to_validate_or_train_names_validation_split(tmp_path):
    make_concept(tmp_path / "img", "1_cat", 3)
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), resolution="64", validation_split=0.2)
    errors = [p for p in preflight(cfg).errors if p["field"] == "validation_split"]
    assert len(errors) == 1 and "holds out no image" in errors[0]["message"] and "1_cat: 3" in errors[0]["message"]

    _, problems = validate_values("lora", {"validation_split": 1.0})
    assert [p.field for p in problems if p.level == "error"] == ["validation_split"]
    assert "leaving none to train on" in problems[0].message
    _, problems = validate_values("lora", {"validation_split": 0.5, "validate_every_n_steps": 10})
    assert not [p for p in problems if p.field in ("validation_split", "validate_every_n_steps")]
    _, problems = validate_values("lora", {"validate_every_n_steps": 10})
    assert [(p.field, p.level) for p in problems] == [("validate_every_n_steps", "warning")]


def test_validation_reports_a_loss_every_step_and_trains_exactly_the_same_lora(tmp_path, tiny_model_dir):
    model = tiny_model_dir("sd1")
    data = make_dataset(tmp_path / "data", images=4)
    common = dict(epoch=1, save_every_n_epochs=0, network_dropout=0.1)
    cfg = lora_config(model, data, tmp_path / "with", validation_split=0.5, validate_every_n_steps=1, **common)

    # the comparison run trains on exactly the images the split kept (same folder name, same captions)
    kept = tmp_path / "kept" / "1_toy"
    kept.mkdir(parents=True)
    held = {it.path.name for it in scan_dataset(cfg).validation.items}
    for image in sorted((data / "1_toy").glob("*.png")):
        if image.name not in held:
            shutil.copy(image, kept / image.name)
            shutil.copy(image.with_suffix(".txt"), kept / image.with_suffix(".txt").name)
    assert len(held) == 2 and len(list(kept.glob("*.png"))) == 2

    code, events, err = run_trainer(write_config(cfg, tmp_path / "with.json"))
    assert code == 0, err[-3000:]
    plan = next(e for e in events if e["type"] == "plan")
    assert (plan["images"], plan["validation_images"], plan["total_steps"]) == (2, 2, 2)
    checks = [e for e in events if e["type"] == "validation"]
    assert [(e["step"], e["epoch"]) for e in checks] == [(1, None), (2, None), (2, 1)]
    assert all(math.isfinite(e["loss"]) and e["batches"] == 2 for e in checks)
    assert checks[0]["timesteps"] == [200, 400, 600, 800]
    assert checks[1]["loss"] == checks[2]["loss"], "the same weights measure the same loss: noise is fixed"

    plain = lora_config(model, tmp_path / "kept", tmp_path / "without", **common)
    code, _, err = run_trainer(write_config(plain, tmp_path / "without.json"))
    assert code == 0, err[-3000:]
    with_validation = lora_tensors(tmp_path / "with" / "toy.safetensors")
    without = lora_tensors(tmp_path / "without" / "toy.safetensors")
    assert with_validation.keys() == without.keys()
    assert all((with_validation[k] == without[k]).all() for k in without), "validation changed the training"


def test_the_monitor_shows_the_latest_validation_loss_beside_the_loss_and_in_the_chart():
    import json

    from kohya_gui import monitor_view
    from kohya_gui.jobqueue import Job
    from kohya_gui.monitor import JobMonitor

    monitor = JobMonitor()
    for event in ({"type": "step", "step": 1, "total": 2, "epoch": 1, "epochs": 1, "loss": 0.5, "avg_loss": 0.5},
                  {"type": "validation", "step": 1, "epoch": None, "loss": 0.25},
                  {"type": "step", "step": 2, "total": 2, "epoch": 1, "epochs": 1, "loss": 0.4, "avg_loss": 0.45},
                  {"type": "validation", "step": 2, "epoch": 1, "loss": 0.125}):
        monitor.feed_line(json.dumps(event))
    snap = monitor.snapshot()
    html = monitor_view.progress_html(snap, Job("j", "toy", "lora", [], "."))
    assert "loss 0.4000 (avg 0.4500) · validation loss 0.1250 (step 2)" in html
    frame = monitor_view.loss_frame(snap)
    validation = frame[frame.series == "validation"]
    assert list(validation.step) == [1, 2] and list(validation.loss) == [0.25, 0.125]
    empty = monitor_view.loss_frame({})
    assert set(empty.series) == {"loss", "average", "validation"}, "a chart made empty still draws the series later"
