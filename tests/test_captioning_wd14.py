"""WD14 tagging on tiny generated ONNX taggers: preprocessing proven numerically, captions end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.tags import TagOptions
from captioning.tiny import make_color_tagger, make_probe_tagger
from captioning.wd14 import (
    KNOWN_TAGGERS,
    TaggerNotFoundError,
    choose_providers,
    load_for_tagger,
    load_tagger,
    resolve_repo_id,
    resolve_tagger,
    tag_images,
)

ROOT = Path(__file__).resolve().parents[1]
# (name, category, p for a pure red image, p for a pure blue image)
COLOR_TAGS = [
    ("general", 9, 0.9, 0.1), ("sensitive", 9, 0.2, 0.8), ("questionable", 9, 0.1, 0.1), ("explicit", 9, 0.05, 0.05),
    ("1girl", 0, 0.95, 0.6), ("red_theme", 0, 0.8, 0.01), ("blue_theme", 0, 0.02, 0.9), ("^_^", 0, 0.5, 0.4),
    ("hat", 0, 0.3, 0.3), ("hatsune_miku_(vocaloid)", 4, 0.9, 0.05),
]  # fmt: skip


@pytest.fixture(scope="module")
def color_tagger(tmp_path_factory):
    return make_color_tagger(tmp_path_factory.mktemp("tagger") / "tiny-tagger", COLOR_TAGS)


def solid(path: Path, rgb, size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "my images 画像"
    solid(folder / "red 赤.png", (255, 0, 0))
    solid(folder / "blue.webp", (0, 0, 255))
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


def caption(folder: Path, name: str, ext=".txt") -> str:
    return (folder / name).with_suffix(ext).read_text(encoding="utf-8")


# --- preprocessing, read back through the probe model -------------------------------------------


def test_preprocessing_matches_the_reference_exactly_when_no_resize_is_needed(tmp_path):
    """Square image at the model size: output = per-channel means and top-left pixel, in BGR, 0..255."""
    tagger = load_tagger(make_probe_tagger(tmp_path / "probe", size=16))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgb[0, 0] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "noise.png")
    batch = load_for_tagger(tmp_path / "noise.png", tagger.size)[None]
    assert batch.shape == (1, 16, 16, 3) and batch.dtype == np.float32  # NHWC float32
    out = tagger.predict(batch)[0]
    bgr = rgb[:, :, ::-1].astype(np.float64)
    np.testing.assert_allclose(out[:3], bgr.mean(axis=(0, 1)) / 255, atol=1e-5)
    np.testing.assert_allclose(out[3:], np.array([30, 20, 10]) / 255, atol=1e-6)  # BGR, 0..255 range


def test_transparency_becomes_white_and_images_are_padded_to_a_white_centred_square(tmp_path):
    tagger = load_tagger(make_probe_tagger(tmp_path / "probe", size=16))
    img = np.zeros((20, 40, 4), np.uint8)  # wide: 40x20, left half fully transparent black
    img[:, 20:] = (255, 0, 0, 255)  # right half opaque red
    Image.fromarray(img, "RGBA").save(tmp_path / "wide.png")
    out = tagger.predict(load_for_tagger(tmp_path / "wide.png", tagger.size)[None])[0]
    # 40x40 after padding: red covers a quarter; transparent + padding are white (black would lower B/G)
    np.testing.assert_allclose(out[:3], [0.75, 0.75, 1.0], atol=0.02)
    np.testing.assert_allclose(out[3:], [1.0, 1.0, 1.0], atol=1e-6)  # corner is padding, white


def test_the_input_size_is_read_from_the_model(tmp_path):
    for size in (12, 24):
        tagger = load_tagger(make_probe_tagger(tmp_path / f"probe{size}", size=size))
        assert tagger.size == size
        solid(tmp_path / "img.png", (0, 255, 0), size=(50, 50))
        arr = load_for_tagger(tmp_path / "img.png", tagger.size)
        assert arr.shape == (size, size, 3)
        np.testing.assert_allclose(tagger.predict(arr[None])[0][:3], [0, 1, 0], atol=1e-6)


# --- tagging a folder ---------------------------------------------------------------------------


def test_tagging_a_folder_writes_a_caption_per_image_and_lists_unreadable_ones(color_tagger, dataset):
    seen = []
    run = tag_images(dataset, model_dir=color_tagger, options=TagOptions(use_rating_tags=True),
                     progress=lambda done, total, path: seen.append((done, total)))  # fmt: skip
    assert caption(dataset, "red 赤.png") == "general, 1girl, red theme, ^_^, hatsune miku (vocaloid)\n"
    assert caption(dataset, "blue.webp") == "sensitive, blue theme, 1girl, ^_^\n"
    assert not (dataset / "broken.txt").exists()
    assert [p["path"] for p in run.problems] == [str(dataset / "broken.jpg")]
    assert "cannot read image" in run.problems[0]["error"]
    assert run.counts["written"] == 2 and run.total == 3
    assert run.tag_frequency["1girl"] == 2 and run.tag_frequency["red theme"] == 1
    assert seen[-1] == (3, 3)
    assert json.loads(json.dumps(run.to_dict()))["tag_frequency"]["^_^"] == 2


def test_existing_captions_are_kept_unless_the_user_asks_to_overwrite_or_append(color_tagger, dataset):
    mine = dataset / "red 赤.txt"
    mine.write_text("my own words, 1girl\n", encoding="utf-8")
    run = tag_images(dataset, model_dir=color_tagger)
    assert mine.read_text(encoding="utf-8") == "my own words, 1girl\n"
    assert run.skipped == [str(dataset / "red 赤.png")]

    tag_images(dataset, model_dir=color_tagger, append_tags=True)
    appended = mine.read_text(encoding="utf-8")
    assert appended == "my own words, 1girl, red theme, ^_^, hatsune miku (vocaloid)\n"  # 1girl not twice
    again = tag_images(dataset, model_dir=color_tagger, existing="append")
    assert mine.read_text(encoding="utf-8") == appended and again.counts["unchanged"] == 2

    tag_images(dataset, model_dir=color_tagger, existing="overwrite", options=TagOptions(thresh=0.7))
    assert mine.read_text(encoding="utf-8") == "1girl, red theme, hatsune miku (vocaloid)\n"
    assert not list(dataset.glob("*.tmp")) and not list(dataset.glob(".~*"))  # atomic writes leave no temp


def test_keeping_every_caption_never_needs_the_model(tmp_path):
    folder = tmp_path / "done"
    solid(folder / "a.png", (1, 2, 3))
    (folder / "a.txt").write_text("kept", encoding="utf-8")
    run = tag_images(folder, model_dir=tmp_path / "no model here")  # would fail if it tried to load
    assert run.counts["skipped"] == 1 and run.captions[str(folder / "a.png")] == "kept"


def test_batched_tagging_gives_the_same_captions_as_one_at_a_time(color_tagger, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        for i in range(5):
            solid(folder / f"{i}.png", (255 - 50 * i, 0, 50 * i))
    one = tag_images(a, model_dir=color_tagger, batch_size=1, max_data_loader_n_workers=0)
    many = tag_images(b, model_dir=color_tagger, batch_size=3, max_data_loader_n_workers=2)
    assert [Path(p).name for p in one.captions] == [Path(p).name for p in many.captions]
    assert list(one.captions.values()) == list(many.captions.values())


def test_a_model_with_a_fixed_batch_of_one_still_tags_everything_with_a_warning(tmp_path):
    model = make_color_tagger(tmp_path / "fixed", COLOR_TAGS, batch=1)
    for i in range(3):
        solid(tmp_path / "imgs" / f"{i}.png", (255, 0, 0))
    run = tag_images(tmp_path / "imgs", model_dir=model, batch_size=4)
    assert run.counts["written"] == 3
    assert "fixed batch of 1" in run.warnings[0]


def test_recursive_also_tags_sub_folders(color_tagger, tmp_path):
    solid(tmp_path / "top" / "a.png", (255, 0, 0))
    solid(tmp_path / "top" / "sub dir" / "b.png", (0, 0, 255))
    assert tag_images(tmp_path / "top", model_dir=color_tagger).total == 1
    run = tag_images(tmp_path / "top", model_dir=color_tagger, recursive=True)
    assert run.total == 2 and (tmp_path / "top" / "sub dir" / "b.txt").exists()


def test_a_caption_extension_that_would_replace_images_is_refused(color_tagger, dataset):
    with pytest.raises(ValueError, match="caption_extension"):
        tag_images(dataset, model_dir=color_tagger, caption_extension=".png")


def test_a_store_folder_holds_taggers_under_their_repo_name(color_tagger, tmp_path):
    store = tmp_path / "taggers"
    target = store / "SmilingWolf_wd-eva02-large-tagger-v3"
    target.mkdir(parents=True)
    for f in ("model.onnx", "selected_tags.csv"):
        (target / f).write_bytes((color_tagger / f).read_bytes())
    assert resolve_tagger(store, "eva02-large-v3", offline=True) == target
    assert resolve_tagger(color_tagger) == color_tagger


def test_offline_without_the_files_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaggerNotFoundError) as err:
        resolve_tagger(tmp_path / "taggers", "vit-v3")
    msg = str(err.value)
    assert "model.onnx" in msg and "selected_tags.csv" in msg
    assert str((tmp_path / "taggers" / "SmilingWolf_wd-vit-tagger-v3").resolve()) in msg
    assert "huggingface.co/SmilingWolf/wd-vit-tagger-v3" in msg


def test_known_tagger_names_and_bad_repo_ids():
    assert resolve_repo_id("convnextv2-v2") == "SmilingWolf/wd-v1-4-convnextv2-tagger-v2"
    assert len(KNOWN_TAGGERS) == 10
    with pytest.raises(ValueError, match="not a Hugging Face repo id"):
        resolve_repo_id("../../etc")


def test_cuda_is_used_when_onnxruntime_offers_it_else_the_cpu():
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider"])[0] == "CUDAExecutionProvider"


def test_command_line_tags_a_folder_with_kohya_option_names(color_tagger, dataset):
    cmd = [sys.executable, "-m", "captioning", "wd14", str(dataset), "--model_dir", str(color_tagger),
           "--general_threshold", "0.7", "--character_threshold", "0.95", "--undesired_tags", "red_theme",
           "--caption_extension", ".caption", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["counts"] == {"written": 2, "failed": 1}
    assert caption(dataset, "red 赤.png", ".caption") == "1girl\n"
    assert caption(dataset, "blue.webp", ".caption") == "blue theme\n"


def test_command_line_reports_a_missing_folder_clearly(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "captioning", "wd14", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 1
    assert "Image folder not found" in proc.stderr and "Traceback" not in proc.stderr
