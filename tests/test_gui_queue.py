"""The queue runs jobs one after another, keeps going after a failure, survives a reload, and Stop is
graceful first and a kill the second time. A small fake trainer prints the documented event stream
(docs/events.md) so these tests stay fast; the browser e2e test runs the real trainer."""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from kohya_gui import monitor_view
from kohya_gui.jobqueue import JobQueue
from kohya_gui.monitor import JobMonitor, load_monitor, parse_event

FAKE_TRAINER = textwrap.dedent('''
    import json, signal, sys, time
    from pathlib import Path
    mode, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    def ev(event_type, **fields):
        print(json.dumps({"v": 1, "type": event_type, "time": time.time(), **fields}), flush=True)
    stop = []
    if mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    ev("plan", images=2, repeats_total=4, reg_images=0, buckets={"64x64": 2}, steps_per_epoch=steps,
       epochs=1, total_steps=steps, batch_size=1, gradient_accumulation_steps=1, family="sd1")
    for step in range(1, steps + 1):
        if stop:
            path = out / "demo-stopped.safetensors"
            path.write_bytes(b"x" * 10)
            ev("saved", path=str(path), size=10, kind="stopped", verified=True)
            ev("stopped", outputs=[str(path)], step=step - 1)
            sys.exit(0)
        time.sleep(0.02 if mode in ("slow", "stubborn") else 0)
        print(f"step {step} log line", file=sys.stderr, flush=True)
        ev("step", step=step, total=steps, epoch=1, epochs=1, loss=1.0 / step, avg_loss=1.0, lr=1e-4,
           it_s=10.0, eta_s=steps - step)
    if mode == "fail":
        ev("error", message="CUDA out of memory", hint="lower the batch size")
        ev("failed", message="CUDA out of memory", hint="lower the batch size", exit_code=1)
        sys.exit(1)
    if mode == "crash":
        print("Traceback: something broke", file=sys.stderr, flush=True)
        sys.exit(3)
    sample = out / "sample.png"
    sample.write_bytes(b"png")
    ev("sample", path=str(sample), step=steps, epoch=1, index=0, prompt="a photo")
    path = out / f"demo-{mode}.safetensors"
    path.write_bytes(b"y" * 2048)
    ev("saved", path=str(path), size=2048, kind="final", verified=True)
    ev("done", outputs=[str(path)])
''')


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    out = tmp_path / "out"
    out.mkdir()

    def argv(mode: str, steps: int = 5) -> list[str]:
        return [sys.executable, str(script), mode, str(out), str(steps)]

    return argv


def _add(queue: JobQueue, name: str, argv: list[str], start: bool = True):
    job_id, run_dir = queue.new_run_dir(name)
    return queue.add(name, "lora", argv, run_dir, job_id=job_id, start=start)


def _wait_for(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_jobs_run_in_order_and_a_failed_job_does_not_stop_the_next(tmp_path, fake):
    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    queue.pause()                       # queue both before anything runs
    first = _add(queue, "first fails", fake("fail"), start=False)
    second = _add(queue, "second works", fake("ok"), start=False)
    assert [j.status for j in queue.snapshot()] == ["pending", "pending"]
    queue.resume()
    assert queue.wait_idle(60)
    jobs = {j.id: j for j in queue.snapshot()}
    assert jobs[first.id].status == "failed" and jobs[first.id].exit_code == 1
    assert "out of memory" in jobs[first.id].message and jobs[first.id].hint == "lower the batch size"
    assert jobs[second.id].status == "done"
    assert jobs[second.id].outputs[0].endswith("demo-ok.safetensors")
    assert jobs[first.id].finished <= jobs[second.id].started, "one after another, never together"


def test_monitor_shows_progress_files_samples_and_final_status(tmp_path, fake):
    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    job = _add(queue, "ok", fake("ok", steps=4))
    assert queue.wait_idle(60)
    snap = queue.monitor(job.id).snapshot()
    html = monitor_view.progress_html(snap, queue.get(job.id))
    assert "data-percent='100'" in html and "Step 4/4" in html
    assert [row[2] for row in monitor_view.files_rows(snap)] == ["final"]
    assert monitor_view.files_rows(snap)[0][3] == "✔ verified"
    assert monitor_view.gallery_items(snap)[0][0].endswith("sample.png")
    assert "Training finished" in monitor_view.final_markdown(snap, queue.get(job.id))
    assert len(monitor_view.loss_frame(snap)) == 8  # loss + average per step
    assert "step 4 log line" in monitor_view.log_text(snap)


def test_a_crash_without_a_final_event_is_reported_as_failed_with_the_log_tail(tmp_path, fake):
    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    job = _add(queue, "crash", fake("crash"))
    assert queue.wait_idle(60)
    job = queue.get(job.id)
    assert job.status == "failed" and job.exit_code == 3
    text = monitor_view.final_markdown(queue.monitor(job.id).snapshot(), job)
    assert "exit code 3" in text and "Traceback: something broke" in text


def test_first_stop_is_graceful_and_keeps_a_usable_file(tmp_path, fake):
    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    job = _add(queue, "slow", fake("slow", steps=2000))
    assert _wait_for(lambda: queue.monitor(job.id) and queue.monitor(job.id).step)
    assert "Stopping" in queue.stop_current()
    assert queue.wait_idle(60)
    job = queue.get(job.id)
    assert job.status == "stopped"
    assert job.outputs and Path(job.outputs[0]).name == "demo-stopped.safetensors"


def test_second_stop_kills_a_trainer_that_does_not_stop(tmp_path, fake):
    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    job = _add(queue, "stubborn", fake("stubborn", steps=5000))
    assert _wait_for(lambda: queue.monitor(job.id) and queue.monitor(job.id).step)
    assert "Stopping" in queue.stop_current()
    assert "Killed" in queue.stop_current()
    assert queue.wait_idle(60)
    job = queue.get(job.id)
    assert job.status == "stopped" and "Killed" in job.message


def test_queue_survives_a_reload_and_waits_for_the_user_after_a_restart(tmp_path, fake):
    ws = tmp_path / "ws"
    queue = JobQueue(ws, cwd=tmp_path)
    done = _add(queue, "done", fake("ok"))
    assert queue.wait_idle(60)
    queue.pause()
    waiting = _add(queue, "waiting", fake("ok"), start=False)
    # a new GUI process (or page) reads the same queue back from disk
    again = JobQueue(ws, cwd=tmp_path)
    jobs = {j.id: j for j in again.snapshot()}
    assert jobs[done.id].status == "done" and jobs[waiting.id].status == "pending"
    assert again.paused, "pending jobs do not start training unasked after a restart"
    assert again.monitor(done.id).final.status == "done", "finished runs are rebuilt from events.jsonl"
    again.resume()
    assert again.wait_idle(60)
    assert again.get(waiting.id).status == "done"


def test_a_job_running_when_the_gui_died_is_marked_interrupted(tmp_path):
    ws = tmp_path / "ws"
    queue = JobQueue(ws, cwd=tmp_path)
    queue.pause()
    job = _add(queue, "was running", ["true"], start=False)
    job.status = "running"
    queue._save()
    again = JobQueue(ws, cwd=tmp_path)
    assert again.get(job.id).status == "interrupted"


def test_pending_jobs_can_be_reordered_and_removed(tmp_path):
    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    queue.pause()
    a, b, c = (_add(queue, n, ["true"], start=False) for n in "abc")
    queue.move(c.id, -2)
    assert [j.name for j in queue.snapshot()] == ["c", "a", "b"]
    assert "Removed" in queue.remove(a.id)
    assert [j.name for j in queue.snapshot()] == ["c", "b"]
    assert Path(a.run_dir).is_dir(), "removing a job never deletes its run folder"


def test_event_lines_are_parsed_and_noise_is_kept_as_log():
    mon = JobMonitor()
    assert parse_event('{"v": 1, "type": "step", "step": 3, "total": 10, "loss": 0.5}')["step"] == 3
    assert parse_event("not json") is None
    assert mon.feed_line("[trainer] {\"type\": \"warning\", \"message\": \"low VRAM\"}") is not None
    mon.feed_line("plain text line")
    mon.feed({"type": "future_event_kind", "x": 1})        # unknown types are ignored
    snap = mon.snapshot()
    assert snap["warnings"] == ["low VRAM"] and snap["log"] == ["plain text line"]


def test_monitor_is_rebuilt_from_saved_files(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "step", "step": 2, "total": 4, "loss": 0.3}\n'
                      '{"type": "failed", "message": "boom", "hint": "retry", "exit_code": 1}\n')
    log = tmp_path / "trainer.log"
    log.write_text("line a\nline b\n")
    mon = load_monitor(events, log)
    assert mon.final.status == "failed" and mon.final.hint == "retry"
    assert mon.snapshot()["log"] == ["line a", "line b"]


def test_monitor_panel_sends_only_what_changed(tmp_path, fake):
    """The page polls every second; unchanged parts are not re-sent (keeps reloads and remote use light)."""
    import gradio as gr

    from kohya_gui.tabs.monitor_panel import LATEST, MonitorPanel

    queue = JobQueue(tmp_path / "ws", cwd=tmp_path)
    job = _add(queue, "ok", fake("ok", steps=3))
    assert queue.wait_idle(60)
    with gr.Blocks():
        panel = MonitorPanel(queue, roots=[tmp_path.resolve()])
    first = panel.render(LATEST, {})
    assert "Step 3/3" in first[0] and first[3][0][0].endswith("sample.png")
    second = panel.render(LATEST, first[-1])
    assert all(isinstance(part, dict) and set(part) <= {"__type__"} for part in second[:-1])
    assert queue.get(job.id).status == "done"


def test_stop_with_the_real_trainer_saves_a_usable_lora(tmp_path):
    """The graceful Stop reaches the real trainer through its process group and it saves NAME-stopped."""
    import json
    import subprocess

    from kohya_gui.launching import trainer_argv
    from test_train_support import trainer_cli
    from trainer.config import load_config_file

    demo = tmp_path / "demo"
    assert trainer_cli("demo", str(demo), timeout=300).returncode == 0
    cfg_path = demo / "demo_lora.json"
    data = json.loads(cfg_path.read_text())
    data.update(epoch=200, sample_every_n_epochs=0, save_every_n_epochs=0)   # long enough to stop it
    cfg_path.write_text(json.dumps(data))
    config = load_config_file(cfg_path).config
    queue = JobQueue(tmp_path / "ws", cwd=Path(__file__).resolve().parent.parent)
    job = _add(queue, "real", trainer_argv(config, cfg_path))
    assert _wait_for(lambda: queue.monitor(job.id) and queue.monitor(job.id).step, timeout=300)
    assert "Stopping" in queue.stop_current()
    assert queue.wait_idle(300)
    job = queue.get(job.id)
    assert job.status == "stopped", (job.message, queue.monitor(job.id).snapshot()["log"][-5:])
    stopped = [p for p in job.outputs if p.endswith("toy-stopped.safetensors")]
    assert stopped and Path(stopped[0]).stat().st_size > 0
    assert not (demo / "outputs" / "toy.safetensors").exists(), "a stopped run is not labelled finished"
