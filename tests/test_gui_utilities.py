"""The Utilities tab builds `python -m captioning …` commands and streams their output into the page."""
from __future__ import annotations

import sys

from PIL import Image

from captioning.__main__ import build_parser
from kohya_gui.settings import PROJECT_ROOT
from captioning.options import CAPTIONERS
from kohya_gui.tabs import utilities as u
from kohya_gui.tabs.captioning_form import caption_argv, values_from_inputs
from trainer.tools.optionmodel import widgets


def _parses(argv: list[str]):
    assert argv[:3] == [sys.executable, "-m", "captioning"]
    return build_parser().parse_args(argv[3:])


def _form(captioner: str, **typed) -> dict:
    """What the page hands over: every widget at its default, the typed ones changed."""
    raw = [typed.get(w.name, w.default) for w in widgets(CAPTIONERS[captioner].options)]
    return values_from_inputs(captioner, raw)


def test_the_page_and_the_cli_show_the_same_captioning_options_with_the_same_defaults():
    """One declaration per captioner (captioning/options.py): the page's widgets and `python -m captioning
    <captioner> --help` list the same options, and an untouched form runs the CLI's defaults."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, captioner in CAPTIONERS.items():
        page = {w.name: w.default for w in widgets(captioner.options)}
        cli = {a.dest: a.default for a in sub[name]._actions
               if a.dest not in ("help", "json", "quiet", "debug")}   # how a run reports: CLI only
        assert page == cli, name
        untouched = _parses(caption_argv(sys.executable, name, _form(name, train_data_dir="/img")))
        assert {k: v for k, v in vars(untouched).items() if k in page} == {**page, "train_data_dir": "/img"}
    assert sub["wd14"].get_default("batch_size") == 8 and sub["git"].get_default("caption_extension") == ".caption"


def test_every_tool_form_builds_a_command_the_captioning_cli_accepts():
    wd14 = _parses(caption_argv(sys.executable, "wd14", _form("wd14", train_data_dir="/data/img", model_dir="/m",
                                                             thresh=0.4, general_threshold=0.5, prefix="trig",
                                                             undesired_tags="bad tag", append_tags=True,
                                                             remove_underscore=False, cpu=True, batch_size=4.0)))
    assert (wd14.thresh, wd14.general_threshold, wd14.character_threshold) == (0.4, 0.5, None)
    assert wd14.append_tags and not wd14.remove_underscore and wd14.cpu and wd14.prefix == "trig"
    assert (wd14.batch_size, wd14.undesired_tags, wd14.train_data_dir) == (4, "bad tag", "/data/img")
    blip = _parses(caption_argv(sys.executable, "blip", _form("blip", train_data_dir="/data/img", num_beams=3,
                                                             model="Salesforce/blip", beam_search=False,
                                                             max_length=40, caption_extension=".caption",
                                                             overwrite=True)))
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


def test_the_drawn_captioning_forms_start_at_the_clis_defaults():
    """The components the page draws (not only the declaration) hold the CLI's defaults, in the order the
    click handler reads them."""
    import gradio as gr

    from kohya_gui.tabs.captioning_form import render_captioner

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    with gr.Blocks():
        for name in CAPTIONERS:
            drawn = render_captioner(name, lambda label, n: gr.Textbox(label=label))
            shown = [None if c.value in ("", None) else c.value for c in drawn]
            cli = [sub[name].get_default(w.name) for w in widgets(CAPTIONERS[name].options)]
            assert shown == [None if v == "" else v for v in cli], name
