"""Preflight: what the user sees before training, as JSON for the GUI and as readable text."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from test_data_helpers import make_cfg, make_concept, make_image
from trainer.data import preflight


def messy_dataset(tmp_path):
    img = make_concept(tmp_path / "img", "10_sks dog", 4, size=(64, 64), captions={0: "sks dog, grass"})
    make_concept(tmp_path / "img", "1_style", 1, size=(64, 64), seed0=40)
    (img / "empty.png").write_bytes(b"")
    (img / "text.jpg").write_text("not a picture")
    make_image(img / "cut.png", (64, 64), seed=3)
    (img / "cut.png").write_bytes((img / "cut.png").read_bytes()[:200])
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(img / "anim.webp", save_all=True, append_images=frames[1:])
    (img / "folder.png").mkdir()  # named like an image: said, not dropped in silence
    make_image(img / "small.png", (16, 16), seed=77)
    make_concept(tmp_path / "reg", "1_dog", 3, size=(64, 64), seed0=60)
    return make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="64",
                    train_batch_size=2, epoch=3)


def test_preflight_lists_each_bad_file_with_its_reason(tmp_path):
    report = preflight(messy_dataset(tmp_path))
    reasons = {p["path"].rsplit("/", 1)[-1]: p["message"] for p in report.bad_files}
    assert set(reasons) == {"empty.png", "text.jpg", "cut.png", "anim.webp", "folder.png"}
    assert "0 bytes" in reasons["empty.png"] and "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["cut.png"] and "animated" in reasons["anim.webp"]
    assert "folder named like an image" in reasons["folder.png"]
    assert all(p["hint"] for p in report.bad_files), "every skipped file says how to fix it"
    assert report.ok, "bad files are skipped, they do not stop training"


def test_preflight_counts_concepts_reg_share_buckets_and_steps(tmp_path):
    report = preflight(messy_dataset(tmp_path))
    data = json.loads(json.dumps(report.to_dict()))  # what the GUI receives
    concepts = {c["name"]: c for c in data["concepts"]}
    dog = concepts["10_sks dog"]
    assert (dog["images"], dog["captions_found"], dog["captions_missing"], dog["repeats"]) == (5, 1, 4, 10)
    assert dog["samples_per_epoch"] == 50 and dog["steps_per_epoch"] == 25
    assert concepts["1_dog"]["is_reg"] and concepts["1_dog"]["samples_per_epoch"] == 51
    assert data["train_samples_per_epoch"] == 51 and data["reg_samples_per_epoch"] == 51
    assert data["reg_share"] == 0.5
    assert data["buckets"] == {"64x64": 9} and data["bucket_samples"] == {"64x64": 102}
    assert (data["steps_per_epoch"], data["epochs"], data["total_steps"]) == (51, 3, 153)


def test_preflight_warns_about_upscaling_and_concept_imbalance(tmp_path):
    report = preflight(messy_dataset(tmp_path))
    messages = [w["message"] for w in report.warnings]
    assert any("16x16 is smaller than its bucket 64x64" in m for m in messages)
    assert any("concept imbalance" in m and "'10_sks dog'" in m for m in messages)


def test_preflight_reports_folder_errors_instead_of_raising(tmp_path):
    make_concept(tmp_path, "no prefix", 1)
    report = preflight(make_cfg(train_data_dir=str(tmp_path)))
    assert not report.ok
    assert any("no <repeats>_ prefix" in e["message"] for e in report.errors)
    text = report.to_text()
    assert "PROBLEMS" in text and "1_character_name" in text


def test_preflight_text_is_readable(tmp_path):
    text = preflight(messy_dataset(tmp_path)).to_text()
    assert text.startswith("Dataset preflight: OK")
    assert "10_sks dog" in text and "[reg] 1_dog" in text
    assert "Skipped files (5)" in text and "empty.png: empty file (0 bytes)" in text
    assert "51 steps per epoch; 3 epochs = 153 steps" in text


def test_preflight_reports_a_broken_dataset_config(tmp_path):
    bad = tmp_path / "d.toml"
    bad.write_text("[[datasets]\n", encoding="utf-8")
    report = preflight(make_cfg(dataset_config=str(bad)))
    assert not report.ok and "cannot be parsed" in report.errors[0]["message"]


def test_preflight_flags_augmentations_that_cannot_be_cached(tmp_path):
    make_concept(tmp_path, "1_cat", 1)
    report = preflight(make_cfg(train_data_dir=str(tmp_path), resolution="64", cache_latents=True, random_crop=True))
    assert not report.ok and any("random_crop" in e["message"] for e in report.errors)


def test_preflight_does_not_load_torch_so_the_gui_stays_light(tmp_path):
    import subprocess
    import sys

    make_concept(tmp_path, "1_cat", 1)
    code = ("import sys; from trainer.config import config_for; from trainer.data import preflight; "
            f"r = preflight(config_for('lora', train_data_dir={str(tmp_path)!r}, resolution='64', "
            f"min_bucket_reso=64, output_dir={str(tmp_path / 'out')!r})); "
            "print(r.ok, r.images, 'torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["True", "1", "False"]
