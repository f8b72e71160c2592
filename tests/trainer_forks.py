"""`python -m trainer ARGS` as a forked child of one interpreter that imported the trainer once.

Importing torch, diffusers, transformers, peft and bitsandbytes costs ~9 s of CPU per process, more than
most tiny runs take; the suite starts dozens of them. Each test worker starts this file once as a helper
process (same interpreter, same environment as a fresh `python -m trainer`); it imports the trainer and
then forks one child per request. A child is a real process of its own (its own pid, stdout and stderr,
signals, exit code) that starts from the freshly imported state and calls the same `main(argv)` that
`python -m trainer` calls. Only the interpreter start is shared. A few tests still start
`python -m trainer` itself, so the entry point stays covered (test_train_run.py, the GUI's runs).

Protocol (one request at a time, JSON lines): the test writes {"args", "out", "err", "env"}; the helper
answers {"pid"} after the fork and {"exit"} when the child has ended (negative: killed by that signal).
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class TrainerForks:
    def __init__(self, env: dict):
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._pending = b""  # bytes read from the helper after the last complete line

    def _helper(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-u", __file__], cwd=ROOT, env=self.env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
            self._pending = b""
            if self._line(600) != {"ready": True}:
                raise RuntimeError("the trainer fork helper did not start")
        return self.proc

    def _line(self, timeout: float) -> dict | None:
        """The helper's next answer, or None after `timeout` s or when it has exited. Read from the pipe's
        descriptor (a buffered reader could hold the next answer where select() does not see it)."""
        fd, end = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: list[str], timeout: float, env: dict) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of `python -m trainer *args` in environment `env`; TimeoutExpired after
        `timeout` s (the child is killed)."""
        proc = self._helper()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            proc.stdin.write(json.dumps({"args": args, "out": str(out), "err": str(err), "env": env}) + "\n")
            proc.stdin.flush()
            started = self._line(60)
            if started is None:
                raise RuntimeError("the trainer fork helper stopped answering (its errors are in the test's stderr)")
            pid = started["pid"]
            done = self._line(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self._line(60)
                raise subprocess.TimeoutExpired(["python", "-m", "trainer", *args], timeout)
            return done["exit"], out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _child(request: dict) -> None:
    """In the forked child: the request's files as stdin/stdout/stderr, then the trainer's own main()."""
    code = 1
    try:
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT),
                                (2, request["err"], os.O_WRONLY | os.O_CREAT)):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["python -m trainer", *request["args"]]
        from trainer.__main__ import main
        try:
            code = main(request["args"]) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 — what an uncaught exception does to `python -m trainer`
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    import trainer.__main__  # noqa: F401
    import trainer.train.run  # noqa: F401 — imported once, before any fork

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"exit": code}), flush=True)


_forks: TrainerForks | None = None


def trainer_forks(env: dict) -> TrainerForks:
    """This worker's helper, started on first use and stopped when the worker exits."""
    global _forks
    if _forks is None:
        _forks = TrainerForks(env)
        atexit.register(_forks.close)
    return _forks


if __name__ == "__main__":
    _serve()
