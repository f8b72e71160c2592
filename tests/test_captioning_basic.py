"""Basic captioning (`python -m captioning basic`, Utilities ▸ Captioning ▸ Basic captioning): a fixed caption,
a trigger word as prefix/postfix, find/replace across the caption files of a folder."""

import json
import sys
from pathlib import Path

from PIL import Image

from captioning.__main__ import main
from kohya_gui.tabs.captioning_form import caption_argv
from kohya_gui.tabs.utilities import stream_command

ROOT = Path(__file__).resolve().parents[1]


def dataset(folder: Path, captions: dict[str, str | bytes | None]) -> Path:
    """An image per name; its .txt caption when one is given (bytes are written as they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, caption in captions.items():
        Image.new("RGB", (8, 8), "red").save(folder / f"{name}.png")
        if isinstance(caption, bytes):
            (folder / f"{name}.txt").write_bytes(caption)
        elif caption is not None:
            (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    return folder


def caption(folder: Path, name: str) -> str:
    return (folder / f"{name}.txt").read_text(encoding="utf-8")


def basic(capsys, *args) -> dict:
    """Run the CLI as the user would; returns its JSON result."""
    assert main(["basic", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_fixed_caption_is_written_only_where_none_exists_unless_overwrite_is_ticked(tmp_path, capsys):
    d = dataset(tmp_path / "10_sks dog", {"a": None, "b": "my own words", "c": None})
    r = basic(capsys, d, "--caption_text", "a photo of sks dog")
    assert (caption(d, "a"), caption(d, "b"), caption(d, "c")) == ("a photo of sks dog\n", "my own words",
                                                                   "a photo of sks dog\n")
    assert (r["counts"]["created"], r["counts"]["unchanged"], r["written"]) == (2, 1, 2)
    r = basic(capsys, d, "--caption_text", "a photo of sks dog", "--overwrite")
    assert caption(d, "b") == "a photo of sks dog\n"
    assert (r["counts"]["overwritten"], r["counts"]["unchanged"]) == (1, 2)
    assert not [p for p in d.iterdir() if p.name.startswith(".")], "no temp file is left behind"


def test_a_trigger_word_is_added_once_even_when_the_button_is_clicked_twice(tmp_path, capsys):
    d = dataset(tmp_path / "img", {"a": "1girl, solo", "b": "sks, 1girl", "c": "sksx style", "d": None,
                                   "e": "\ufeffline one\nline two\n"})
    Image.new("RGB", (8, 8)).save(d / "a.jpg")  # a.png and a.jpg share a.txt: edited once, counted once
    first = basic(capsys, d, "--prefix", "sks,", "--postfix", "masterpiece")
    assert caption(d, "a") == "sks, 1girl, solo masterpiece\n"
    assert caption(d, "b") == "sks, 1girl masterpiece\n", "a caption that starts with the prefix keeps one"
    assert caption(d, "c") == "sks, sksx style masterpiece\n", "'sksx' is another word"
    assert caption(d, "d") == "sks, masterpiece\n", "an image without a caption gets prefix + postfix (kohya)"
    assert caption(d, "e") == "sks, line one masterpiece\nsks, line two masterpiece\n", "each line (wildcards)"
    assert (first["counts"]["changed"], first["counts"]["created"]) == (4, 1)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    second = basic(capsys, d, "--prefix", "sks,", "--postfix", "masterpiece")
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert (second["written"], second["counts"]["unchanged"]) == (0, 5)
    assert second["report"].startswith("0 caption files written"), "the page shows ⚠, not success"


def test_find_and_replace_changes_only_the_matching_captions_in_sub_folders_when_asked(tmp_path, capsys):
    d = dataset(tmp_path / "img", {"a": "a dog on grass", "b": "a cat", "c": "dog, dog"})
    dataset(d / "more", {"d": "hot dog"})
    r = basic(capsys, d, "--find_text", "dog", "--replace_text", "sks dog")
    assert (caption(d, "a"), caption(d, "b"), caption(d, "c")) == ("a sks dog on grass\n", "a cat",
                                                                   "sks dog, sks dog\n")
    assert caption(d / "more", "d") == "hot dog", "sub-folders only with --recursive"
    assert (r["images"], r["counts"]["changed"], r["counts"]["unchanged"]) == (3, 2, 1)
    r = basic(capsys, d, "--find_text", " on grass", "--recursive")  # empty replacement removes
    assert caption(d, "a") == "a sks dog\n" and caption(d / "more", "d") == "hot dog"
    assert (r["images"], r["counts"]["changed"], r["counts"]["unchanged"]) == (4, 1, 3)


def test_odd_caption_files_are_listed_and_left_untouched(tmp_path, capsys):
    d = dataset(tmp_path / "img", {"latin1": b"caf\xe9 au lait", "only": "dog", "ok": "a dog"})
    (d / "folder.png").mkdir()  # not an image file: ignored
    Image.new("RGB", (8, 8)).save(d / "x.png")
    (d / "x.txt").mkdir()  # a folder where the caption would be
    r = basic(capsys, d, "--find_text", "dog")
    assert (d / "latin1.txt").read_bytes() == b"caf\xe9 au lait", "never rewritten with lost characters"
    assert caption(d, "only") == "dog", "a caption is never emptied (sd-scripts stops on an empty one)"
    assert caption(d, "ok") == "a\n"
    problems = {Path(p["path"]).name: p["error"] for p in r["problems"]}
    assert "not UTF-8" in problems["latin1.txt"] and "empty" in problems["only.txt"] and "x.txt" in problems
    assert (r["written"], r["counts"]["failed"]) == (1, 3)
    basic(capsys, d, "--caption_text", "a cup", "--overwrite")  # asked to replace it whole: it is
    assert caption(d, "latin1") == "a cup\n"


def test_bad_input_is_refused_with_the_field_to_fix(tmp_path, capsys):
    empty = tmp_path / "empty"
    dataset(empty / "sub", {"a": None})
    cases = [([tmp_path / "missing", "--prefix", "sks"], "Image folder not found"),
             ([empty, "--prefix", "sks"], "holds no images"),
             ([empty / "sub", "--replace_text", "cat"], "Find text is empty"),
             ([empty / "sub"], "nothing to do: fill Caption text")]
    for args, words in cases:
        assert main(["basic", *map(str, args)]) == 1
        assert words in capsys.readouterr().err
    assert not (empty / "sub" / "a.txt").exists()


def test_basic_captioning_runs_from_the_page(tmp_path):
    d = dataset(tmp_path / "img", {"a": None, "b": "a dog"})
    argv = caption_argv(sys.executable, "basic", {"train_data_dir": str(d), "caption_text": "a photo",
                                                  "prefix": "sks", "caption_extension": ".txt"})
    last = list(stream_command(argv, str(ROOT)))[-1]
    assert "✅ 2 caption files written for 2 image(s)" in last, last
    assert (caption(d, "a"), caption(d, "b")) == ("sks a photo\n", "sks a dog\n")
    again = list(stream_command(argv, str(ROOT)))[-1]
    assert "⚠ 0 caption files written" in again and "2 already as asked" in again, again
