"""The step/epoch calculator: steps from images × repeats, epochs and batch size, and back.

This is the kohya_ss GUI's simplified estimate (one bucket; sd-scripts may take a few more steps per
epoch when images fall into several aspect-ratio buckets). The trainer's exact planner is trainer/plan.py.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .images import is_image

_CONCEPT = re.compile(r"^(\d+)_(.+)$")


@dataclass
class Concept:
    folder: str
    repeats: int
    images: int

    @property
    def samples(self) -> int:
        return self.repeats * self.images


def scan_concepts(train_data_dir: str | os.PathLike) -> tuple[list[Concept], list[str]]:
    """`N_name` sub-folders with their image counts; the second list names folders sd-scripts ignores."""
    root = Path(train_data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    concepts, ignored = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _CONCEPT.match(sub.name)
        if not m or int(m.group(1)) < 1:
            ignored.append(f"{sub.name}: no '<repeats>_<name>' prefix, so training ignores it")
            continue
        images = sum(1 for p in sub.iterdir() if p.is_file() and is_image(p))
        concepts.append(Concept(str(sub), int(m.group(1)), images))
    if not concepts and any(p.is_file() and is_image(p) for p in root.iterdir()):
        ignored.append(
            f"{root} holds images directly; train_data_dir must be the parent of '<repeats>_<name>' folders"
        )
    return concepts, ignored


@dataclass
class StepPlan:
    samples_per_epoch: int  # images × repeats (× 2 with regularisation)
    steps_per_epoch: int
    epochs: int
    total_steps: int
    formula: str

    def to_dict(self) -> dict:
        return asdict(self)


def _check(**values: int) -> None:
    for k, v in values.items():
        if int(v) < 1:
            raise ValueError(f"{k}={v} must be at least 1")


def steps_per_epoch(
    images_x_repeats: int, train_batch_size: int = 1, gradient_accumulation_steps: int = 1,
    with_reg: bool = False, num_processes: int = 1,
) -> int:  # fmt: skip
    """Optimizer steps in one epoch; regularisation images double the samples (sd-scripts balances them)."""
    _check(train_batch_size=train_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
           num_processes=num_processes)  # fmt: skip
    samples = images_x_repeats * (2 if with_reg else 1)
    batches = math.ceil(samples / train_batch_size)
    return math.ceil(batches / num_processes / gradient_accumulation_steps)


def steps_from_epochs(
    images_x_repeats: int, epochs: int, train_batch_size: int = 1, gradient_accumulation_steps: int = 1,
    with_reg: bool = False, num_processes: int = 1,
) -> StepPlan:  # fmt: skip
    _check(epochs=epochs)
    if images_x_repeats < 1:
        raise ValueError("no training images: images × repeats is 0")
    per = steps_per_epoch(images_x_repeats, train_batch_size, gradient_accumulation_steps, with_reg, num_processes)
    reg = 2 if with_reg else 1
    formula = (
        f"max_train_steps = ceil({images_x_repeats} × {reg} / {train_batch_size} / {num_processes} / "
        f"{gradient_accumulation_steps}) × {epochs} = {per} × {epochs} = {per * epochs}"
    )
    return StepPlan(images_x_repeats * reg, per, epochs, per * epochs, formula)


def epochs_from_steps(
    images_x_repeats: int, max_train_steps: int, train_batch_size: int = 1, gradient_accumulation_steps: int = 1,
    with_reg: bool = False, num_processes: int = 1,
) -> StepPlan:  # fmt: skip
    """sd-scripts: num_train_epochs = ceil(max_train_steps / steps_per_epoch); training stops at the step."""
    _check(max_train_steps=max_train_steps)
    if images_x_repeats < 1:
        raise ValueError("no training images: images × repeats is 0")
    per = steps_per_epoch(images_x_repeats, train_batch_size, gradient_accumulation_steps, with_reg, num_processes)
    epochs = math.ceil(max_train_steps / per)
    formula = f"epochs = ceil({max_train_steps} / {per} steps per epoch) = {epochs}"
    reg = 2 if with_reg else 1
    return StepPlan(images_x_repeats * reg, per, epochs, max_train_steps, formula)
