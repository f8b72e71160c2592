"""Wiring for the trainer: scan -> (latent cache) -> TrainDataset -> DataLoader that keeps the loop fed."""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch.utils.data import DataLoader, Sampler

from .dataset import BatchKey, TrainDataset, needs_flip_cache
from .errors import DatasetError
from .latent_cache import LatentCache
from .options import cfg_get
from .scan import ScanResult, cache_problems, scan_dataset


class EpochBatchSampler(Sampler[BatchKey]):
    """Runs in the main process, so set_epoch/skip_batches work even with persistent workers."""

    def __init__(self, dataset: TrainDataset):
        self.dataset = dataset

    def __iter__(self):
        keys = self.dataset.epoch_batches(self.dataset.epoch)
        yield from keys[self.dataset.take_skip():]

    def __len__(self) -> int:
        return len(self.dataset)


def loader_workers(dataset: TrainDataset, cfg) -> int:
    """Worker processes only help when there is decoding to do; in-memory latents need none."""
    if dataset.latents is not None and not dataset.latents.to_disk:
        return 0
    wanted = int(cfg_get(cfg, "max_data_loader_n_workers", 0) or 0)
    return max(0, min(wanted, os.cpu_count() or 1))


def keep_batch(batch: dict) -> dict:
    """Items are already whole batches; torch's default conversion would turn the bucket tuple into a list."""
    return batch


def build_dataloader(dataset: TrainDataset, cfg) -> DataLoader:
    workers = loader_workers(dataset, cfg)
    return DataLoader(
        dataset, batch_size=None, sampler=EpochBatchSampler(dataset), collate_fn=keep_batch, num_workers=workers,
        persistent_workers=bool(cfg_get(cfg, "persistent_data_loader_workers", False)) and workers > 0,
        pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None)


def check_cache_compatible(scan: ScanResult) -> None:
    """DatasetError when an augmentation would make cached latents stale (color_aug, random_crop)."""
    problems = cache_problems(scan)
    if problems:
        raise DatasetError(problems)


def build_train_data(cfg, vae=None, *, on_progress: Callable[[int, int], None] | None = None,
                     scan: ScanResult | None = None) -> tuple[TrainDataset, DataLoader]:
    """Everything the loop needs. With cache_latents(_to_disk) the VAE encodes what is missing or
    stale first, reporting on_progress(done, total)."""
    scan = scan if scan is not None else scan_dataset(cfg)
    latents = None
    to_disk = bool(cfg_get(cfg, "cache_latents_to_disk", False))
    if cfg_get(cfg, "cache_latents", False) or to_disk:
        if vae is None:
            raise DatasetError("cache_latents needs the VAE", "pass the base model's VAE to build_train_data")
        check_cache_compatible(scan)
        latents = LatentCache(vae, to_disk=to_disk, cache_dir=cfg_get(cfg, "latent_cache_dir", ""),
                              batch_size=int(cfg_get(cfg, "vae_batch_size", 1) or 1), on_progress=on_progress)
    dataset = TrainDataset(scan, cfg, latents)
    if latents is not None:
        latents.prepare(scan.items, needs_flip_cache(dataset))
    return dataset, build_dataloader(dataset, cfg)
