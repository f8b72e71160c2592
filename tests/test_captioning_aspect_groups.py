"""A user groups a mixed-aspect folder by aspect ratio: copies come out cropped (or padded) per
group, captions follow their images, and the source folder is left exactly as it was."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioning.aspect_groups import fit_to_ratio, group_images

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(64, 32), (60, 30), (32, 64), (30, 66), (50, 50)]


def make_folder(folder: Path) -> Path:
    folder.mkdir()
    for i, size in enumerate(SIZES):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    (folder / "img0.npz").write_bytes(b"latents")
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_images_are_copied_in_groups_of_similar_aspect_with_their_captions(tmp_path):
    src = make_folder(tmp_path / "photos")
    before = snapshot(src)
    result = group_images(src, tmp_path / "grouped", 2)
    assert snapshot(src) == before  # the source is only read
    out = tmp_path / "grouped"
    # sorted by width/height (ties by name): the two tall, then the square + one wide, then the other wide
    assert [[Path(p).name for p in g] for g in result.groups] == [["img3.png", "img2.png"],
                                                                  ["img4.png", "img0.png"], ["img1.png"]]
    assert result.written == 5 and result.copied == 5 and result.conflicts == []
    with Image.open(out / "group-1-image-1.png") as a, Image.open(out / "group-1-image-2.png") as b:
        assert a.size == b.size and a.height > a.width  # one size per group, the group's shape
    assert (out / "group-1-image-1.txt").read_text(encoding="utf-8") == "caption 3"
    assert not list(out.glob("*.npz"))  # latent caches are for the old size


def test_nothing_in_the_output_is_replaced_and_the_cli_reports_it(tmp_path):
    src = make_folder(tmp_path / "photos")
    out = tmp_path / "grouped"
    out.mkdir()
    (out / "group-1-image-1.png").write_bytes(b"mine")
    proc = subprocess.run([sys.executable, "-m", "captioning", "group", str(src), str(out), "2", "--pad"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "left untouched" in proc.stdout and (out / "group-1-image-1.png").read_bytes() == b"mine"
    with pytest.raises(ValueError, match="inside"):
        group_images(src, src / "out", 2)


def test_crop_and_pad_reach_the_target_aspect():
    img = Image.new("RGB", (100, 50))
    assert fit_to_ratio(img, 1.0, pad=False).size == (50, 50)
    assert fit_to_ratio(img, 1.0, pad=True).size == (100, 100)
    assert fit_to_ratio(img, 4.0, pad=True).size == (200, 50)
