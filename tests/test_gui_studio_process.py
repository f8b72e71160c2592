"""The studio as a process on a server: one studio per workspace, SIGTERM/SIGHUP stop the running job
gracefully before the studio exits, logins are rate-limited, and the password need not be on the
command line (where `ps` shows it)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_gui_queue import FAKE_TRAINER

from kohya_gui.cli import access_problems, build_parser
from kohya_gui.lock import WorkspaceBusy, WorkspaceLock
from kohya_gui.login import LOCKOUT_S, MAX_FAILURES, RateLimitedLogin

ROOT = Path(__file__).resolve().parent.parent


def test_a_second_studio_on_the_same_workspace_is_refused_and_named(tmp_path):
    first = WorkspaceLock(tmp_path / "ws").acquire("http://127.0.0.1:7860")
    with pytest.raises(WorkspaceBusy) as info:
        WorkspaceLock(tmp_path / "ws").acquire()
    assert "Another studio" in str(info.value) and "127.0.0.1:7860" in str(info.value)
    WorkspaceLock(tmp_path / "other").acquire().release()  # another workspace is free
    first.release()
    WorkspaceLock(tmp_path / "ws").acquire().release()  # and this one once the first has gone


def test_the_second_studio_process_exits_before_touching_the_queue(tmp_path):
    ws = tmp_path / "ws"
    lock = WorkspaceLock(ws).acquire("http://127.0.0.1:7860")
    (ws / "queue.json").write_text('{"version": 1, "paused": false, "jobs": []}')
    before = (ws / "queue.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "kohya_gui", "--workspace", str(ws), "--server_port", "7999"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    lock.release()
    assert proc.returncode == 2 and "Another studio is already using the workspace" in proc.stderr
    assert (ws / "queue.json").read_bytes() == before


STUDIO = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from kohya_gui.jobqueue import JobQueue
    from kohya_gui.signals import stop_jobs_on_signals
    ws, argv = Path(sys.argv[1]), sys.argv[2:]
    queue = JobQueue(ws)
    stop_jobs_on_signals(queue, timeout=60)
    job_id, run_dir = queue.new_run_dir("job")
    job = queue.add("job", "lora", argv, run_dir, job_id=job_id)
    while not (queue.monitor(job.id) and queue.monitor(job.id).step):
        time.sleep(0.02)
    print("running", flush=True)
    while True:          # the server's main thread, blocked as Gradio's is
        time.sleep(0.1)
''')


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_of_the_studio_stops_the_job_gracefully_first(tmp_path, sig):
    (tmp_path / "studio.py").write_text(STUDIO)
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    out = tmp_path / "out"
    out.mkdir()
    argv = [sys.executable, str(tmp_path / "fake_trainer.py"), "slow", str(out), "100000"]
    proc = subprocess.Popen([sys.executable, str(tmp_path / "studio.py"), str(tmp_path / "ws"), *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "running", proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopping the running job" in err
    assert (out / "demo-stopped.safetensors").is_file()  # the trainer saved before the studio went
    job = json.loads((tmp_path / "ws" / "queue.json").read_text())["jobs"][0]
    assert job["status"] == "stopped"


def test_login_attempts_are_rate_limited():
    now = [1000.0]
    login = RateLimitedLogin("me", "secret", clock=lambda: now[0])
    assert login("me", "secret")
    for _ in range(MAX_FAILURES):
        assert not login("me", "guess")
    assert not login("me", "secret"), "locked out: even the right password is refused for a while"
    now[0] += LOCKOUT_S + 1
    assert login("me", "secret")


def test_the_password_can_come_from_a_file_or_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "password.txt"
    secret.write_text("s3cret\n")
    args = build_parser().parse_args(["--listen", "0.0.0.0", "--username", "me", "--password_file", str(secret)])
    assert access_problems(args) == ([], None) and args.password == "s3cret"
    monkeypatch.setenv("KOHYA_STUDIO_USERNAME", "me")
    monkeypatch.setenv("KOHYA_STUDIO_PASSWORD", "from-env")
    args = build_parser().parse_args(["--share"])
    assert access_problems(args) == ([], None) and (args.username, args.password) == ("me", "from-env")
    args = build_parser().parse_args(["--password_file", str(tmp_path / "missing.txt")])
    assert "cannot be read" in access_problems(args)[1]
