"""The step/epoch planner (the seed guide's calculator), as pure functions.

steps = Σ(images × repeats) [× 2 with regularization, as Kohya balances reg images to the training
count] × epochs ÷ (batch × gradient accumulation × processes), each division rounded up the way the
trainer's loader does it. With aspect-ratio buckets the trainer's own plan event counts batches per
bucket (a batch never mixes buckets), which can add a few steps; this function gives the single-bucket
figure the seed's tables use unless bucket sizes are passed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


# Longer than any run can take: 10 million steps at 10 steps/s (a small LoRA on a fast GPU) are 12 days.
# Above this a typo is likelier than a plan, and per-step bookkeeping (save names, schedules) grows with it.
MAX_TRAIN_STEPS = 10_000_000


@dataclass(frozen=True)
class Plan:
    samples_per_epoch: int  # training images × repeats, plus the balanced reg samples
    train_samples: int
    reg_samples: int
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    batch_size: int
    gradient_accumulation_steps: int

    def to_dict(self) -> dict:
        return asdict(self)

    def formula(self) -> str:
        reg = " + reg balanced" if self.reg_samples else ""
        return (f"{self.train_samples} (images × repeats){reg} = {self.samples_per_epoch} samples/epoch → "
                f"{self.steps_per_epoch} steps/epoch (batch {self.batch_size}, accumulation "
                f"{self.gradient_accumulation_steps}) × {self.epochs} epochs = {self.total_steps} steps")


def run_length(steps_per_epoch: int, epochs: int, max_train_steps: int = 0) -> tuple[int, int]:
    """(epochs, total steps): epochs govern unless max_train_steps > 0, which then sets the epochs
    needed to reach it (Kohya's rule, without its 1600 default)."""
    if max_train_steps > 0:
        return (math.ceil(max_train_steps / steps_per_epoch) if steps_per_epoch else 0), max_train_steps
    return epochs, steps_per_epoch * epochs


def epoch_save_interval(epochs: int, save_every_n_epochs: int, save_n_epoch_ratio: int = 0) -> int:
    """Every how many epochs a run writes NAME-0000NN (0 = only the final file). sd-scripts: a
    save_n_epoch_ratio above 0 replaces save_every_n_epochs with floor(epochs / ratio), at least 1."""
    if save_n_epoch_ratio > 0:
        return max(1, epochs // save_n_epoch_ratio)
    return save_every_n_epochs


def reg_samples_used(train_samples: int, reg_image_counts: list[tuple[int, int]]) -> int:
    """Kohya registers reg images (with their repeats) until they match the training count."""
    available = sum(images * repeats for images, repeats in reg_image_counts)
    if not available:
        return 0
    return train_samples  # short reg sets are repeated more, long ones are cut: always balanced


def compute_plan(concept_image_counts: list[tuple[int, int]], reg_image_counts: list[tuple[int, int]] = (),
                 epochs: int = 1, batch_size: int = 1, gradient_accumulation_steps: int = 1,
                 max_train_steps: int = 0, num_processes: int = 1,
                 bucket_sizes: list[int] | None = None) -> Plan:
    """Plan a run from (images, repeats) per concept folder.

    `bucket_sizes` (samples per bucket, reg included) switches to exact per-bucket batch counting.
    With `max_train_steps` > 0 the run stops there and `epochs` becomes what that needs.
    """
    train = sum(images * repeats for images, repeats in concept_image_counts)
    reg = reg_samples_used(train, list(reg_image_counts))
    samples = train + reg
    if bucket_sizes:
        batches = sum(math.ceil(n / batch_size) for n in bucket_sizes if n)
    else:
        batches = math.ceil(samples / batch_size)
    # as the trainer deals batches: each process takes its share (rounded up), then accumulates
    steps_per_epoch = math.ceil(math.ceil(batches / num_processes) / gradient_accumulation_steps) if batches else 0
    epochs, total = run_length(steps_per_epoch, epochs, max_train_steps)
    return Plan(samples, train, reg, batches, steps_per_epoch, epochs, total, batch_size,
                gradient_accumulation_steps)


def epochs_for_steps(target_steps: int, concept_image_counts: list[tuple[int, int]],
                     reg_image_counts: list[tuple[int, int]] = (), batch_size: int = 1,
                     gradient_accumulation_steps: int = 1, num_processes: int = 1) -> int:
    """The inverse: how many epochs reach at least `target_steps` steps."""
    per_epoch = compute_plan(concept_image_counts, reg_image_counts, 1, batch_size,
                             gradient_accumulation_steps, num_processes=num_processes).steps_per_epoch
    if per_epoch == 0:
        raise ValueError("the dataset has no images, so no number of epochs reaches any step count")
    return max(1, math.ceil(target_steps / per_epoch))
