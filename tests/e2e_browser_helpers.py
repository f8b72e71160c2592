"""What the browser suites share: the studio as a real server, headless Chromium (Debian's package)
driven by Playwright, and small helpers over Gradio's DOM. Screenshots go to tests/artifacts/."""
from __future__ import annotations

import os
import re
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
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
RUN_TIMEOUT_S = 240
# wait_for_function polls every animation frame by default: ~60 innerText reads a second that compete with
# Gradio's own rendering for the page's one thread; 10 a second answer as soon
POLL_MS = 100
BUSY_JS = r"/processing \||queue: \d/"  # Gradio's progress text on a component while its answer is pending

needs_chromium = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_studio(tmp: Path, log_name: str, attempts: int = 3):
    """`python -m kohya_gui` (what launch.py runs) on a free port, offline like a fresh pod.

    Gradio's launch asks its own page once with a 3 s timeout and gives up when the machine is busy
    ("When localhost is not accessible…"); such a start is tried again on another port."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / log_name
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for attempt in range(attempts):
        port = free_port()
        log = open(log_path, "w")
        proc = subprocess.Popen([sys.executable, "-m", "kohya_gui", "--server_port", str(port), "--headless",
                                 "--workspace", str(tmp / "ws"), "--data_root", str(tmp)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        if _serving(proc, port):
            return proc, log, log_path, f"http://127.0.0.1:{port}/"
        log.close()
        if "localhost is not accessible" not in log_path.read_text(errors="replace"):
            break
    pytest.fail(f"the studio did not start; see {log_path}")


def _serving(proc, port: int, timeout_s: float = 180) -> bool:
    """Up once the page answers and launch() has returned without giving up."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        return False
    time.sleep(5)            # launch() checks its own page after the port opens (up to 5 tries)
    return proc.poll() is None


def stop_studio(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def open_browser(pw, url: str):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    return browser, open_page(browser, url)


def open_page(browser, url: str):
    """A new tab on the studio: only the LoRA tab is built until another is opened (Gradio renders a tab
    on its first visit, and every built tab makes each later update of the page slower)."""
    pg = browser.new_page(viewport={"width": 1440, "height": 1800})
    pg.set_default_timeout(60_000)
    pg.goto(url)
    pg.wait_for_selector("#lora-output_name")
    return pg


# ---- small helpers over Gradio's DOM ---------------------------------------------------------------

def box(pg, elem_id: str):
    return pg.locator(f"#{elem_id} input, #{elem_id} textarea").first


def fill(pg, elem_id: str, text: str, enter: bool = False) -> None:
    target = box(pg, elem_id)
    target.fill(text)
    if enter:
        target.press("Enter")
    else:
        target.blur()


def value_of(pg, elem_id: str) -> str:
    return box(pg, elem_id).input_value()


# an element's visible text plus the values of its text boxes (innerText leaves those out)
TEXT_OF_JS = ("(id) => { const el = document.getElementById(id); if (!el) return '';"
              " let t = el.innerText || ''; el.querySelectorAll('textarea, input[type=text]')"
              ".forEach(e => { t += '\\n' + e.value; }); return t; }")


def text_of(pg, elem_id: str) -> str:
    return pg.evaluate(TEXT_OF_JS, elem_id)


def choose(pg, elem_id: str, option: str) -> None:
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator(f"#{elem_id} li[role=option]", has_text=option).first.click()


def wait_text(pg, elem_id: str, needle: str, timeout_s: float = 60) -> str:
    pg.wait_for_function(
        f"([id, needle]) => ({TEXT_OF_JS})(id).includes(needle)", arg=[elem_id, needle], timeout=timeout_s * 1000,
        polling=POLL_MS)
    return text_of(pg, elem_id)


def wait_new_text(pg, elem_id: str, before: str, needle: str, timeout_s: float = 120) -> str:
    """Wait for a fresh answer: the element's text changed from `before`, holds `needle` and no longer shows
    Gradio's progress ("processing | 1.2s" also changes the text while the old answer, maybe holding the
    needle, is still there)."""
    pg.wait_for_function(
        f"([id, before, needle]) => {{ const t = ({TEXT_OF_JS})(id); return t !== before && t.includes(needle)"
        f" && !{BUSY_JS}.test(t); }}",
        arg=[elem_id, before, needle], timeout=timeout_s * 1000, polling=POLL_MS)
    return text_of(pg, elem_id)


def click_and_wait(pg, button: str, elem_id: str, needle: str, timeout_s: float = 120) -> str:
    """Click `#button` and wait for its answer in `#elem_id`: the element has changed since the click (its
    progress indicator or its text: an answer may repeat the last one word for word), shows no progress any
    more, and holds `needle`."""
    watch_text(pg, elem_id)
    pg.click(f"#{button}")
    pg.wait_for_function(
        f"([id, needle]) => {{ const t = ({TEXT_OF_JS})(id); return window.__shown[id] && t.includes(needle)"
        f" && !{BUSY_JS}.test(t); }}", arg=[elem_id, needle], timeout=timeout_s * 1000, polling=POLL_MS)
    return text_of(pg, elem_id)


def watch_text(pg, elem_id: str, needle: str = "") -> None:
    """Remember whether the element changes from now on showing `needle` (any change when empty), however
    briefly: `window.__shown[elem_id + needle]` (see `was_shown`)."""
    pg.evaluate("""([id, needle]) => { window.__shown = window.__shown || {}; window.__shown[id + needle] = false;
        const el = document.getElementById(id);
        new MutationObserver(() => { if ((el.innerText || '').includes(needle)) window.__shown[id + needle] = true; })
            .observe(el, {subtree: true, childList: true, characterData: true, attributes: true}); }""",
                [elem_id, needle])


def was_shown(pg, elem_id: str, needle: str, timeout_s: float = 60) -> bool:
    pg.wait_for_function("(key) => window.__shown[key]", arg=elem_id + needle, timeout=timeout_s * 1000,
                         polling=POLL_MS)
    return True


def wait_running(pg, timeout_s: float = 60) -> None:
    pg.wait_for_function("() => document.querySelector('#monitor-progress .ks-progress')?.dataset.status "
                         "=== 'running'", timeout=timeout_s * 1000, polling=POLL_MS)


def wait_value(pg, elem_id: str, predicate_js: str, timeout_s: float = 60) -> None:
    """Wait until the box's value satisfies `predicate_js` (a JS expression over `v`)."""
    pg.wait_for_function(
        f"(id) => {{ const e = document.querySelector('#' + id + ' input, #' + id + ' textarea');"
        f" const v = e ? e.value : ''; return {predicate_js}; }}", arg=elem_id, timeout=timeout_s * 1000,
        polling=POLL_MS)


def open_accordion(pg, elem_id: str) -> None:
    """Open a (possibly nested) accordion by its elem_id, if it is closed."""
    acc = pg.locator(f"#{elem_id}")
    acc.scroll_into_view_if_needed()
    head = acc.locator("> button, > .label-wrap").first
    if head.get_attribute("aria-expanded") == "false" or "open" not in (head.get_attribute("class") or ""):
        head.click()


def error_badges(pg) -> list[str]:
    """Gradio's own failure signs: toasts and the "Error" status a component shows when a handler
    raised. Our own problems are words beside the fields, never these."""
    toasts = [t for t in pg.locator(".toast-body").all_inner_texts() if t.strip()]
    body = pg.locator("body").inner_text()
    badges = [ln for ln in body.splitlines() if ln.strip() == "Error"]
    return toasts + badges


def shot(pg, name: str, *, locator=None, docs: bool = False) -> None:
    target = locator or pg
    target.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if docs and os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":  # the suite never rewrites tracked docs
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", SCREENSHOTS / f"{name}.png")


def monitor_state(pg) -> tuple[str | None, int]:
    bar = pg.locator("#monitor-progress .ks-progress")
    if not bar.count():
        return None, 0
    return bar.get_attribute("data-status"), int(bar.get_attribute("data-percent") or 0)


def run_until_finished(pg, job_hint: str, *, mid_shot: str | None = None) -> str:
    """Wait for the monitor's final state of the job named `job_hint`."""
    taken = mid_shot is None
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline:
        status, percent = monitor_state(pg)
        if not taken and status == "running" and 40 <= percent < 95:
            shot(pg, mid_shot, locator=pg.locator("#monitor"), docs=True)
            taken = True
        if status in ("done", "failed", "stopped") and job_hint in text_of(pg, "monitor-progress"):
            return status
        time.sleep(0.3)
    pytest.fail(f"the run '{job_hint}' did not finish in time; monitor shows: {text_of(pg, 'monitor-progress')}")


def queue_row(pg, job_name: str) -> str:
    for row in pg.locator("#queue-table [role=row]").all_inner_texts():
        if job_name in row:
            return row
    return ""


def tracebacks(log_path: Path) -> list[str]:
    """Traceback blocks in the studio's own log (its stdout/stderr), each as its last line."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            tail = next((ln for ln in lines[i + 1:] if ln and not ln[0].isspace()), "")
            found.append(tail)
    return found


DURATION = re.compile(r"\b\d+:\d{2}\b")
