"""Text-encoder output cache: encode each distinct caption once when captions never change.

Only valid when the text encoders are frozen (the trainer's call) and every caption transform is
fixed (no shuffle, no dropout): then a caption's embedding is the same at every step. Unlike
sd-scripts (sd_scripts.md 3.2) the cached text is the *processed* caption, so caption_prefix/suffix
and keep_tokens_separator markers are applied exactly as in uncached training.
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from .captions import process_caption
from .dataset import TrainDataset
from .errors import DatasetError
from .scan import text_cache_problems

Encode = Callable[[list[str]], dict[str, torch.Tensor]]


def fixed_captions(dataset: TrainDataset) -> list[str]:
    """Every caption the dataset can yield (class/regularisation images' too), or DatasetError naming
    what makes captions change."""
    problems = text_cache_problems(dataset.scan)
    if problems:
        raise DatasetError(problems)
    out = set()
    for item in dataset.scan.items:
        spec = dataset.scan.datasets[item.dataset].subsets[item.subset].spec
        out.add(process_caption(item.caption, spec.caption, random.Random(0), 1))
    return sorted(out)


class TextEncoderOutputCache:
    """encode(captions) -> {name: tensor [B, ...]} (e.g. hidden states and pooled output), run in batches
    once per distinct caption; get(captions) stacks the cached rows for a training batch.
    Rows are kept in host memory unless moved with to(device)."""

    def __init__(self, encode: Encode, batch_size: int = 8,
                 on_progress: Callable[[int, int], None] | None = None):
        self.encode = encode
        self.batch_size = max(1, batch_size)
        self.on_progress = on_progress
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        self.device = torch.device("cpu")

    def __contains__(self, caption: str) -> bool:
        return caption in self.rows

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for row in self.rows.values() for t in row.values())

    @torch.no_grad()
    def prepare(self, captions: list[str]) -> int:
        todo = [c for c in dict.fromkeys(captions) if c not in self.rows]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            out = self.encode(chunk)
            for i, caption in enumerate(chunk):
                # a copy: a view would keep the whole batch's storage alive
                self.rows[caption] = {k: v[i].detach().to(self.device, copy=True) for k, v in out.items()}
            if self.on_progress is not None:
                self.on_progress(min(start + len(chunk), len(todo)), len(todo))
        return len(todo)

    def to(self, device) -> "TextEncoderOutputCache":
        self.device = torch.device(device)
        self.rows = {c: {k: v.to(self.device) for k, v in row.items()} for c, row in self.rows.items()}
        return self

    def get(self, captions: list[str], device=None) -> dict[str, torch.Tensor]:
        """The rows of `captions` stacked [B, ...], on `device` (default: where the rows are kept)."""
        missing = [c for c in captions if c not in self.rows]
        if missing:
            raise KeyError(f"caption not cached: {missing[0]!r}")
        names = self.rows[captions[0]].keys()
        out = {k: torch.stack([self.rows[c][k] for c in captions]) for k in names}
        device = torch.device(device) if device is not None else self.device
        if device == self.device:
            return out
        if device.type == "cuda" and self.device.type == "cpu":  # pinned: the copy needs no host sync
            return {k: v.pin_memory().to(device, non_blocking=True) for k, v in out.items()}
        return {k: v.to(device) for k, v in out.items()}
