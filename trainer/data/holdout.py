"""Holding images out for the validation loss (sd-scripts' validation_split / validation_seed).

As in sd-scripts (train_util.split_train_val), each training subset is split on its own, on images
before repeats: its images are shuffled by the validation seed and the last ⌊n × validation_split⌋ are
held out; regularization images are never held out. Unlike sd-scripts (ceil for training, round for
validation, so an image can land in both) the two parts never overlap. The training scan that comes out
holds only the kept images, so everything downstream (epochs, step math, plan, metadata) counts those.
Pure Python: the preflight and the page's plan run it without torch.
"""
from __future__ import annotations

import math
from dataclasses import replace

from trainer.problems import Problem

from .rng import derive_rng
from .scan import ScannedDataset, ScannedSubset, ScanResult


def held_out_count(images: int, split: float) -> int:
    """How many of a subset's images validate; the tolerance keeps 10 × 0.3 at 3, not 2."""
    return min(images, math.floor(images * split + 1e-9)) if split > 0 else 0


def split_validation(scan: ScanResult, run_seed: int) -> ScanResult:
    """The training scan (kept images, re-indexed) with `validation` set to a scan of the held-out ones
    (same datasets and subsets, so item.dataset / item.subset point at the same specs), and a problem
    naming validation_split when the split leaves one side empty."""
    if not any(ds.spec.validation_split > 0 for ds in scan.datasets):
        return scan
    kept_items, held_items = [], []
    kept_sets, held_sets = [], []
    for d_index, ds in enumerate(scan.datasets):
        seed = ds.spec.validation_seed or run_seed
        kept_subsets, held_subsets = [], []
        for s_index, sub in enumerate(ds.subsets):
            held = set() if sub.spec.is_reg else _held_out(sub, ds.spec.validation_split, seed, d_index, s_index)
            kept_subsets.append(replace(sub, items=_move(sub.items, held, False, scan, kept_items), held_out=len(held)))
            # each held-out image is measured once per evaluation (sd-scripts' validation sets have no repeats)
            held_subsets.append(ScannedSubset(replace(sub.spec, num_repeats=1),
                                              items=_move(sub.items, held, True, scan, held_items)))
        kept_sets.append(ScannedDataset(ds.spec, ds.buckets, kept_subsets))
        held_sets.append(ScannedDataset(ds.spec, ds.buckets, held_subsets))
    validation = ScanResult(held_sets, held_items, [])
    problems = list(scan.problems) + _split_problems(scan, kept_items, held_items)
    return ScanResult(kept_sets, kept_items, problems, validation=validation)


def _held_out(sub: ScannedSubset, split: float, seed: int, d_index: int, s_index: int) -> set[int]:
    order = list(sub.items)
    derive_rng(seed, "validation", d_index, s_index).shuffle(order)
    n = held_out_count(len(order), split)
    return set(order[len(order) - n:]) if n else set()


def _move(indices: list[int], held: set[int], take_held: bool, scan: ScanResult, out: list) -> list[int]:
    """Append the chosen items (in their scan order) to `out`; their new indices."""
    new = []
    for i in indices:
        if (i in held) == take_held:
            new.append(len(out))
            out.append(scan.items[i])
    return new


def _split_problems(scan: ScanResult, kept: list, held: list) -> list[Problem]:
    if any(p.level == "error" for p in scan.problems):
        return []  # the scan's own error (no images at all) says it better
    train = sum(1 for it in kept if not it.is_reg)
    splits = sorted({ds.spec.validation_split for ds in scan.datasets if ds.spec.validation_split > 0})
    shown = "/".join(f"{s:g}" for s in splits)
    if not held:
        sizes = ", ".join(f"{s.spec.label or s.spec.image_dir.name}: {len(s.items)}" for ds in scan.datasets
                          for s in ds.subsets if not s.spec.is_reg)
        return [Problem.at("validation_split", f"validation_split {shown} holds out no image: each training folder "
                           f"holds out ⌊images × {shown}⌋ and these have too few ({sizes}), so there is nothing to "
                           "measure a validation loss on; raise validation_split (e.g. to 0.5) or add images, or set "
                           "it to 0")]
    if not train:
        return [Problem.at("validation_split", f"validation_split {shown} holds out all {len(held)} training images "
                           "and leaves none to train on; lower validation_split")]
    return []
