"""Image files: bad ones are listed and skipped, odd ones are converted to plain RGB."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_data_helpers import make_cfg, make_concept, make_image
from trainer.data import DatasetError, scan_dataset
from trainer.data.images import load_rgb, probe_image


def dataset_with(tmp_path, bad_name: str, write_bad):
    """Two good images plus one bad file in 1_dog; returns (cfg, bad path)."""
    folder = make_concept(tmp_path / "images", "1_dog", 2)
    bad = folder / bad_name
    write_bad(bad)
    return make_cfg(train_data_dir=str(tmp_path / "images"), resolution="64"), bad


def skipped(cfg) -> dict[str, str]:
    result = scan_dataset(cfg)  # strict: would raise if the bad file stopped the run
    assert len(result.items) == 2, "the good images are still used"
    return {p.path: p.message for p in result.of("skipped")}


def test_unreadable_file_with_an_image_suffix_is_listed_and_skipped(tmp_path):
    cfg, bad = dataset_with(tmp_path, "notes.png", lambda p: p.write_text("this is not an image"))
    assert "not an image" in skipped(cfg)[str(bad)]


def test_zero_byte_image_is_listed_and_skipped(tmp_path):
    cfg, bad = dataset_with(tmp_path, "empty.jpg", lambda p: p.write_bytes(b""))
    assert "0 bytes" in skipped(cfg)[str(bad)]


def test_truncated_image_is_listed_and_skipped(tmp_path):
    def write(p):
        make_image(p, (64, 64), seed=9)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    cfg, bad = dataset_with(tmp_path, "cut.png", write)
    assert "truncated" in skipped(cfg)[str(bad)]


def test_animated_image_is_listed_and_skipped(tmp_path):
    def write(p):
        frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
        frames[0].save(p, format="PNG", save_all=True, append_images=frames[1:])
    cfg, bad = dataset_with(tmp_path, "anim.png", write)
    assert "animated" in skipped(cfg)[str(bad)]


@pytest.mark.parametrize("name,fmt,right", [("photo.png", "JPEG", "photo.jpg"), ("photo.jpg", "PNG", "photo.png")])
def test_a_wrongly_suffixed_image_trains_by_its_content_with_the_name_it_should_have(tmp_path, name, fmt, right):
    cfg, bad = dataset_with(tmp_path, name, lambda p: make_image(p, fmt=fmt))
    result = scan_dataset(cfg)
    assert str(bad) in [str(item.path) for item in result.items]  # decoded by content: not skipped
    problem = next(p for p in result.of("warning") if p.path == str(bad))
    assert f"{fmt} data but is named {bad.suffix}" in problem.message and right in problem.hint


def test_only_bad_images_stops_before_training_with_a_clear_error(tmp_path):
    folder = tmp_path / "images" / "3_cat"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("nope")
    with pytest.raises(DatasetError, match="no usable training image"):
        scan_dataset(make_cfg(train_data_dir=str(tmp_path / "images")))


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (60, 40), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(path, exif=exif)
    assert probe_image(path).size == (40, 60)
    assert load_rgb(path).size == (40, 60)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    la = Image.new("LA", (8, 8), (0, 0))
    la.save(tmp_path / "la.png")
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.save(tmp_path / "p.png", transparency=0)
    out = load_rgb(tmp_path / "a.png")
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)
    assert load_rgb(tmp_path / "la.png").getpixel((3, 3)) == (255, 255, 255)
    assert load_rgb(tmp_path / "p.png").getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_16bit_and_greyscale_images_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red
    deep = load_rgb(tmp_path / "deep.png")
    assert deep.mode == "RGB" and deep.getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(tmp_path / "grey.png").getpixel((0, 0)) == (100, 100, 100)


@pytest.mark.parametrize("name,make,why", [
    ("anim.gif", lambda p: Image.new("RGB", (32, 32)).save(p, format="GIF"), ".gif images are not trained on"),
    ("gone.png", lambda p: p.symlink_to(p.parent / "nowhere.png"), "symbolic link to a file that does not exist"),
    ("folder.png", lambda p: p.mkdir(), "a folder named like an image"),
])
def test_files_that_look_like_images_but_are_not_read_are_named(tmp_path, name, make, why):
    """They used to be dropped in silence: preflight now says which file is left out and why."""
    cfg, ignored = dataset_with(tmp_path, name, make)
    assert why in skipped(cfg)[str(ignored)]
