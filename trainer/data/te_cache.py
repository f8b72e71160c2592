"""Text-encoder output cache: encode each distinct caption once when captions never change.

Only valid when the text encoders are frozen (the trainer's call) and every caption transform is
fixed (no shuffle, no dropout): then a caption's embedding is the same at every step. Unlike
sd-scripts (sd_scripts.md 3.2) the cached text is the *processed* caption, so caption_prefix/suffix
and keep_tokens_separator markers are applied exactly as in uncached training.

On disk (cache_text_encoder_outputs_to_disk) each caption's outputs are one safetensors file named by a hash
of everything that made them: the caption's token ids (so a changed caption, T5 max token length or T5
attention mask gives another name) and a fingerprint of the family, clip_skip and the encoders' weights.
The header repeats the caption and fingerprint, checked on load; a file that does not match is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.atomic import atomic_path

from .captions import process_caption
from .dataset import TrainDataset
from .errors import DatasetError
from .scan import text_cache_problems

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], dict[str, torch.Tensor]]
FORMAT = 1
META_KEY = "kohya_studio_text_cache"
CACHE_SUFFIX = ".te.safetensors"


def weights_fingerprint(*parts, modules=()) -> str:
    """Hash of `parts` (settings) and each module's config, shapes, dtypes and a strided sample of every
    weight: cheap on T5-XXL's 4.7 B parameters, yet any other checkpoint or fine-tune changes it."""
    h = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=16)
    with torch.no_grad():
        for module in modules:
            config = getattr(module, "config", None)
            config = config.to_dict() if hasattr(config, "to_dict") else {}
            # not where it was loaded from (_name_or_path …): the same weights from another path match
            h.update(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True,
                                default=str).encode())
            for name, tensor in module.state_dict().items():
                flat = tensor.detach().reshape(-1)
                sample = flat[::max(1, flat.numel() // 256)].to("cpu", torch.float32)
                h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
                h.update(sample.numpy().tobytes())
    return h.hexdigest()


class TextCacheFolder:
    """One file per caption and conditioning setup: `<folder>/<hash>.te.safetensors`."""

    def __init__(self, folder: str | Path, fingerprint: str, ids_of: Callable[[str], list[torch.Tensor]]):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.ids_of = ids_of  # caption -> its token ids (one tensor per encoder, mask included)

    def path(self, caption: str) -> Path:
        h = hashlib.blake2b(self.fingerprint.encode(), digest_size=20)
        for ids in self.ids_of(caption):
            h.update(f"{tuple(ids.shape)}:{ids.dtype}:".encode())
            h.update(ids.detach().to("cpu").contiguous().numpy().tobytes())
        return self.folder / f"{h.hexdigest()}{CACHE_SUFFIX}"

    def load(self, caption: str) -> dict[str, torch.Tensor] | None:
        path = self.path(caption)
        try:
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
            if meta != self._meta(caption):
                return None
            return load_file(str(path))
        except Exception:  # missing, partial or foreign file: encode again
            return None

    def save(self, caption: str, row: dict[str, torch.Tensor]) -> None:
        with atomic_path(self.path(caption)) as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in row.items()}, str(tmp),
                      metadata={META_KEY: json.dumps(self._meta(caption))})

    def _meta(self, caption: str) -> dict:
        return {"format": FORMAT, "fingerprint": self.fingerprint, "caption": caption}


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
                 on_progress: Callable[[int, int], None] | None = None, disk: TextCacheFolder | None = None):
        self.encode = encode
        self.batch_size = max(1, batch_size)
        self.on_progress = on_progress
        self.disk = disk  # rows found there are read, rows computed are written there
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        self.device = torch.device("cpu")
        self.stats = {"reused": 0, "computed": 0}

    def __contains__(self, caption: str) -> bool:
        return caption in self.rows

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for row in self.rows.values() for t in row.values())

    @torch.no_grad()
    def prepare(self, captions: list[str]) -> int:
        todo = [c for c in dict.fromkeys(captions) if c not in self.rows]
        if self.disk is not None:
            for caption in list(todo):
                row = self.disk.load(caption)
                if row is not None:
                    self.rows[caption] = {k: v.to(self.device) for k, v in row.items()}
                    self.stats["reused"] += 1
            todo = [c for c in todo if c not in self.rows]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            out = self.encode(chunk)
            for i, caption in enumerate(chunk):
                # a copy: a view would keep the whole batch's storage alive
                self.rows[caption] = {k: v[i].detach().to(self.device, copy=True) for k, v in out.items()}
                if self.disk is not None:
                    self.disk.save(caption, self.rows[caption])
            self.stats["computed"] += len(chunk)
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
