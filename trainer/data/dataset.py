"""The training dataset: every item is a whole batch from one bucket, in an order fixed by (seed, epoch)."""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch.utils.data import Dataset
from trainer.config.defaults import option

from .augment import render_masked
from .epochs import BatchKey, EpochPlan
from .errors import DatasetError
from .face_crop import face_crop_placement, face_from_name
from .images import load_for_training
from .latent_cache import LatentCache
from .captions import process_caption
from .rng import derive_rng, derive_seed
from .scan import ScanResult

log = logging.getLogger(__name__)


class TrainDataset(EpochPlan, Dataset):
    """Each item is a whole batch from one bucket (a dict, see _collate), built from a BatchKey."""

    def __init__(self, scan: ScanResult, cfg, latents: LatentCache | None = None):
        super().__init__(scan, int(cfg.seed))
        self.prior_loss_weight = float(option(cfg, "prior_loss_weight"))
        self.latents = latents
        self.epoch = 1
        self.total_steps = 0

    def set_epoch(self, epoch: int) -> None:
        """Epochs count from 1 (Kohya's numbering; caption_dropout_every_n_epochs relies on it)."""
        self.epoch = int(epoch)

    def set_total_steps(self, total_steps: int) -> None:
        """The run's length (a token_warmup_step below 1 is a share of it); set once, before the loader starts its
        workers, so every worker holds it."""
        self.total_steps = int(total_steps)

    def __len__(self) -> int:
        return self.batches_per_epoch()

    # ---- building a batch -----------------------------------------------------------------------
    def __getitem__(self, key: BatchKey | int) -> dict:
        if isinstance(key, int):
            key = self.epoch_batches(self.epoch)[key]
        rows = []
        for pos, (item_index, _) in enumerate(key.samples):
            rng = derive_rng(self.seed, "sample", key.epoch, key.index, pos)
            row = self._row(item_index, key, rng)
            if row is not None:
                rows.append(row)
        if not rows:  # the whole batch broke after the scan: borrow a working image of the same bucket
            rows = self._borrow_row(key)
        if not rows:
            raise DatasetError(f"every image of batch {key.index} (bucket {key.bucket}) failed to load",
                               "run preflight again; files changed after training started")
        good = list(rows)
        while len(rows) < len(key.samples):  # a file vanished mid-run: fill its slot from the same bucket
            rows.append(good[len(rows) % len(good)])
        return self._collate(rows, key)

    def _borrow_row(self, key: BatchKey) -> list[dict]:
        tried = {i for i, _ in key.samples}
        for item_index, _ in self._train[key.dataset].get(key.bucket, []):
            if item_index not in tried:
                tried.add(item_index)
                row = self._row(item_index, key, derive_rng(self.seed, "borrow", key.epoch, key.index))
                if row is not None:
                    return [row]
        return []

    def _row(self, item_index: int, key: BatchKey, rng) -> dict | None:
        item = self.scan.items[item_index]
        subset = self.scan.datasets[item.dataset].subsets[item.subset].spec
        caption = process_caption(item.caption, subset.caption, rng, key.epoch, key.step, self.total_steps)
        flip = subset.flip_aug and rng.random() < 0.5
        row = {"item": item, "caption": caption, "flip": flip}
        if self.latents is not None:
            if not self.latents.has(item, subset.masked):  # its file broke after the scan: leave it out
                return None
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "latent", key.epoch, key.index,
                                                                  rng.random()))
            entry = self.latents.get(item, subset.masked)
            row["latents"] = entry.sample(flip, generator)
            if subset.masked:
                row["alpha_mask"] = entry.mask_for(flip)
            crop = item.placement.crop_ltrb
            if flip:
                w = item.placement.resized[0]
                crop = (w - crop[2], crop[1], w - crop[0], crop[3])
            row["crop"] = crop
            return row
        try:
            image, alpha = load_for_training(item.path, subset.masked, item.mask_path)
        except Exception as exc:  # never die mid-run on one file
            log.warning("skipping %s in this batch: %s", item.path, exc)
            return None
        face = face_from_name(item.path) if subset.face_crop_aug_range else None
        placement = item.placement
        if face:
            placement = face_crop_placement(image.size, face, placement, subset.face_crop_aug_range,
                                            subset.random_crop, rng)
        row["images"], row["crop"], mask = render_masked(image, alpha, placement, flip=flip,
                                                         random_crop=subset.random_crop and not face,
                                                         color_aug=subset.color_aug, rng=rng,
                                                         interpolation=item.resize_interpolation)
        if face:  # SDXL conditioning as sd-scripts gives a face crop: an uncropped image of the bucket's size
            row["original"], row["crop"] = placement.bucket, (0, 0, *placement.bucket)
        if subset.masked:
            row["alpha_mask"] = mask
        return row

    def _collate(self, rows: list[dict], key: BatchKey) -> dict:
        items = [r["item"] for r in rows]
        bw, bh = key.bucket
        batch = {
            "captions": [r["caption"] for r in rows],
            "is_reg": torch.tensor([it.is_reg for it in items], dtype=torch.bool),
            "loss_weights": torch.tensor([self.prior_loss_weight if it.is_reg else 1.0 for it in items],
                                         dtype=torch.float32),
            "bucket": key.bucket,
            "paths": [str(it.path) for it in items],
            # SDXL size conditioning, (height, width) order as in its add_time_ids
            "original_sizes_hw": torch.tensor([original_hw(r) for r in rows]),
            "crop_top_lefts": torch.tensor([[r["crop"][1], r["crop"][0]] for r in rows]),
            "target_sizes_hw": torch.tensor([[bh, bw]] * len(rows)),
            "epoch": key.epoch,
            "index": key.index,
        }
        if all("latents" in r for r in rows):
            batch["latents"] = torch.stack([r["latents"] for r in rows])
        elif any("latents" in r for r in rows):  # mixed: decode the rest on the fly is not possible here
            raise DatasetError("some images of a batch have cached latents and some do not",
                               "cache latents for every image (prepare the cache before training)")
        else:
            batch["images"] = torch.stack([r["images"] for r in rows])
        if any("alpha_mask" in r for r in rows):
            batch["alpha_masks"] = batch_masks(rows)
        return batch


def original_hw(row: dict) -> list[int]:
    """SDXL's original size, (height, width): the image's own size, or what a face crop says it is."""
    width, height = row.get("original", row["item"].facts.size)
    return [height, width]


def batch_masks(rows: list[dict]) -> torch.Tensor:
    """The rows' loss masks [B, H, W] (from alpha channels or mask images); a row of a subset without masks counts
    everywhere (ones), as in sd-scripts when only some subsets have masks."""
    shape = next(r["alpha_mask"].shape for r in rows if "alpha_mask" in r)
    return torch.stack([r.get("alpha_mask", torch.ones(shape)) for r in rows])


def needs_flip_cache(dataset: TrainDataset) -> Callable[[object], bool]:
    def need(item) -> bool:
        return dataset.scan.datasets[item.dataset].subsets[item.subset].spec.flip_aug
    return need


def needs_mask_cache(scan: ScanResult) -> Callable[[object], bool]:
    """Whether an item's latents are cached with its loss mask (its subset has alpha_mask or a mask folder)."""
    def need(item) -> bool:
        return scan.datasets[item.dataset].subsets[item.subset].spec.masked
    return need
