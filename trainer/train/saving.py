"""Saving cadence, retention and the run-settings JSON. The file names (sd-scripts §4.5: NAME-000004,
NAME-step00000500, NAME, NAME-stopped, each model's -state folder) come from trainer/output_names.py,
which the page's overwrite guard reads too.

Retention (save_last_n_epochs / save_last_n_steps) only ever removes files this run wrote; a run
refuses to start when one of the names it would write already exists, unless it resumes the run
that wrote it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.output_names import output_path, state_dir

from .faults import TrainingFault


@dataclass
class SavePolicy:
    output_dir: Path
    output_name: str
    ext: str = "safetensors"
    every_n_epochs: int = 0
    every_n_steps: int = 0
    last_n_epochs: int = 0
    last_n_steps: int = 0
    last_n_epochs_state: int = 0  # 0: the -state folders follow last_n_epochs / last_n_steps (sd-scripts)
    last_n_steps_state: int = 0
    save_state: bool = False
    save_state_on_train_end: bool = False

    @classmethod
    def from_config(cls, config) -> "SavePolicy":
        return cls(
            output_dir=Path(config.output_dir or ".").expanduser(),
            output_name=config.output_name or "last",
            ext=config.save_model_as,
            every_n_epochs=int(config.save_every_n_epochs),
            every_n_steps=int(config.save_every_n_steps),
            last_n_epochs=int(config.save_last_n_epochs),
            last_n_steps=int(config.save_last_n_steps),
            last_n_epochs_state=int(config.save_last_n_epochs_state),
            last_n_steps_state=int(config.save_last_n_steps_state),
            save_state=bool(config.save_state),
            save_state_on_train_end=bool(config.save_state_on_train_end),
        )

    # --- names ---------------------------------------------------------------------------------

    def path(self, kind: str, epoch: int = 0, step: int = 0) -> Path:
        return output_path(self.output_dir, self.output_name, self.ext, kind, epoch, step)  # ext "" = a folder

    state_dir = staticmethod(state_dir)

    # --- cadence -------------------------------------------------------------------------------

    def epoch_due(self, epoch: int, epochs: int) -> bool:
        """The last epoch is written under the plain name instead (as sd-scripts does)."""
        return self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0 and epoch < epochs

    def step_due(self, step: int, total_steps: int) -> bool:
        return self.every_n_steps > 0 and step % self.every_n_steps == 0 and step < total_steps

    def planned_saves(self, epochs: int, total_steps: int) -> list[tuple[Path, str, int]]:
        """(path, kind, epoch or step) of every result this run may write."""
        saves = [(self.path("epoch", epoch=e), "epoch", e) for e in range(1, epochs + 1) if self.epoch_due(e, epochs)]
        if self.every_n_steps > 0:  # no walk over 10^9 steps when nothing is saved by step
            saves += [(self.path("step", step=s), "step", s)
                      for s in range(self.every_n_steps, total_steps, self.every_n_steps)]
        saves += [(self.path("final"), "final", 0), (self.path("stopped"), "stopped", 0)]
        if self.save_state or self.save_state_on_train_end:
            saves += [(self.state_dir(p), k, n) for p, k, n in saves]
        return saves

    def planned_paths(self, epochs: int, total_steps: int) -> list[Path]:
        return [p for p, _, _ in self.planned_saves(epochs, total_steps)]


def check_no_collisions(policy: SavePolicy, epochs: int, total_steps: int, owned: set[str]) -> None:
    """Never overwrite a file from another run: fail before training, naming the files."""
    taken = [p for p in policy.planned_paths(epochs, total_steps) if p.exists() and str(p) not in owned]
    if taken:
        shown = ", ".join(p.name for p in taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise TrainingFault(
            f"{policy.output_dir} already holds {shown} from an earlier run, and this run would overwrite it.",
            "Choose another output_name or output_dir, move the old files away, or resume the earlier run "
            "from its -state folder.")


def adoptable(policy: SavePolicy, epochs: int, total_steps: int, resumed) -> set[str]:
    """Results the resumed state does not list but its own session wrote, at a step the resume redoes
    (a run killed between a model file and its state, by an older version that wrote the model first,
    or a resume from an older state of the same run): the redo rewrites them, so they are not refused."""
    from .leftovers import session_of

    if not getattr(resumed, "session_id", ""):
        return set()
    done_steps, in_epoch = resumed.global_step, resumed.epoch
    out = set()
    for path, kind, n in policy.planned_saves(epochs, total_steps):
        redone = ((kind == "step" and n > done_steps) or (kind == "epoch" and n >= in_epoch)
                  or (kind == "final" and done_steps < total_steps))
        if redone and str(path) not in resumed.written and path.exists() and session_of(path) == resumed.session_id:
            out.add(str(path))
    return out


@dataclass
class Retention:
    """Files this run wrote, so save_last_n_* can prune them (and only them)."""
    policy: SavePolicy
    written: list[str] = field(default_factory=list)

    def record(self, path: Path) -> None:
        if str(path) not in self.written:
            self.written.append(str(path))

    def prune_epochs(self, epoch: int) -> list[Path]:
        """After saving epoch `epoch`, drop this run's epoch files older than the N newest (and -state folders
        older than their own N)."""
        every = self.policy.every_n_epochs

        def older(n: int) -> list[Path]:
            if n <= 0 or every <= 0:
                return []
            return [self.policy.path("epoch", epoch=e) for e in range(every, epoch - n * every + 1, every)]

        p = self.policy
        return self._remove(older(p.last_n_epochs), older(p.last_n_epochs_state or p.last_n_epochs))

    def prune_steps(self, step: int) -> list[Path]:
        """After saving step `step`, drop this run's step files (and -state folders) from before the last N steps."""
        every = self.policy.every_n_steps

        def older(n: int) -> list[Path]:
            if n <= 0 or every <= 0:
                return []
            return [self.policy.path("step", step=s) for s in range(every, step - n + 1, every) if s <= step - n]

        p = self.policy
        return self._remove(older(p.last_n_steps), older(p.last_n_steps_state or p.last_n_steps))

    def _remove(self, models: list[Path], states_of: list[Path]) -> list[Path]:
        removed = []
        for target in models + [self.policy.state_dir(path) for path in states_of]:
            if str(target) in self.written and target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
                self.written.remove(str(target))
                removed.append(target)
        return removed


def write_settings_json(output_dir: Path, output_name: str, settings: dict) -> Path:
    """The run's full settings beside its outputs (Kohya_ss's NAME_YYYYMMDD-HHMMSS.json), loadable again."""
    from trainer.config import atomic_write_text

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = output_dir / f"{output_name}_{stamp}.json"
    n = 1
    while path.exists():  # two runs in the same second: never overwrite
        path = output_dir / f"{output_name}_{stamp}-{n}.json"
        n += 1
    return atomic_write_text(path, json.dumps(settings, indent=2, ensure_ascii=False, default=str) + "\n")


def check_writable(folder: Path) -> None:
    """Fail before training (not after an hour) when the output folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingFault(f"Cannot write to output_dir {folder}: {exc.strerror or exc}",
                            "Choose an output_dir you can write to, or fix its permissions.") from exc
