"""Step reporting without slowing the step: losses stay on the device and are read in one transfer
about ten times a second (and before every save), where NaN/inf is also caught. On CUDA the copy is
asynchronous (pinned buffer + event, collected once it has landed), so reporting never makes the host
wait for the GPU mid-run. Each read feeds the `step` event, the tqdm bar on stderr and TensorBoard."""
from __future__ import annotations

import math
import sys
import time
from collections import deque

import torch

from .faults import NonFiniteLoss


class Progress:
    def __init__(self, events, total_steps: int, epochs: int, start_step: int = 0, tracker=None,
                 enabled: bool = True, interval_s: float = 0.1, lr_names: list[str] | None = None):
        self.events, self.total, self.epochs = events, total_steps, epochs
        self.tracker = tracker
        self.lr_names = lr_names or []  # the optimizer groups' names: TensorBoard's lr/<name> tags
        self.enabled = enabled
        self.interval = interval_s
        self.pending: list[tuple[int, int, torch.Tensor, list[float]]] = []
        self._in_flight = None  # (records, host values, CUDA event) of the copy under way
        self.epoch_losses: list[float] = []
        self.epoch = 0
        self.last_good_path: str | None = None
        self.step = start_step
        self._last_flush = time.monotonic()
        self._times = deque([(time.monotonic(), start_step)], maxlen=50)
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, file=sys.stderr, unit="step",
                            dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 5.0)

    def group_name(self, index: int) -> str:
        name = self.lr_names[index] if index < len(self.lr_names) else ""
        return name.replace(" ", "_") if name else f"group{index}"

    def main_group(self, count: int) -> int:
        """The rate the step event shows: the U-Net's / transformer's first group, else the last group."""
        return next((i for i, n in enumerate(self.lr_names[:count]) if n.startswith("unet")), count - 1)

    def record(self, step: int, epoch: int, loss: torch.Tensor, lrs: list[float]) -> None:
        # float(): Adafactor's relative-step schedule reports its rates as tensors
        self.pending.append((step, epoch, loss, [float(lr) for lr in lrs]))
        self.step = step
        self._collect(wait=False)
        if self._in_flight is None and (time.monotonic() - self._last_flush >= self.interval or step >= self.total):
            self._send()

    def flush(self) -> None:
        """Read every pending loss now (before a save, at the end of an epoch) and report the newest step."""
        if self._in_flight is not None:
            self._collect(wait=True)
        self._send()
        self._collect(wait=True)

    def _send(self) -> None:
        """Start one device→host copy of the pending losses; on CUDA it does not wait for the GPU."""
        if not self.pending:
            return
        values = torch.stack([p[2] for p in self.pending]).detach().float()
        pending, self.pending = self.pending, []
        self._last_flush = time.monotonic()
        if not values.is_cuda:
            self._report(pending, values.tolist())
            return
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._in_flight = (pending, host, event)

    def _collect(self, wait: bool) -> None:
        if self._in_flight is None:
            return
        pending, host, event = self._in_flight
        if not (wait or event.query()):
            return
        event.synchronize()
        self._in_flight = None
        self._report(pending, host.tolist())

    def _report(self, pending: list, values: list[float]) -> None:
        now = time.monotonic()
        for (step, epoch, _, lrs), loss in zip(pending, values):
            if not math.isfinite(loss):
                raise NonFiniteLoss(step, self.last_good_path)
            if epoch != self.epoch:
                self.epoch, self.epoch_losses = epoch, []
            self.epoch_losses.append(loss)
            if self.tracker is not None:
                self.tracker.add_scalar("loss/current", loss, step)
                for i, lr in enumerate(lrs):
                    self.tracker.add_scalar(f"lr/{self.group_name(i)}", lr, step)
        step, epoch, _, lrs = pending[-1]
        self._times.append((now, step))
        t0, s0 = self._times[0]
        it_s = (step - s0) / (now - t0) if now > t0 and step > s0 else 0.0
        avg = sum(self.epoch_losses) / len(self.epoch_losses)
        eta = (self.total - step) / it_s if it_s else None
        self.events.emit("step", step=step, total=self.total, epoch=epoch, epochs=self.epochs, loss=values[-1],
                         avg_loss=avg, lr=lrs[self.main_group(len(lrs))] if lrs else None, it_s=round(it_s, 3),
                         eta_s=None if eta is None else round(eta, 1))
        if self.tracker is not None:
            self.tracker.add_scalar("loss/average", avg, step)
        if self.bar is not None:
            self.bar.set_postfix(epoch=f"{epoch}/{self.epochs}", loss=f"{values[-1]:.4f}", avg=f"{avg:.4f}",
                                 refresh=False)
            self.bar.update(step - self.bar.n)

    def end_epoch(self, epoch: int) -> None:
        self.flush()
        if self.tracker is not None and self.epoch_losses:
            self.tracker.add_scalar("loss/epoch_average", sum(self.epoch_losses) / len(self.epoch_losses), epoch)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tracker is not None:
            self.tracker.flush()


def open_tracker(config, enabled: bool):
    """The tracker `log_with` names (TensorBoard under logging_dir/<log_prefix><output_name>_<timestamp>,
    W&B, or both); None when off."""
    from .trackers import open_trackers

    return open_trackers(config, enabled)
