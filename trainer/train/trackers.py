"""Where scalars and sample images go (`log_with`): TensorBoard, Weights & Biases, or both ("all").

Every tracker offers add_scalar / add_image / flush / close, the SummaryWriter calls the loop makes.
The W&B API key is read by wandb itself from WANDB_API_KEY (or `wandb login`); it is never put in a
config, a log line or an event.
"""
from __future__ import annotations

import time
from pathlib import Path

from .faults import TrainingFault


class WandbTracker:
    def __init__(self, config, run_name: str):
        try:
            import wandb
        except ImportError:
            raise TrainingFault("log_with wandb needs the wandb package, which is not installed",
                                "pip install 'kohya-studio[wandb]' (or pip install wandb), then set WANDB_API_KEY "
                                "or run `wandb login`; or choose log_with tensorboard.") from None
        self._wandb = wandb
        self.run = wandb.init(project=config.log_tracker_name or "kohya-studio",
                              name=config.wandb_run_name or run_name,
                              dir=(config.logging_dir or None), reinit=True)

    def add_scalar(self, tag, value, step):
        self.run.log({tag: value}, step=int(step))

    def add_image(self, tag, image, step, dataformats="HWC"):
        self.run.log({tag: self._wandb.Image(image)}, step=int(step))

    def flush(self):
        pass

    def close(self):
        self.run.finish()


class MultiTracker:
    def __init__(self, trackers):
        self.trackers = list(trackers)

    def __getattr__(self, name):
        def fan_out(*args, **kwargs):
            for tracker in self.trackers:
                getattr(tracker, name)(*args, **kwargs)
        return fan_out


def open_trackers(config, enabled: bool):
    """The tracker for `log_with` ("" = none), or None. TensorBoard writes under logging_dir only."""
    wanted = config.log_with
    if not enabled or not wanted:
        return None
    run_name = f"{config.log_prefix}{config.output_name or 'last'}_{time.strftime('%Y%m%d-%H%M%S')}"
    trackers = []
    logging_dir = config.logging_dir
    if wanted in ("tensorboard", "all") and logging_dir:
        from torch.utils.tensorboard import SummaryWriter

        trackers.append(SummaryWriter(log_dir=str(Path(logging_dir).expanduser() / run_name)))
    if wanted in ("wandb", "all"):
        trackers.append(WandbTracker(config, run_name))
    if not trackers:
        return None
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)
