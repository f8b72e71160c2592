"""Utilities ▸ Dataset tools: a user captions images by hand (image + caption, next/previous,
saved atomically, nothing written when nothing changed) and groups images by aspect ratio."""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from kohya_gui.tabs.dataset_helpers import group_argv, load_folder, save_caption, step
from kohya_gui.tabs.utilities import stream_command

ROOT = Path(__file__).resolve().parents[1]


def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(d / f"a{i}.png")
    (d / "a0.txt").write_text("first caption\n", encoding="utf-8")
    return d


def test_editing_captions_image_by_image(tmp_path):
    d = folder(tmp_path)
    images, index, image, text, where = load_folder(str(d), ".txt", [tmp_path])
    assert len(images) == 3 and image.endswith("a0.png") and text == "first caption" and "1 / 3" in where

    # unchanged caption: moving on writes nothing
    mtime = (d / "a0.txt").stat().st_mtime_ns
    index, image, text, where = step(images, 0, "first caption", ".txt", 1)
    assert index == 1 and text == "" and "no caption yet" in where
    assert (d / "a0.txt").stat().st_mtime_ns == mtime

    # an edit is saved when moving on, and is there when coming back
    index, image, text, where = step(images, 1, "a red square", ".txt", 1)
    assert (d / "a1.txt").read_text(encoding="utf-8") == "a red square\n" and "saved `a1.txt`" in where
    index, image, text, where = step(images, index, "", ".txt", -1)
    assert text == "a red square" and not (d / "a2.txt").exists()  # empty, never-captioned: not created
    assert save_caption(images, 0, "edited", ".txt") == "💾 saved `a0.txt`"
    assert (d / "a0.txt").read_text(encoding="utf-8") == "edited\n"
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_the_editor_refuses_folders_outside_the_roots_and_image_suffixes(tmp_path):
    d = folder(tmp_path)
    assert load_folder(str(d), ".txt", [tmp_path / "elsewhere"])[-1].startswith("⛔")
    assert load_folder(str(d), ".png", [tmp_path])[-1].startswith("⛔")
    assert load_folder(str(tmp_path / "missing"), ".txt", [tmp_path])[-1].startswith("⛔")


def test_group_images_runs_from_the_page(tmp_path):
    d = folder(tmp_path)
    out = tmp_path / "grouped"
    lines = list(stream_command(group_argv(sys.executable, d, out, 2, False, False, True), str(ROOT)))
    assert "✅ finished" in lines[-1] and "wrote 3 image(s)" in lines[-1]
    assert sorted(p.name for p in out.iterdir())[:2] == ["group-1-image-1.png", "group-1-image-1.txt"]


def test_git_captioning_runs_from_the_page(tmp_path):
    from captioning.tiny import make_tiny_git
    from kohya_gui.tabs.captioning_form import caption_argv

    d = folder(tmp_path)
    model = make_tiny_git(tmp_path / "git")
    argv = caption_argv(sys.executable, "git", {"train_data_dir": d, "model_id": model, "max_length": 6,
                                                "prefix": "sks", "batch_size": 2})
    lines = list(stream_command(argv, str(ROOT)))
    assert "✅ 3 captions written" in lines[-1], lines[-1]
    assert sorted(p.name for p in d.glob("*.caption")) == ["a0.caption", "a1.caption", "a2.caption"]
    assert (d / "a1.caption").read_text(encoding="utf-8").startswith("sks ")
