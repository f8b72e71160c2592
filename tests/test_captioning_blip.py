"""BLIP / BLIP-2 captioning end to end on tiny randomly initialised models saved in local folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioning.blip import caption_images, generation_kwargs, join_parts, load_captioner
from captioning.tiny import make_tiny_blip, make_tiny_blip2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("models") / "tiny blip")


@pytest.fixture(scope="module")
def blip(blip_dir):
    return load_captioner(str(blip_dir))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "写真 folder"
    folder.mkdir()
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40 + 10 * i, 30), rgb).save(folder / f"photo {i}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    return folder


def read(folder: Path, stem: str) -> str:
    return (folder / f"{stem}.txt").read_text(encoding="utf-8").strip()


def test_blip_captions_every_readable_image_in_batches_with_prefix_and_postfix(blip, photos):
    run = caption_images(photos, blip, batch_size=2, max_length=12, min_length=3, prefix="sks photo,", postfix="!")
    assert run.counts["written"] == 3 and [p["path"] for p in run.problems] == [str(photos / "bad.png")]
    for i in range(3):
        text = read(photos, f"photo {i}")
        assert text.startswith("sks photo, ") and text.endswith(" !")
        assert len(text) > len("sks photo,  !")  # the model wrote something between
    assert not (photos / "bad.txt").exists()


def test_beam_search_is_deterministic_and_batching_does_not_change_captions(blip, photos, tmp_path):
    one = caption_images(photos, blip, batch_size=1, max_length=10, existing="overwrite")
    three = caption_images(photos, blip, batch_size=3, max_length=10, existing="overwrite")
    assert one.captions == three.captions


def test_nucleus_sampling_follows_the_seed(blip, photos):
    a = caption_images(photos, blip, beam_search=False, top_p=0.9, seed=1, max_length=8, existing="overwrite")
    b = caption_images(photos, blip, beam_search=False, top_p=0.9, seed=1, max_length=8, existing="overwrite")
    assert a.captions == b.captions and b.counts["overwritten"] == 3


def test_existing_captions_are_kept_unless_overwrite_or_append(blip, photos):
    (photos / "photo 0.txt").write_text("my caption\n", encoding="utf-8")
    run = caption_images(photos, blip, max_length=8)
    assert read(photos, "photo 0") == "my caption" and run.skipped == [str(photos / "photo 0.png")]
    caption_images(photos, blip, max_length=8, existing="append")
    assert read(photos, "photo 0").startswith("my caption, ")


def test_generation_options_map_to_transformers_and_bad_lengths_are_refused():
    beam = generation_kwargs("blip", True, 3, 0.9, 1.0, 5, 75, None, 1.2)
    assert beam == dict(min_length=5, max_length=75, num_beams=3, do_sample=False, repetition_penalty=1.0,
                        length_penalty=1.2)  # fmt: skip
    nucleus = generation_kwargs("blip-2", False, None, 0.8, 0.7, None, None, None, 1.0)
    assert nucleus["do_sample"] and nucleus["top_p"] == 0.8 and nucleus["max_new_tokens"] == 40
    with pytest.raises(ValueError, match="min_length"):
        generation_kwargs("blip", True, 1, 0.9, 1.0, 50, 10, None, 1.0)
    assert join_parts("", "a cat", "  ") == "a cat"


def test_blip2_runs_end_to_end_from_a_local_folder(tmp_path, photos):
    model = load_captioner(str(make_tiny_blip2(tmp_path / "tiny blip2")))
    assert model.kind == "blip-2"
    run = caption_images(photos, model, batch_size=2, num_beams=2, min_length=2, max_length=6, postfix="style")
    assert run.counts["written"] == 3
    assert all(read(photos, f"photo {i}").endswith(" style") and len(read(photos, f"photo {i}")) > 6 for i in range(3))


def test_a_missing_model_folder_or_unreachable_hub_id_is_explained(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_captioner(str(tmp_path / "no such model"))
    empty = tmp_path / "empty model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_captioner(str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Someone/not-cached"):
        load_captioner("Someone/not-cached")


def test_command_line_blip(blip_dir, photos):
    cmd = [sys.executable, "-m", "captioning", "blip", str(photos), "--model", str(blip_dir), "--batch_size", "2",
           "--max_length", "8", "--prefix", "a photo of", "--caption_extension", ".caption", "--json"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["counts"] == {"written": 3, "failed": 1}
    assert (photos / "photo 1.caption").read_text(encoding="utf-8").startswith("a photo of ")
