"""The training queue: jobs run one after another, a failed job does not stop the rest, and the
queue lives on disk (`<workspace>/queue.json`) so it survives a page reload or a GUI restart.

(Named jobqueue, not queue, so it never shadows the standard library module.)
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.atomic import atomic_write_text
from trainer.events import DONE, FAILED, STOPPED

from .monitor import JobMonitor, load_monitor
from .runner import TrainerProcess

# a job's status: the trainer's final event types (trainer.events), or one the queue adds
PENDING, RUNNING, CANCELLED, INTERRUPTED = "pending", "running", "cancelled", "interrupted"
FINISHED = (DONE, STOPPED, FAILED, CANCELLED, INTERRUPTED)


@dataclass
class Job:
    id: str
    name: str
    training_type: str
    argv: list[str]
    run_dir: str
    status: str = PENDING
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    message: str = ""
    hint: str = ""
    outputs: list[str] = field(default_factory=list)

    @property
    def events_path(self) -> Path:
        return Path(self.run_dir) / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return Path(self.run_dir) / "trainer.log"


def write_json_atomic(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


class JobQueue:
    """Thread-safe persistent queue with one worker thread that runs pending jobs in order."""

    def __init__(self, workspace: Path, *, cwd: Path | None = None, env: dict | None = None) -> None:
        self.workspace = Path(workspace)
        self.path = self.workspace / "queue.json"
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.env = env
        self._lock = threading.RLock()
        self.jobs: list[Job] = []
        self.paused = False
        self.current: TrainerProcess | None = None
        self.current_job: Job | None = None
        self._monitors: dict[str, JobMonitor] = {}
        self._worker: threading.Thread | None = None
        self._load()

    # ---- persistence -------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            # keep the unreadable file for the user; start with an empty queue
            os.replace(self.path, self.path.with_suffix(f".unreadable-{int(time.time())}.json"))
            return
        known = set(Job.__dataclass_fields__)
        for raw in data.get("jobs", []):
            job = Job(**{k: v for k, v in raw.items() if k in known})
            if job.status == RUNNING:      # the GUI went away while it ran; the process is gone
                job.status = INTERRUPTED
                job.message = "The GUI stopped while this job was running."
                job.finished = job.finished or time.time()
            self.jobs.append(job)
        # pending jobs wait for the user after a restart instead of starting training unasked
        self.paused = any(j.status == PENDING for j in self.jobs)
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.path, {"version": 1, "paused": self.paused,
                                      "jobs": [asdict(j) for j in self.jobs]})

    # ---- editing -----------------------------------------------------------------------------
    def new_run_dir(self, name: str) -> tuple[str, Path]:
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "job"
        run_dir = self.workspace / "runs" / f"{job_id}-{safe}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return job_id, run_dir

    def add(self, name: str, training_type: str, argv: list[str], run_dir: Path,
            job_id: str | None = None, start: bool = True) -> Job:
        with self._lock:
            job = Job(id=job_id or uuid.uuid4().hex[:12], name=name, training_type=training_type,
                      argv=[str(a) for a in argv], run_dir=str(run_dir))
            self.jobs.append(job)
            if start:
                self.paused = False
            self._save()
            self._ensure_worker()
            return job

    def remove(self, job_id: str) -> str:
        with self._lock:
            job = self.get(job_id)
            if job is None:
                return "No such job."
            if job.status == RUNNING:
                return "A running job cannot be removed; stop it first."
            self.jobs.remove(job)
            self._monitors.pop(job_id, None)
            self._save()
            return f"Removed '{job.name}' from the list (its run folder is kept)."

    def move(self, job_id: str, delta: int) -> None:
        with self._lock:
            job = self.get(job_id)
            if job is None or job.status != PENDING:
                return
            i = self.jobs.index(job)
            j = max(0, min(len(self.jobs) - 1, i + delta))
            self.jobs.insert(j, self.jobs.pop(i))
            self._save()

    def clear_finished(self) -> int:
        with self._lock:
            before = len(self.jobs)
            self.jobs = [j for j in self.jobs if j.status not in FINISHED]
            self._save()
            return before - len(self.jobs)

    def pause(self) -> None:
        with self._lock:
            self.paused = True
            self._save()

    def resume(self) -> None:
        with self._lock:
            self.paused = False
            self._save()
            self._ensure_worker()

    # ---- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def snapshot(self) -> list[Job]:
        with self._lock:
            return [Job(**asdict(j)) for j in self.jobs]

    def monitor(self, job_id: str) -> JobMonitor | None:
        """The live monitor for the running job, or one rebuilt from the run folder."""
        with self._lock:
            if job_id in self._monitors:
                return self._monitors[job_id]
            job = self.get(job_id)
            if job is None:
                return None
            mon = load_monitor(job.events_path, job.log_path)
            if job.status in FINISHED:
                self._monitors[job_id] = mon
            return mon

    def latest_job(self) -> Job | None:
        """The job the monitor shows by default: the running one, else the last one that ran."""
        with self._lock:
            if self.current_job is not None:
                return self.current_job
            ran = [j for j in self.jobs if j.started]
            if ran:
                return max(ran, key=lambda j: j.started or 0)
            return self.jobs[-1] if self.jobs else None

    def is_busy(self) -> bool:
        with self._lock:
            return self.current_job is not None

    # ---- stopping ----------------------------------------------------------------------------
    def stop_current(self) -> str:
        with self._lock:
            proc, job = self.current, self.current_job
        if proc is None or job is None:
            return "Nothing is running."
        what = proc.stop()
        if what == "graceful":
            return (f"Stopping '{job.name}': the trainer saves what it has and exits. "
                    "Press Stop again to kill it at once.")
        if what == "killed":
            return f"Killed '{job.name}'."
        return "Nothing is running."

    # ---- worker ------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="training-queue", daemon=True)
            self._worker.start()

    def _next_pending(self) -> Job | None:
        if self.paused:
            return None
        return next((j for j in self.jobs if j.status == PENDING), None)

    def _work(self) -> None:
        while True:
            with self._lock:
                job = self._next_pending()
                if job is None:
                    self._worker = None
                    return
                job.status, job.started = RUNNING, time.time()
                monitor = JobMonitor()
                proc = TrainerProcess(job.argv, cwd=self.cwd, events_path=job.events_path,
                                      log_path=job.log_path, monitor=monitor, env=self.env)
                self.current, self.current_job = proc, job
                self._monitors[job.id] = monitor
                self._save()
            try:
                proc.start()
                code = proc.wait()
            except OSError as exc:        # e.g. the executable vanished: fail this job, keep going
                monitor.add_log(f"Could not start the trainer: {exc}")
                code = -1
                monitor.process_exited(code)
            final = monitor.final
            with self._lock:
                job.finished = time.time()
                job.exit_code = code
                if final is not None:
                    job.status = final.status if final.status in (DONE, STOPPED, FAILED) else FAILED
                    job.message, job.hint = final.message, final.hint
                    job.outputs = list(final.outputs)
                else:
                    job.status = FAILED
                self.current, self.current_job = None, None
                self._save()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no job is pending or running (tests and shutdown)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                busy = self.current_job is not None or (self._next_pending() is not None)
            if not busy:
                return True
            time.sleep(0.05)
        return False

    def shutdown(self, timeout: float = 20.0) -> None:
        """Ask a running job to stop gracefully (GUI exit); pending jobs stay for next time."""
        with self._lock:
            self.paused = True
            proc = self.current
            self._save()
        if proc is not None and proc.running:
            proc.stop()
            try:
                proc.proc.wait(timeout=timeout)
            except Exception:
                proc.stop()
