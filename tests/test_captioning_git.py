"""GIT captioning end to end on a tiny randomly initialised GIT model saved in a local folder."""
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioning.git import caption_images, load_git, remove_words
from captioning.tiny import make_tiny_blip, make_tiny_git

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def git_dir(tmp_path_factory):
    return make_tiny_git(tmp_path_factory.mktemp("models") / "tiny git")


@pytest.fixture(scope="module")
def git(git_dir):
    return load_git(str(git_dir))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40 + 10 * i, 30), rgb).save(folder / f"photo {i}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    return folder


def test_git_captions_every_readable_image_with_prefix_and_keeps_existing(git, photos):
    (photos / "photo 0.caption").write_text("mine\n", encoding="utf-8")
    run = caption_images(photos, git, batch_size=2, max_length=8, prefix="sks,", postfix="!")
    assert run.counts["written"] == 2 and run.counts["skipped"] == 1
    assert [p["path"] for p in run.problems] == [str(photos / "bad.png")]
    assert (photos / "photo 0.caption").read_text(encoding="utf-8") == "mine\n"
    for i in (1, 2):
        text = (photos / f"photo {i}.caption").read_text(encoding="utf-8").strip()
        assert text.startswith("sks, ") and text.endswith(" !") and len(text) > len("sks,  !")


def test_batching_does_not_change_greedy_captions(git, photos):
    one = caption_images(photos, git, batch_size=1, max_length=8, existing="overwrite")
    three = caption_images(photos, git, batch_size=3, max_length=8, existing="overwrite")
    assert one.captions == three.captions


def test_remove_words_drops_text_read_off_the_image():
    assert remove_words('a store front with the words "open late" on it') == "a store front on it"
    assert remove_words("a red sign that says stop on a pole") == "a red sign on a pole"
    assert remove_words("a cat sitting on a chair") == "a cat sitting on a chair"


def test_a_blip_folder_is_refused_with_the_reason(tmp_path):
    blip = make_tiny_blip(tmp_path / "blip")
    with pytest.raises(ValueError, match="GIT"):
        load_git(str(blip))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_git(str(tmp_path / "missing"))


def test_the_cli_takes_kohyas_git_options(git_dir, photos):
    proc = subprocess.run([sys.executable, "-m", "captioning", "git", str(photos), "--model_id", str(git_dir),
                           "--max_length", "6", "--caption_extension", ".txt", "--batch_size", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in photos.glob("*.txt")) == ["photo 0.txt", "photo 1.txt", "photo 2.txt"]
