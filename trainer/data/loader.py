"""What the trainer's data path (trainer/train/setup.py `build_data` → trainer/train/batches.py
`StepBatches`) asks of the dataset package: how many loader workers, and whether cached latents
would go stale. There is one data path: the trainer's; tests and benches run it too."""
from __future__ import annotations

import os

from .dataset import TrainDataset
from .errors import DatasetError
from .scan import ScanResult, cache_problems


def loader_workers(dataset: TrainDataset, cfg) -> int:
    """Worker processes only help when there is decoding to do; in-memory latents need none."""
    if dataset.latents is not None and not dataset.latents.to_disk:
        return 0
    wanted = int(cfg.max_data_loader_n_workers)
    return max(0, min(wanted, os.cpu_count() or 1))


def check_cache_compatible(scan: ScanResult) -> None:
    """DatasetError when an augmentation would make cached latents stale (color_aug, random_crop, face crop)."""
    problems = cache_problems(scan)
    if problems:
        raise DatasetError(problems)
