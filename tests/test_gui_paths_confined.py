"""Load, Save, Start and the picker follow one rule: only paths under the studio's folders (the
project, the workspace, each --data_root), refused in words — never an exception's text."""
from __future__ import annotations

import json

import pytest

from kohya_gui import configio
from kohya_gui.picker import PathRefused, confine, list_folder
from gui_tab import make_tab, raw_values


@pytest.fixture
def tab(tmp_path):
    inside = tmp_path / "inside"
    inside.mkdir()
    return make_tab(tmp_path / "ws", inside)


_raw = raw_values


def test_load_and_save_outside_the_roots_are_refused_without_telling_what_exists(tab, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"config_version": 1, "training_type": "lora"}))
    message = tab.load(str(outside), *_raw(tab))[-1]
    assert "outside the folders" in message
    assert tab.load(str(tmp_path / "absent.json"), *_raw(tab))[-1] == message.replace("outside.json", "absent.json")
    assert "outside the folders" in tab.save(str(tmp_path / "new.json"), True, *_raw(tab))
    assert not (tmp_path / "new.json").exists()


def test_save_in_words_for_a_missing_folder_and_a_wrong_suffix(tab, tmp_path):
    inside = tmp_path / "inside"
    text = tab.save(str(inside / "no" / "such" / "x.json"), False, *_raw(tab))
    assert "does not exist" in text and "Errno" not in text and not (inside / "no").exists()
    assert "end the name with .json" in tab.save(str(inside / "x.toml"), False, *_raw(tab))
    assert "Saved" in tab.save(str(inside / "x.json"), False, *_raw(tab))


def test_start_refuses_paths_outside_the_roots(tab, tmp_path):
    out = tab.start(False, *_raw(tab, output_dir=str(tmp_path / "elsewhere")))
    summary, message = out[len(tab.form.specs)], out[-1]
    assert "not started" in message and "`output_dir`" in summary and "outside the folders" in summary
    assert tab.ctx.queue.snapshot() == []


@pytest.mark.parametrize("bad,words", [("a\x00b", "NUL"), ("x" * 5000, "at most"), ("y" * 300, "cannot be opened")])
def test_odd_paths_in_the_picker_are_refused_in_words(tmp_path, bad, words):
    roots = [tmp_path]
    with pytest.raises(PathRefused, match=words):
        list_folder(bad, roots)


def test_a_kohya_import_that_crashes_is_one_message(monkeypatch, tmp_path):
    (tmp_path / "k.json").write_text(json.dumps({"LoRA_type": "Standard", "max_train_steps": ""}))

    def broken(*_a, **_k):
        raise TypeError("type str doesn't define __round__ method")

    monkeypatch.setattr(configio, "import_kohya_json", broken)
    with pytest.raises(configio.LoadError, match="could not be imported .*Nothing was changed"):
        configio.read_values(tmp_path / "k.json", "lora", roots=[tmp_path])
    assert confine(tmp_path / "k.json", [tmp_path]) == (tmp_path / "k.json").resolve()
