"""Utilities ▸ TensorBoard: the button starts a real TensorBoard on a run's log folder, the page
shows an address that answers with that run, and Stop ends only that process."""
from __future__ import annotations

import json
import sys
import urllib.request

from kohya_gui.tabs.tensorboard_panel import start_message
from kohya_gui.tensorboard import TensorBoard


def test_tensorboard_serves_the_runs_of_a_log_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    with SummaryWriter(str(logs / "toy_20260101-000000")) as w:
        for step in range(3):
            w.add_scalar("loss/current", 1.0 / (step + 1), step)
    tb = TensorBoard(sys.executable)
    try:
        message = start_message(tb, str(logs), [tmp_path])
        assert message.startswith("✔"), message
        url = tb.running.url
        assert url in message
        with urllib.request.urlopen(url + "data/logdir", timeout=10) as r:
            assert json.loads(r.read())["logdir"] == str(logs.resolve())
        proc = tb.running.proc
    finally:
        assert tb.stop()
    assert proc.poll() is not None and not tb.stop()


def test_a_missing_or_outside_folder_is_refused(tmp_path):
    tb = TensorBoard(sys.executable)
    assert start_message(tb, str(tmp_path / "nope"), [tmp_path]).startswith("⛔")
    assert start_message(tb, "/etc", [tmp_path]).startswith("⛔")
    assert tb.running is None
