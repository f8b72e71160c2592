"""A user's day in the studio, in a real browser: headless Chromium (Debian's package) driven by
Playwright against `python -m kohya_gui` (what launch.py starts), training with the real trainer on
the demo's tiny model. The steps run in order and build on each other, as a day does:

load a Kohya_ss preset as shipped → break a value, see it named, fix it (with the in-page folder
browser) → Demo and Start twice in a row (the second run confirmed in the page) → Stop and resume →
queue two jobs (one fails with words, one trains) → caption a folder → Verify the LoRA → try paths
outside the allowed folders → the other tabs' Demos. Every step leaves a screenshot in tests/artifacts/.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from e2e_browser_helpers import (DURATION, POLL_MS, ROOT, choose, click_and_wait, error_badges, fill, needs_chromium,
                                 open_accordion, open_browser, open_page, queue_row, run_until_finished, shot,
                                 start_studio, stop_studio, text_of, tracebacks, value_of, wait_new_text, wait_running,
                                 wait_text, wait_value, was_shown, watch_text)

pytestmark = needs_chromium
KOHYA_PRESET = ROOT / "tests" / "data" / "kohya_lora_v26.json"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    proc, log, log_path, url = start_studio(tmp, "e2e_studio.log")
    yield {"url": url, "tmp": tmp, "ws": tmp / "ws", "log": log_path}
    stop_studio(proc, log)


@pytest.fixture(scope="module")
def browser_and_page(studio):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, pg = open_browser(pw, studio["url"])
        yield browser, pg
        browser.close()


@pytest.fixture(scope="module")
def page(browser_and_page):
    """The user's tab, used all day."""
    return browser_and_page[1]


@pytest.fixture
def new_tab(studio, browser_and_page):
    """A second tab on the same studio, as a user opens one for another task."""
    pg = open_page(browser_and_page[0], studio["url"])
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def demo(studio, page):
    """The user presses Demo once: the tiny model and dataset exist from then on."""
    page.click("#lora-demo")
    wait_text(page, "lora-config-msg", "press Start", timeout_s=300)
    return json.loads((studio["ws"] / "demo" / "demo_lora.json").read_text())


def _no_gradio_errors(pg) -> None:
    assert error_badges(pg) == [], "a handler raised inside Gradio instead of answering in words"


# ---- 1. a Kohya_ss preset as shipped ------------------------------------------------------------------

def test_a_kohya_ss_preset_with_empty_numbers_loads_into_the_form(studio, page):
    pg, tmp = page, studio["tmp"]
    shipped = json.loads(KOHYA_PRESET.read_text())
    shipped.update(max_train_steps="", vae_batch_size=0, max_data_loader_n_workers="", seed="")
    (tmp / "kohya_preset.json").write_text(json.dumps(shipped, indent=2))
    fill(pg, "lora-config-path", str(tmp / "kohya_preset.json"))
    pg.click("#lora-load")
    wait_text(pg, "lora-config-msg", "Imported the Kohya_ss config")
    _no_gradio_errors(pg)
    assert value_of(pg, "lora-network_dim") == str(shipped["network_dim"])
    assert value_of(pg, "lora-output_name") == shipped["output_name"]
    shot(pg, "e2e_01_kohya_preset_loaded")
    # kohya_ss's old default model is gone from the hub: Check says so before any run
    pg.click("#lora-check")
    summary = wait_text(pg, "lora-summary", "problem(s) to fix", timeout_s=120)
    assert "removed from the Hugging Face hub" in summary and "stable-diffusion-v1-5/stable-diffusion-v1-5" in summary
    _no_gradio_errors(pg)


# ---- 2. break a value, see it named, fix it ----------------------------------------------------------

def test_a_broken_value_is_named_with_the_missing_folder_in_one_round(studio, page, demo):
    pg, tmp = page, studio["tmp"]
    concept = next(p for p in Path(demo["train_data_dir"]).iterdir() if p.is_dir())
    wrong, right = tmp / "mydata" / "wrong", tmp / "mydata" / "right"
    shutil.copytree(concept, wrong / concept.name.split("_", 1)[1])      # "toy/" — no <repeats>_ prefix
    shutil.copytree(concept, right / concept.name)                       # "10_toy/"
    saved = dict(demo, train_data_dir=str(tmp / "mydata" / "missing"), output_dir=str(tmp / "out"),
                 output_name="mine")
    (tmp / "saved.json").write_text(json.dumps(saved, indent=2))
    fill(pg, "lora-config-path", str(tmp / "saved.json"))
    pg.click("#lora-load")
    wait_text(pg, "lora-config-msg", "Loaded saved.json")
    fill(pg, "lora-epoch", "-1")
    fill(pg, "lora-learning_rate", "fast")
    summary = click_and_wait(pg, "lora-check", "lora-summary", "(epoch)")
    _no_gradio_errors(pg)
    # every problem at once, each named, the sentence whole (the <repeats>_<name> part included)
    assert "(epoch)" in summary and "-1 is out of range" in summary
    assert "(learning_rate)" in summary and "'fast'" in summary
    assert "(train_data_dir)" in summary and "<repeats>_<name> folders" in summary
    assert "-1 is out of range" in text_of(pg, "lora-epoch")
    assert value_of(pg, "lora-epoch") == "-1", "the form keeps what the user typed"
    shot(pg, "e2e_02_values_named")
    # fix: numbers back in range, the folder with the in-page browser (the wrong one first)
    fill(pg, "lora-epoch", "2")
    fill(pg, "lora-learning_rate", "0.001")
    fill(pg, "lora-train_data_dir", str(wrong))
    summary = click_and_wait(pg, "lora-check", "lora-summary", "1 problem(s) to fix")
    assert "(epoch)" not in summary and "repeats" in summary.lower()
    assert "⚠" in text_of(pg, "lora-train_data_dir")
    pg.click("#lora-train_data_dir-pick")
    pg.wait_for_selector("#lora-picker", state="visible")
    fill(pg, "lora-picker-folder", str(tmp / "mydata"), enter=True)
    pg.locator("#lora-picker-entries label", has_text="right/").click()
    wait_value(pg, "lora-picker-folder", "v.endsWith('right')")
    pg.click("#lora-picker-use-folder")
    wait_value(pg, "lora-train_data_dir", f"v === {json.dumps(str(right.resolve()))}")
    pg.click("#lora-check")
    wait_text(pg, "lora-summary", "Ready to train", timeout_s=120)
    assert "4 images × 10 repeats" in text_of(pg, "lora-plan")
    shot(pg, "e2e_03_fixed_ready")


# ---- 3. Demo + Start, twice -----------------------------------------------------------------------------

def test_demo_trains_twice_in_a_row_the_second_run_confirmed(studio, page, demo):
    pg = page
    out = Path(demo["output_dir"])
    for attempt in (1, 2):
        click_and_wait(pg, "lora-demo", "lora-config-msg", "press Start")
        assert value_of(pg, "lora-output_name") == demo["output_name"]
        before = text_of(pg, "lora-status")
        pg.click("#lora-start")
        if attempt == 2:
            pg.wait_for_selector("#lora-confirm", state="visible", timeout=120_000)
            assert "toy.safetensors" in text_of(pg, "lora-confirm")
            shot(pg, "e2e_05_overwrite_confirmation")
            pg.click("#lora-confirm-overwrite")
        wait_new_text(pg, "lora-status", before, "Started")
        wait_running(pg)
        status = run_until_finished(pg, demo["output_name"], mid_shot="monitor" if attempt == 1 else None)
        assert status == "done", text_of(pg, "monitor-final")
        files = text_of(pg, "monitor-files")
        assert "toy.safetensors" in files and "verified" in files
        shot(pg, f"e2e_04_demo_run_{attempt}")
    replaced = [p for p in out.iterdir() if p.name.startswith("toy.replaced-")]
    assert len(replaced) == 1 and (replaced[0] / "toy.safetensors").is_file(), "the first result is kept aside"
    assert (out / "toy.safetensors").is_file()
    pg.wait_for_selector("#monitor-samples img")
    assert "Training finished" in text_of(pg, "monitor-final")
    shot(pg, "lora_tab", docs=True)


# ---- 4. Stop and resume -----------------------------------------------------------------------------------

def test_stop_then_resume_from_the_saved_state(studio, page, demo):
    pg, tmp = page, studio["tmp"]
    pg.wait_for_function("() => document.getElementById('monitor-stop').disabled", timeout=30_000,
                         polling=POLL_MS)  # nothing runs
    click_and_wait(pg, "lora-demo", "lora-config-msg", "press Start")
    fill(pg, "lora-output_name", "long")
    fill(pg, "lora-output_dir", str(tmp / "long_out"))
    fill(pg, "lora-epoch", "12")
    click_and_wait(pg, "lora-start", "lora-status", "Started")
    wait_running(pg)
    pg.wait_for_function("() => /Step [1-9]/.test(document.getElementById('monitor-progress')?.innerText || '')",
                         timeout=180_000, polling=POLL_MS)
    assert text_of(pg, "monitor-stop").strip().endswith("Stop training")
    watch_text(pg, "monitor-stop-msg", "Stopping")   # shown until the trainer has saved: maybe only a moment
    pg.click("#monitor-stop")
    assert was_shown(pg, "monitor-stop-msg", "Stopping")
    assert run_until_finished(pg, "long") == "stopped"
    wait_text(pg, "queue-table", "stopped", timeout_s=30)
    pg.wait_for_function("() => document.getElementById('monitor-stop').disabled", timeout=30_000, polling=POLL_MS)
    assert "Kill now" not in text_of(pg, "monitor-stop")
    final = text_of(pg, "monitor-final")
    assert "Stopped" in final and "long-stopped-state" in final
    shot(pg, "e2e_06_stopped")
    state = tmp / "long_out" / "long-stopped-state"
    assert state.is_dir()
    open_accordion(pg, "lora-advanced-saving")
    fill(pg, "lora-resume", str(state))
    fill(pg, "lora-epoch", "2")          # finish sooner: the trainer notes the changed length and goes on
    click_and_wait(pg, "lora-start", "lora-status", "Started")
    wait_running(pg)                        # the monitor has switched to the new run
    assert run_until_finished(pg, "long") == "done", text_of(pg, "monitor-final")
    assert (tmp / "long_out" / "long.safetensors").is_file()
    shot(pg, "e2e_07_resumed_done")
    fill(pg, "lora-resume", "")


# ---- 5. two queued jobs: one fails in words, one trains ----------------------------------------------

def test_two_queued_jobs_one_fails_with_words_one_trains(studio, page, demo):
    pg, tmp = page, studio["tmp"]
    broken = tmp / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    for name, model in (("will_fail", str(broken)), ("will_work", demo["pretrained_model_name_or_path"])):
        cfg = dict(demo, output_name=name, pretrained_model_name_or_path=model, epoch=1, max_train_steps=4,
                   output_dir=str(tmp / "queue_out"))
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
    pg.click("#queue-pause")
    wait_text(pg, "queue-msg", "paused")
    for name in ("will_fail", "will_work"):
        fill(pg, "lora-config-path", str(tmp / f"{name}.json"))
        click_and_wait(pg, "lora-load", "lora-config-msg", f"{name}.json")
        click_and_wait(pg, "lora-start", "lora-status", "paused queue")
    wait_text(pg, "queue-table", "will_work")
    pg.click("#queue-resume")
    deadline = time.time() + 300
    while "done" not in queue_row(pg, "will_work") and time.time() < deadline:
        time.sleep(0.5)
    assert "failed" in queue_row(pg, "will_fail") and "done" in queue_row(pg, "will_work")
    assert DURATION.search(queue_row(pg, "will_work").split("will_work", 1)[1]), "the Time columns show a duration"
    shot(pg, "e2e_08_queue", locator=pg.locator("#monitor"))
    choose(pg, "monitor-job", "will_fail")
    final = wait_text(pg, "monitor-final", "Training failed", timeout_s=30)
    assert "Traceback" not in final and 'File "' not in final, "the page shows the error, not the trace"
    assert "trainer.log" in final
    shot(pg, "e2e_09_failed_in_words", locator=pg.locator("#monitor"))
    choose(pg, "monitor-job", "Latest run")


# ---- 6. utilities: caption a folder, verify the LoRA ---------------------------------------------------

def test_captioning_reports_what_it_did_and_fails_fast_offline(studio, new_tab, demo):
    pg, tmp = new_tab, studio["tmp"]
    folder = tmp / "to_caption"
    shutil.copytree(next(p for p in Path(demo["train_data_dir"]).iterdir() if p.is_dir()), folder)
    pg.locator("button[role=tab]", has_text="Utilities").first.click()
    fill(pg, "util-wd14-train_data_dir", str(folder))
    fill(pg, "util-wd14-model_dir", str(tmp / "taggers"))          # no tagger here, and the hub is offline
    out = click_and_wait(pg, "util-wd14-run", "util-output", "⚠ 0 captions written")  # the verdict under the output
    assert "⚠ 0 captions written: all 4 images already have one" in out and "Overwrite or Append" in out
    shot(pg, "e2e_10_caption_nothing_to_do")
    pg.locator("#util-wd14-overwrite input").first.check()
    out = click_and_wait(pg, "util-wd14-run", "util-output", "failed (exit code")
    assert "offline" in out and "model.onnx" in out
    shot(pg, "e2e_11_caption_offline")


def test_verify_the_trained_lora(studio, new_tab, demo):
    pg = new_tab
    pg.locator("button[role=tab]", has_text="Utilities").first.click()
    pg.locator("button[role=tab]", has_text="Verify LoRA").click()
    lora = str(Path(demo["output_dir"]) / "toy.safetensors")
    fill(pg, "util-verify-lora", lora)
    fill(pg, "util-verify-base", demo["pretrained_model_name_or_path"])
    pg.click("#util-verify-run")
    result = wait_text(pg, "util-verify-result", "OK", timeout_s=180)
    assert "fits" in result
    shot(pg, "e2e_12_verify_ok")


# ---- 7. paths outside the allowed folders --------------------------------------------------------------

def test_paths_outside_the_allowed_folders_are_refused_in_words(studio, page):
    pg = page
    pg.locator("button[role=tab]", has_text="LoRA").first.click()
    fill(pg, "lora-config-path", "/etc/hostname")
    refused = click_and_wait(pg, "lora-load", "lora-config-msg", "outside the folders")
    fill(pg, "lora-config-path", "/etc/kohya_studio_test.json")
    assert click_and_wait(pg, "lora-save", "lora-config-msg", "outside the folders") != refused
    assert not Path("/etc/kohya_studio_test.json").exists()
    fill(pg, "lora-config-path", str(studio["tmp"] / "no_such_folder" / "x.json"))
    click_and_wait(pg, "lora-save", "lora-config-msg", "does not exist")
    assert "Errno" not in text_of(pg, "lora-config-msg")
    pg.click("#lora-output_dir-pick")
    pg.wait_for_selector("#lora-picker", state="visible")
    fill(pg, "lora-picker-folder", str(studio["tmp"] / ".." / ".." / ".."), enter=True)
    wait_text(pg, "lora-picker-message", "outside the folders")
    fill(pg, "lora-picker-folder", "x" * 5000, enter=True)
    wait_text(pg, "lora-picker-message", "at most")
    shot(pg, "e2e_13_outside_refused")
    pg.click("#lora-picker-cancel")
    fill(pg, "lora-output_dir", "/etc/studio_out")
    summary = click_and_wait(pg, "lora-start", "lora-summary", "(output_dir)")
    assert "(output_dir)" in summary and "outside the folders" in summary
    _no_gradio_errors(pg)


# ---- 8. every training tab has its Demo ------------------------------------------------------------------

@pytest.mark.parametrize("tab,title", [("dreambooth", "Dreambooth"), ("textual_inversion", "Textual Inversion"),
                                       ("finetune", "Finetuning")])
def test_every_training_tab_has_its_demo(studio, new_tab, demo, tab, title):
    pg = new_tab
    pg.locator("button[role=tab]", has_text=title).first.click()
    click_and_wait(pg, f"{tab}-demo", f"{tab}-config-msg", "press Start")
    click_and_wait(pg, f"{tab}-check", f"{tab}-summary", "Ready to train (values, paths and dataset checked)")
    shot(pg, f"e2e_14_demo_{tab}")


def test_the_studio_log_holds_no_traceback(studio):
    assert tracebacks(studio["log"]) == []
