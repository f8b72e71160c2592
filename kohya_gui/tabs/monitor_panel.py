"""The training monitor and queue, shared by every tab and refreshed by a timer.

All state lives in the JobQueue on the server (and on disk), so reloading the page, or opening it in
a second browser, shows the same queue and the same live run.
"""
from __future__ import annotations

import gradio as gr

from .. import monitor_view as view
from ..jobqueue import JobQueue

LATEST = "Latest run"
QUEUE_HEADERS = ["#", "Status", "Job", "Started", "Duration", "Result", "id"]
TICK_SECONDS = 1.0


def _job_choices(queue: JobQueue) -> list[tuple[str, str]]:
    jobs = queue.snapshot()
    return [(LATEST, LATEST)] + [(f"{view.STATUS_ICONS.get(j.status, '')} {j.name} ({j.id[-6:]})", j.id)
                                 for j in reversed(jobs)]


class MonitorPanel:
    def __init__(self, queue: JobQueue, roots=None) -> None:
        self.queue = queue
        self.roots = roots
        with gr.Accordion("Training monitor and queue", open=True, elem_id="monitor"):
            with gr.Row():
                self.job = gr.Dropdown(label="Show", choices=_job_choices(queue), value=LATEST, scale=4,
                                       elem_id="monitor-job")
                self.stop = gr.Button("⏹ Stop training", variant="stop", scale=1, elem_id="monitor-stop",
                                      interactive=False)
            self.progress = gr.HTML(view.progress_html({}, None), elem_id="monitor-progress")
            self.stop_msg = gr.Markdown(elem_id="monitor-stop-msg")
            self.final = gr.Markdown(elem_id="monitor-final")
            with gr.Row():
                self.loss = gr.LinePlot(view.loss_frame({}), x="step", y="loss", color="series",
                                        title="Loss", x_title="step", y_title="loss", height=260, scale=3,
                                        elem_id="monitor-loss")
                self.gallery = gr.Gallery(label="Samples", columns=3, height=260, scale=2,
                                          elem_id="monitor-samples")
            self.files = gr.Dataframe(headers=["File", "Size", "Kind", "Check"], value=[],
                                      label="Saved files", interactive=False, wrap=True,
                                      elem_id="monitor-files")
            self.log = gr.Textbox(label="Log (last lines)", lines=15, max_lines=15, autoscroll=True,
                                  interactive=False, elem_id="monitor-log")
            gr.Markdown("#### Queue — jobs run one after another; a failed job does not stop the rest")
            self.table = gr.Dataframe(headers=QUEUE_HEADERS, value=[],
                                      interactive=False, wrap=True, elem_id="queue-table")
            with gr.Row():
                self.pick = gr.Dropdown(label="Job", choices=[], scale=3, elem_id="queue-pick")
                self.up = gr.Button("Move up", scale=0, min_width=90)
                self.down = gr.Button("Move down", scale=0, min_width=90)
                self.remove = gr.Button("Remove", scale=0, min_width=90)
            with gr.Row():
                self.resume = gr.Button("▶ Run queue", elem_id="queue-resume")
                self.pause = gr.Button("⏸ Pause queue (after the current job)", elem_id="queue-pause")
                self.clear = gr.Button("Clear finished", elem_id="queue-clear")
            self.queue_msg = gr.Markdown(elem_id="queue-msg")
        self.signatures = gr.State({})
        self.timer = gr.Timer(TICK_SECONDS)
        self._wire()

    # ---- refresh ---------------------------------------------------------------------------------
    def render(self, selected: str, sigs: dict):
        """Everything the panel shows; parts whose content did not change are left alone."""
        sigs = dict(sigs or {})
        job = self.queue.latest_job() if selected in (None, "", LATEST) else self.queue.get(selected)
        mon = self.queue.monitor(job.id) if job else None
        snap = mon.snapshot() if mon else {}
        jobs = self.queue.snapshot()
        proc = self.queue.current
        current = self.queue.current_job
        current_mon = self.queue.monitor(current.id) if current else None
        finals = {current.id: current_mon.final} if current_mon else {}
        # Stop is offered while a trainer runs and has not reported its end (after that it only exits)
        running = proc is not None and proc.running and (current_mon is None or current_mon.final is None)
        stop_label = "⏹ Kill now" if running and proc.stop_requests >= 1 else "⏹ Stop training"
        rows = view.queue_rows(jobs, finals)
        loss = view.loss_frame(snap)
        samples = [str(x.get("path")) for x in snap.get("samples", [])]
        # key → (signature, producer): a part is rebuilt and sent only when its signature changed
        parts = {
            "progress": self._same(view.progress_html(snap, job)),
            "final": self._same(view.final_markdown(snap, job)),
            "loss": (repr(loss.to_dict("list")), lambda: loss),
            "gallery": (repr(samples), lambda: view.gallery_items(snap, self.roots)),
            "files": self._same(view.files_rows(snap)),
            "log": self._same(view.log_text(snap)),
            "table": self._same(rows),
            "choices": self._same(_job_choices(self.queue), lambda v: gr.update(choices=v)),
            "pick": self._same([(f"{r[0]}. {r[2]} ({r[1]})", r[6]) for r in rows],
                               lambda v: gr.update(choices=v)),
            "stop": self._same((stop_label, running), lambda v: gr.update(value=v[0], interactive=v[1])),
            # the "Stopping…" note goes once nothing runs any more
            "stop_msg": self._same(running, lambda r: gr.update() if r else ""),
        }
        out = []
        for key, (sig, produce) in parts.items():
            if sigs.get(key) == sig:
                out.append(gr.update())
            else:
                sigs[key] = sig
                out.append(produce())
        return [*out, sigs]

    @staticmethod
    def _same(value, wrap=None):
        return repr(value), (lambda: wrap(value) if wrap else value)

    @property
    def outputs(self) -> list:
        return [self.progress, self.final, self.loss, self.gallery, self.files, self.log, self.table,
                self.job, self.pick, self.stop, self.stop_msg, self.signatures]

    def _wire(self) -> None:
        # one tick at a time: overlapping ticks could send an older picture after a newer one
        self.timer.tick(self.render, inputs=[self.job, self.signatures], outputs=self.outputs,
                        show_progress="hidden", concurrency_limit=1, concurrency_id="monitor-tick")
        # a new selection must redraw everything, so forget the signatures first
        self.job.change(lambda sel: self.render(sel, {}), inputs=self.job, outputs=self.outputs,
                        show_progress="hidden")
        self.stop.click(lambda: self.queue.stop_current(), outputs=self.stop_msg)

        def move(job_id, delta):
            if job_id:
                self.queue.move(job_id, delta)
            return ""

        self.up.click(lambda j: move(j, -1), inputs=self.pick, outputs=self.queue_msg)
        self.down.click(lambda j: move(j, 1), inputs=self.pick, outputs=self.queue_msg)
        self.remove.click(lambda j: self.queue.remove(j) if j else "Choose a job first.", inputs=self.pick,
                          outputs=self.queue_msg)

        def resume():
            self.queue.resume()
            return "Queue running." if any(j.status == "pending" for j in self.queue.snapshot()) \
                else "Queue running (nothing is waiting)."

        def pause():
            self.queue.pause()
            return "Queue paused: the running job finishes, the next ones wait for ▶ Run queue."

        self.resume.click(resume, outputs=self.queue_msg)
        self.pause.click(pause, outputs=self.queue_msg)
        self.clear.click(lambda: f"Removed {self.queue.clear_finished()} finished job(s) from the list "
                         "(their run folders are kept).", outputs=self.queue_msg)
