"""The Utilities tab builds `python -m captioning …` commands and streams their output into the page."""
from __future__ import annotations

import sys

from PIL import Image

from captioning.__main__ import build_parser
from kohya_gui.settings import PROJECT_ROOT
from kohya_gui.tabs import utilities as u


def _parses(argv: list[str]):
    assert argv[:3] == [sys.executable, "-m", "captioning"]
    return build_parser().parse_args(argv[3:])


def test_every_tool_form_builds_a_command_the_captioning_cli_accepts():
    wd14 = _parses(u.wd14_argv(sys.executable, "/data/img", "/m", "", 0.4, 0.5, 0, "bad tag", "trig", "", ".txt",
                               "append new tags to existing captions", True, 4, False, True))
    assert (wd14.thresh, wd14.general_threshold, wd14.character_threshold) == (0.4, 0.5, None)
    assert wd14.append_tags and not wd14.remove_underscore and wd14.cpu and wd14.prefix == "trig"
    blip = _parses(u.blip_argv(sys.executable, "/data/img", "Salesforce/blip", False, 3, 0.8, 0, 40, "", "",
                               ".caption", "overwrite existing captions", 2))
    assert not blip.beam_search and blip.num_beams == 3 and blip.max_length == 40 and blip.overwrite
    prep = _parses(u.prepare_argv(sys.executable, "mychar", "woman", "/src", 10, "", 1, "/dest"))
    assert (prep.training_repeats, prep.reg_images_dir) == (10, None)
    bal = _parses(u.balance_argv(sys.executable, "/data", 500, False, True))
    assert bal.yes and bal.steps_per_concept == 500


def test_folder_preparation_runs_and_its_output_appears_in_the_page(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), "blue").save(src / f"p{i}.png")
    argv = u.prepare_argv(sys.executable, "mychar", "woman", str(src), 5, "", 1, str(tmp_path / "dest"))
    outputs = list(u.stream_command(argv, str(PROJECT_ROOT)))
    assert outputs[-1].endswith("✅ finished")
    assert "copied" in outputs[-1]
    assert (tmp_path / "dest" / "img" / "5_mychar woman" / "p0.png").is_file()
    assert (src / "p0.png").is_file(), "the source images are never moved or deleted"


def test_a_failing_tool_shows_its_error_and_exit_code(tmp_path):
    argv = u.prepare_argv(sys.executable, "mychar", "", str(tmp_path / "missing"), 5, "", 1, str(tmp_path / "d"))
    last = list(u.stream_command(argv, str(PROJECT_ROOT)))[-1]
    assert "failed (exit code" in last and "error:" in last
