"""End to end in a real browser: headless Chromium (Debian's package) driven by Playwright against a
studio started by this test, training with the real trainer on the demo's tiny model.

A user loads a saved config, sees the error for an image folder without a <repeats>_ prefix, fixes it
with the in-page folder browser, applies the Demo preset, starts, watches the run reach 100 % with a
LoRA file and a sample image listed, then queues two jobs: the first fails, the second succeeds.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_TIMEOUT_MS = 240_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """The studio serving a fresh workspace; its log is saved under tests/artifacts/."""
    tmp = tmp_path_factory.mktemp("e2e")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = open(ARTIFACTS / "e2e_studio.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "kohya_gui", "--server_port", str(port), "--headless",
                             "--workspace", str(tmp / "ws"), "--data_root", str(tmp)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the studio exited with {proc.returncode}; see tests/artifacts/e2e_studio.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the studio did not start within 180 s")
    yield {"url": url, "tmp": tmp, "ws": tmp / "ws"}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(studio):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1800})
        pg.set_default_timeout(60_000)
        pg.goto(studio["url"])
        pg.wait_for_selector("#lora-output_name")
        yield pg
        browser.close()


# ---- small helpers over Gradio's DOM ---------------------------------------------------------------

def fill(pg, elem_id: str, text: str, enter: bool = False) -> None:
    box = pg.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(text)
    if enter:
        box.press("Enter")
    else:
        box.blur()


def text_of(pg, elem_id: str) -> str:
    return pg.locator(f"#{elem_id}").inner_text()


def choose(pg, elem_id: str, option: str) -> None:
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator(f"#{elem_id} li[role=option]", has_text=option).first.click()


def wait_text(pg, elem_id: str, needle: str, timeout: int = 60_000) -> str:
    pg.wait_for_function(
        "([id, needle]) => (document.getElementById(id)?.innerText || '').includes(needle)",
        arg=[elem_id, needle], timeout=timeout)
    return text_of(pg, elem_id)


def shot(pg, name: str, *, locator=None, docs: bool = False) -> None:
    target = locator or pg
    target.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if docs and os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":  # the suite never rewrites tracked docs
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", SCREENSHOTS / f"{name}.png")


def run_until_finished(pg, job_hint: str) -> str:
    """Wait for the monitor's final state; screenshot it once mid-run for the docs."""
    taken = False
    deadline = time.time() + RUN_TIMEOUT_MS / 1000
    while time.time() < deadline:
        bar = pg.locator("#monitor-progress .ks-progress")
        status = bar.get_attribute("data-status") if bar.count() else None
        percent = int(bar.get_attribute("data-percent") or 0) if bar.count() else 0
        if not taken and status == "running" and 40 <= percent < 95:
            shot(pg, "monitor", locator=pg.locator("#monitor"), docs=True)
            taken = True
        if status in ("done", "failed", "stopped") and job_hint in text_of(pg, "monitor-progress"):
            return status
        time.sleep(0.3)
    pytest.fail(f"the run '{job_hint}' did not finish in time; monitor shows: {text_of(pg, 'monitor-progress')}")


# ---- the story ---------------------------------------------------------------------------------------

def test_a_user_trains_the_demo_lora_and_queues_two_jobs(studio, page):
    pg, tmp, ws = page, studio["tmp"], studio["ws"]

    # The demo files (tiny model + dataset) exist after pressing Demo once; a user's own dataset is
    # modelled here by copying the demo images into a folder that lacks the <repeats>_ prefix.
    choose(pg, "lora-preset", "Demo")
    pg.click("#lora-apply-preset")
    demo_note = wait_text(pg, "lora-config-msg", "press Start", timeout=300_000)
    assert "Demo" in demo_note
    demo_cfg = json.loads((ws / "demo" / "demo_lora.json").read_text())
    concept = next(p for p in Path(demo_cfg["train_data_dir"]).iterdir() if p.is_dir())
    wrong = tmp / "mydata" / "wrong"
    right = tmp / "mydata" / "right"
    shutil.copytree(concept, wrong / concept.name.split("_", 1)[1])      # "mychar/" — no repeats
    shutil.copytree(concept, right / concept.name)                       # "N_mychar/"
    saved = dict(demo_cfg, train_data_dir=str(wrong), output_dir=str(tmp / "out"), output_name="first")
    (tmp / "saved.json").write_text(json.dumps(saved, indent=2))

    # 1. load the saved JSON config
    fill(pg, "lora-config-path", str(tmp / "saved.json"))
    pg.click("#lora-load")
    wait_text(pg, "lora-config-msg", "Loaded saved.json")
    # 2. check: the image folder error appears next to the field and in the summary
    pg.click("#lora-check")
    summary = wait_text(pg, "lora-summary", "problem(s) to fix", timeout=120_000)
    assert "train_data_dir" in summary
    field = text_of(pg, "lora-train_data_dir")
    assert "⚠" in field and "repeats" in field.lower()
    shot(pg, "e2e_folder_error")
    # 3. fix it with the in-page browser: open 📂, go to mydata/right, use it
    pg.click("#lora-train_data_dir-pick")
    pg.wait_for_selector("#lora-picker", state="visible")
    fill(pg, "lora-picker-folder", str(tmp / "mydata"), enter=True)
    pg.locator("#lora-picker-entries label", has_text="right/").click()
    pg.wait_for_function("() => document.querySelector('#lora-picker-folder input, #lora-picker-folder "
                         "textarea').value.endsWith('right')")
    pg.click("#lora-picker-use-folder")
    pg.wait_for_function("(v) => document.querySelector('#lora-train_data_dir input, #lora-train_data_dir "
                         "textarea').value === v", arg=str(right.resolve()))
    # traversal outside the allowed roots is refused in the page
    pg.click("#lora-train_data_dir-pick")
    fill(pg, "lora-picker-folder", str(tmp / ".." / ".." / ".."), enter=True)
    wait_text(pg, "lora-picker-message", "outside the folders")
    pg.click("#lora-picker >> text=Cancel")
    pg.click("#lora-check")
    wait_text(pg, "lora-summary", "Ready to train", timeout=120_000)
    assert "steps" in text_of(pg, "lora-plan")

    # 4. apply the Demo preset and start; the run reaches 100 % with a LoRA file and a sample listed
    choose(pg, "lora-preset", "Demo")
    pg.click("#lora-apply-preset")
    wait_text(pg, "lora-config-msg", "Loaded")
    fill(pg, "lora-epoch", "4")           # a few more steps so the monitor can be seen mid-run
    shot(pg, "lora_tab", docs=True)
    pg.click("#lora-start")
    wait_text(pg, "lora-status", "Started")
    assert run_until_finished(pg, demo_cfg["output_name"]) == "done"
    assert "data-percent='100'" in pg.locator("#monitor-progress").inner_html().replace('"', "'")
    files = text_of(pg, "monitor-files")
    assert f"{demo_cfg['output_name']}.safetensors" in files and "verified" in files
    pg.wait_for_selector("#monitor-samples img")
    assert "Training finished" in text_of(pg, "monitor-final")
    shot(pg, "e2e_done")

    # 5. queue two jobs: the first fails (a corrupt checkpoint), the second succeeds
    broken = tmp / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    for name, model in (("will_fail", str(broken)), ("will_work", demo_cfg["pretrained_model_name_or_path"])):
        cfg = dict(demo_cfg, output_name=name, pretrained_model_name_or_path=model)
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
    pg.click("#queue-pause")
    wait_text(pg, "queue-msg", "paused")
    for name in ("will_fail", "will_work"):
        fill(pg, "lora-config-path", str(tmp / f"{name}.json"))
        pg.click("#lora-load")
        wait_text(pg, "lora-config-msg", f"{name}.json")
        pg.click("#lora-start")
        wait_text(pg, "lora-status", "paused queue", timeout=120_000)
    wait_text(pg, "queue-table", "will_work")
    pg.click("#queue-resume")
    wait_text(pg, "queue-table", "failed", timeout=RUN_TIMEOUT_MS)
    deadline = time.time() + RUN_TIMEOUT_MS / 1000
    while "done" not in _status_of(pg, "will_work") and time.time() < deadline:
        time.sleep(0.5)
    assert "failed" in _status_of(pg, "will_fail")
    assert "done" in _status_of(pg, "will_work")
    shot(pg, "e2e_queue", locator=pg.locator("#monitor"))


def _status_of(pg, job_name: str) -> str:
    for row in pg.locator("#queue-table [role=row]").all_inner_texts():
        if job_name in row:
            return row
    return ""
