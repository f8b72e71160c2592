"""Dataset folder preparation (copy only), balancing (preview, then rename) and the step calculator."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioning.dataset_tools import apply_balance, plan_balance, prepare_training_folders
from captioning.writer import atomic_write_text, merge_tags, write_caption

ROOT = Path(__file__).resolve().parents[1]


def images(folder: Path, n: int, prefix="img", captions=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{prefix}{i}.png")
        if captions:
            (folder / f"{prefix}{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- folder preparation -------------------------------------------------------------------------


def test_preparation_copies_into_the_kohya_layout_and_leaves_the_sources_intact(tmp_path):
    train = images(tmp_path / "my photos 写真", 3, captions=True)
    (train / "notes.docx").write_bytes(b"not an image")
    reg = images(tmp_path / "reg src", 2, prefix="r")
    before = snapshot(train), snapshot(reg)
    r = prepare_training_folders("sks", "dog", train, tmp_path / "out", 20, reg, 1)
    concept = tmp_path / "out" / "img" / "20_sks dog"
    assert sorted(p.name for p in concept.iterdir()) == [f"img{i}{e}" for i in range(3) for e in (".png", ".txt")]
    assert sorted(p.name for p in (tmp_path / "out" / "reg" / "1_dog").iterdir()) == ["r0.png", "r1.png"]
    assert (tmp_path / "out" / "log").is_dir() and (tmp_path / "out" / "model").is_dir()
    assert (snapshot(train), snapshot(reg)) == before
    assert (r.copied, r.images, r.reg_images) == (8, 3, 2)
    assert r.config_fields() == {"train_data_dir": str(tmp_path / "out" / "img"),
                                 "reg_data_dir": str(tmp_path / "out" / "reg"),
                                 "output_dir": str(tmp_path / "out" / "model"),
                                 "logging_dir": str(tmp_path / "out" / "log")}  # fmt: skip


def test_preparation_refuses_overlapping_source_and_destination(tmp_path):
    train = images(tmp_path / "photos", 2)
    before = snapshot(tmp_path)
    for dest, words in ((train, "same folder"), (train / "out", "inside the training"), (tmp_path, "is inside the destination")):
        with pytest.raises(ValueError, match=words):
            prepare_training_folders("sks", "dog", train, dest)
    assert snapshot(tmp_path) == before  # nothing created, nothing removed


def test_running_preparation_again_never_replaces_files_already_there(tmp_path):
    train = images(tmp_path / "photos", 2, captions=True)
    prepare_training_folders("sks", "", train, tmp_path / "out", 5)
    edited = tmp_path / "out" / "img" / "5_sks" / "img0.txt"
    edited.write_text("I fixed this caption", encoding="utf-8")
    r = prepare_training_folders("sks", "", train, tmp_path / "out", 5)
    assert edited.read_text(encoding="utf-8") == "I fixed this caption"
    assert r.conflicts == [str(edited)] and r.already_there == 3 and r.copied == 0


def test_preparation_explains_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="training images folder not found"):
        prepare_training_folders("sks", "dog", tmp_path / "missing", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        prepare_training_folders("sks", "dog", empty, tmp_path / "out")
    with pytest.raises(ValueError, match="class_prompt is needed"):
        prepare_training_folders("sks", "", images(tmp_path / "t", 1), tmp_path / "out", 1, images(tmp_path / "r", 1))
    with pytest.raises(ValueError, match="instance_prompt"):
        prepare_training_folders("a/b", "dog", tmp_path / "t", tmp_path / "out")


# --- balancing ----------------------------------------------------------------------------------


def test_balancing_previews_first_and_renames_only_when_confirmed(tmp_path):
    images(tmp_path / "ds" / "10_cat", 4)
    images(tmp_path / "ds" / "3_dog", 50)
    images(tmp_path / "ds" / "{2}5_style", 10)
    images(tmp_path / "ds" / "notes", 2)
    (tmp_path / "ds" / "1_empty").mkdir()
    plan = plan_balance(tmp_path / "ds", steps_per_concept=200)
    assert {Path(i.folder).name: i.new_name for i in plan.renames} == {
        "10_cat": "50_cat", "3_dog": "4_dog", "{2}5_style": "40_style"}  # fmt: skip
    assert "'10_cat' -> '50_cat'" in plan.preview() and "no N_ prefix" in plan.preview()
    with pytest.raises(PermissionError, match="confirm=True"):
        apply_balance(plan)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["10_cat", "1_empty", "3_dog", "notes", "{2}5_style"]
    apply_balance(plan, confirm=True)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["1_empty", "40_style", "4_dog", "50_cat", "notes"]
    assert len(list((tmp_path / "ds" / "50_cat").iterdir())) == 4  # contents moved with the folder


def test_balancing_never_renames_onto_an_existing_folder(tmp_path):
    images(tmp_path / "ds" / "1_cat", 10)
    images(tmp_path / "ds" / "3_cat", 10)  # would also become 2_cat
    images(tmp_path / "ds" / "dog", 5)
    plan = plan_balance(tmp_path / "ds", steps_per_concept=20, rename_unprefixed=True)
    assert [(Path(i.folder).name, i.new_name) for i in plan.renames] == [("dog", "4_dog")]
    assert len(plan.problems) == 2 and "name is taken" in plan.problems[0]
    (tmp_path / "ds" / "4_dog").mkdir()  # appears after the preview
    apply_balance(plan, confirm=True)
    assert (tmp_path / "ds" / "dog").is_dir() and "already exists" in plan.problems[-1]
    assert plan.renamed == []


def test_balance_command_line_shows_the_plan_and_applies_with_yes(tmp_path):
    images(tmp_path / "ds" / "1_cat", 4)
    base = [sys.executable, "-m", "captioning", "balance", str(tmp_path / "ds"), "--steps_per_concept", "100"]
    out = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "'1_cat' -> '25_cat'" in out.stdout and "--yes" in out.stdout
    assert (tmp_path / "ds" / "1_cat").is_dir()
    subprocess.run(base + ["--yes"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert (tmp_path / "ds" / "25_cat").is_dir()


# --- caption files ------------------------------------------------------------------------------


def test_caption_writes_are_atomic_and_append_without_duplicates(tmp_path):
    img = images(tmp_path, 1) / "img0.png"
    assert write_caption(img, ["a", "b"]) == ("written", "a, b")
    assert write_caption(img, ["c"]) == ("skipped", "a, b")
    assert write_caption(img, ["B", "c"], existing="append") == ("appended", "a, b, c")
    assert write_caption(img, "a sentence", existing="overwrite") == ("overwritten", "a sentence")
    assert (tmp_path / "img0.txt").read_text(encoding="utf-8") == "a sentence\n"
    assert merge_tags(["long hair"], ["long_hair", "hat"]) == ["long hair", "hat"]
    with pytest.raises(ValueError, match="existing"):
        write_caption(img, "x", existing="replace")


def test_a_failed_write_leaves_the_old_caption_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old", encoding="utf-8")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("trainer.atomic.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
