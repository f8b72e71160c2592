"""What the data layer reads from a config: Kohya's option names, resolved per subset/dataset.

Code below the config layer reads attributes only (docs/architecture.md), so any object with
Kohya's attribute names works; a missing attribute falls back to the defaults below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config.spec import parse_resolution
from trainer.plan import run_length  # noqa: F401  (re-exported: one parser for all)

# Per-subset defaults (Kohya's, except caption_extension: .txt is what taggers write).
SUBSET_DEFAULTS: dict[str, Any] = {
    "num_repeats": 1,
    "class_tokens": "",
    "caption_extension": ".txt",
    "shuffle_caption": False,
    "keep_tokens": 0,
    "keep_tokens_separator": "",
    "secondary_separator": "",
    "caption_separator": ",",
    "caption_prefix": "",
    "caption_suffix": "",
    "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0.0,
    "flip_aug": False,
    "color_aug": False,
    "random_crop": False,
    "recursive": False,
}
# Per-dataset defaults; the key is the TOML name, the value (config attribute name, default).
DATASET_DEFAULTS: dict[str, tuple[str, Any]] = {
    "resolution": ("resolution", "512"),
    "batch_size": ("train_batch_size", 1),
    "enable_bucket": ("enable_bucket", False),
    "min_bucket_reso": ("min_bucket_reso", 256),
    "max_bucket_reso": ("max_bucket_reso", 1024),
    "bucket_reso_steps": ("bucket_reso_steps", 64),
    "bucket_no_upscale": ("bucket_no_upscale", False),
}


def cfg_get(cfg, name: str, default=None):
    """An attribute of the config, or `default` when it is missing or None (Kohya's None = unset)."""
    value = getattr(cfg, name, None)
    return default if value is None else value


@dataclass(frozen=True)
class CaptionOptions:
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str = ""
    caption_separator: str = ","
    caption_prefix: str = ""
    caption_suffix: str = ""
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0

    @property
    def is_fixed(self) -> bool:
        """True when a caption is the same every epoch (needed for text-encoder output caching)."""
        return not (self.shuffle_caption or self.caption_dropout_rate > 0
                    or self.caption_dropout_every_n_epochs > 0 or self.caption_tag_dropout_rate > 0)


@dataclass
class SubsetSpec:
    """One image folder: Kohya's [[datasets.subsets]] or one N_name folder."""

    image_dir: Path
    num_repeats: int = 1
    class_tokens: str = ""
    is_reg: bool = False
    caption_extension: str = ".txt"
    recursive: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    label: str = ""  # what reports call it: the folder name, e.g. "10_sks dog"


@dataclass
class DatasetSpec:
    """One resolution / batch size / bucket set (Kohya's [[datasets]])."""

    resolution: tuple[int, int] = (512, 512)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    subsets: list[SubsetSpec] = field(default_factory=list)


def lookup(name: str, layers: list[dict], cfg, default):
    """Most specific value wins: TOML layers in order (subset, dataset, general), then the config."""
    for layer in layers:
        if name in layer and layer[name] is not None:
            return layer[name]
    return cfg_get(cfg, name, default)


def subset_values(layers: list[dict], cfg) -> dict[str, Any]:
    return {name: lookup(name, layers, cfg, default) for name, default in SUBSET_DEFAULTS.items()}


def make_subset(image_dir: Path, values: dict[str, Any], *, is_reg: bool, label: str) -> SubsetSpec:
    caption = CaptionOptions(**{k: values[k] for k in CaptionOptions.__dataclass_fields__})
    ext = values["caption_extension"] or ".txt"
    return SubsetSpec(
        image_dir=image_dir, num_repeats=int(values["num_repeats"]), class_tokens=str(values["class_tokens"]),
        is_reg=is_reg, caption_extension=ext if ext.startswith(".") else "." + ext,
        recursive=bool(values["recursive"]), flip_aug=bool(values["flip_aug"]),
        color_aug=bool(values["color_aug"]), random_crop=bool(values["random_crop"]), caption=caption,
        label=label)


def make_dataset_spec(layers: list[dict], cfg) -> DatasetSpec:
    v = {}
    for key, (attr, default) in DATASET_DEFAULTS.items():
        found = next((layer[key] for layer in layers if layer.get(key) is not None), None)
        v[key] = found if found is not None else cfg_get(cfg, attr, default)
    return DatasetSpec(resolution=parse_resolution(v["resolution"]), batch_size=max(1, int(v["batch_size"])),
                       enable_bucket=bool(v["enable_bucket"]), min_bucket_reso=int(v["min_bucket_reso"]),
                       max_bucket_reso=int(v["max_bucket_reso"]), bucket_reso_steps=int(v["bucket_reso_steps"]),
                       bucket_no_upscale=bool(v["bucket_no_upscale"]))


def steps_for(batches_per_epoch: int, cfg) -> tuple[int, int, int]:
    """(steps_per_epoch, epochs, total_steps) the way the trainer counts them (each of num_processes
    takes its share of the batches); max_train_steps > 0 wins."""
    accum = max(1, int(cfg_get(cfg, "gradient_accumulation_steps", 1)))
    processes = max(1, int(cfg_get(cfg, "num_processes", 1) or 1))
    steps_per_epoch = math.ceil(math.ceil(batches_per_epoch / processes) / accum)
    epochs, total = run_length(steps_per_epoch, int(cfg_get(cfg, "epoch", 1) or 1),
                               int(cfg_get(cfg, "max_train_steps", 0) or 0))
    return steps_per_epoch, epochs, total
