"""What the monitor shows a user: their run's lines without library chatter or traceback frames (the
run's log file keeps everything), a failed run as its first line and a hint, the queue's durations."""
from __future__ import annotations

from kohya_gui import monitor_view
from kohya_gui.jobqueue import Job
from kohya_gui.monitor import JobMonitor, load_monitor

NOISE = [
    "2026-12-03 06:18:25,410 WARNING Failed to load CPU gemm_4bit_forward from kernels-community: No module named",
    "[transformers] `CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`",
    "/usr/lib/python3/site-packages/torchvision/io/image.py:13: UserWarning: Failed to load image Python extension",
    "  warnings.warn(",
]
TRACE = ["Traceback (most recent call last):", '  File "/x/trainer/run.py", line 3, in <module>', "    main()",
         "OSError: bad header", "", "The above exception was the direct cause of the following exception:", "",
         "Traceback (most recent call last):", '  File "/x/y.py", line 9, in load', "    raise",
         "ValueError: the image folder is empty"]


def test_library_warnings_and_traceback_frames_stay_out_of_the_page_but_in_the_file(tmp_path):
    mon = JobMonitor()
    for line in ["INFO loaded base model", *NOISE, *TRACE, "INFO after"]:
        mon.add_log(line + "\n")
    assert mon.snapshot()["log"] == ["INFO loaded base model", "OSError: bad header",
                                     "ValueError: the image folder is empty", "INFO after"]
    log = tmp_path / "trainer.log"
    log.write_text("\n".join([*NOISE, *TRACE]) + "\n")
    assert load_monitor(tmp_path / "events.jsonl", log).snapshot()["log"][-1] == "ValueError: the image folder is empty"
    assert "gemm_4bit" in log.read_text(), "the file keeps every line"


def test_a_failed_run_shows_the_first_line_the_hint_and_where_the_full_error_is(tmp_path):
    mon = JobMonitor()
    for line in TRACE:
        mon.add_log(line)
    mon.feed({"type": "failed", "message": "could not read the model\nTraceback (most recent call last):\n  File x",
              "hint": "See the message for the file and the fix.", "exit_code": 1})
    job = Job("j1", "lora: toy", "lora", [], str(tmp_path), status="failed")
    text = monitor_view.final_markdown(mon.snapshot(), job)
    assert "could not read the model" in text and "Traceback" not in text and 'File "' not in text
    assert "What to try" not in text, "a hint that says nothing is left out"
    assert str(tmp_path / "trainer.log") in text


def test_queue_rows_show_a_duration_and_a_stopped_run_at_once():
    job = Job("j1", "lora: toy", "lora", [], "/r", status="running", started=1000.0)
    mon = JobMonitor()
    mon.feed({"type": "stopped", "step": 3, "outputs": []})
    row = monitor_view.queue_rows([job], {"j1": mon.final}, now=1075.0)[0]
    assert "stopped" in row[1] and row[4] == "1:15"
    done = Job("j2", "lora: b", "lora", [], "/r", status="done", started=1000.0, finished=1005.0)
    assert monitor_view.queue_rows([done], now=9999.0)[0][4] == "0:05"


def test_every_final_event_the_trainer_writes_ends_the_monitored_run_with_that_status():
    """The final event types are declared once (trainer.events): the page's monitor and the job queue
    read them from there, so a run the trainer ends with any of them shows that end."""
    import io
    import json

    from kohya_gui import jobqueue
    from trainer import events

    for final in events.FINAL_TYPES:
        out = io.StringIO()
        writer = events.EventWriter(stream=out)
        writer.emit("plan", images=1)
        writer.emit(final, outputs=[], message="m", step=1, exit_code=1)
        mon = JobMonitor()
        for line in out.getvalue().splitlines():
            mon.feed_line(line)
        assert mon.final is not None and mon.final.status == final
        assert final in jobqueue.FINISHED, "the queue counts the run as finished"
