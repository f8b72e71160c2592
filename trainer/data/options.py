"""What the data layer reads from a config: Kohya's option names, resolved per subset/dataset.

Options come from the typed config (trainer.config) only: their defaults live in the schema.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config.defaults import option
from trainer.config.options_data import RESIZE_INTERPOLATIONS
from trainer.config.spec import parse_face_crop_aug_range, parse_resolution
from trainer.plan import run_length  # noqa: F401  (re-exported: one parser for all)

from .errors import DatasetError

# Subset keys of Kohya's dataset TOML. Most are also options: with no TOML layer setting them the config's value
# (the schema's default unless the user set it) applies; the TOML-only keys default as in sd-scripts.
TOML_ONLY_SUBSET_DEFAULTS: dict[str, Any] = {"num_repeats": 1, "class_tokens": "", "caption_separator": ","}
SUBSET_KEYS: tuple[str, ...] = (
    *TOML_ONLY_SUBSET_DEFAULTS, "caption_extension", "shuffle_caption", "keep_tokens", "keep_tokens_separator",
    "secondary_separator", "caption_prefix", "caption_suffix", "caption_dropout_rate",
    "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "flip_aug", "color_aug", "random_crop", "recursive",
    "alpha_mask", "enable_wildcard", "token_warmup_min", "token_warmup_step", "face_crop_aug_range",
    "resize_interpolation")
# Caption settings of the whole run (sd-scripts' command line only, no dataset TOML key) that subsets still read.
RUN_CAPTION_KEYS: tuple[str, ...] = ("weighted_captions",)
# Per-dataset keys: the TOML name → the option that gives its value when no TOML layer sets it.
DATASET_OPTIONS: dict[str, str] = {
    "resolution": "resolution",
    "batch_size": "train_batch_size",
    "enable_bucket": "enable_bucket",
    "min_bucket_reso": "min_bucket_reso",
    "max_bucket_reso": "max_bucket_reso",
    "bucket_reso_steps": "bucket_reso_steps",
    "bucket_no_upscale": "bucket_no_upscale",
    "validation_split": "validation_split",  # sd-scripts reads both per [[datasets]]
    "validation_seed": "validation_seed",
}


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
    weighted_captions: bool = False  # "(red hair, blue eyes:1.2)" is one tag: its commas do not split it
    enable_wildcard: bool = False  # a random line of the caption file, {a|b} → one of a, b
    token_warmup_min: int = 1  # tags a caption starts with during the token warm-up
    token_warmup_step: float = 0.0  # the warm-up's length in steps; below 1 a share of the run; 0 = off

    @property
    def is_fixed(self) -> bool:
        """True when a caption is the same every epoch (needed for text-encoder output caching)."""
        return not (self.shuffle_caption or self.caption_dropout_rate > 0 or self.enable_wildcard
                    or self.token_warmup_step > 0
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
    face_crop_aug_range: tuple[float, float] | None = None  # crop around the face a file name gives
    resize_interpolation: str = ""  # "" = area when shrinking, Lanczos when enlarging (augment.py)
    alpha_mask: bool = False  # the image's transparency is its loss mask (sd-scripts' subset alpha_mask)
    conditioning_data_dir: Path | None = None  # mask images named like the images (sd-scripts' masked loss folder)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    label: str = ""  # what reports call it: the folder name, e.g. "10_sks dog"

    @property
    def masked(self) -> bool:
        """Whether its images carry a loss mask (from their alpha channel or from a mask folder)."""
        return self.alpha_mask or self.conditioning_data_dir is not None


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
    validation_split: float = 0.0  # fraction of each training subset's images held out (trainer/data/holdout.py)
    validation_seed: int = 0  # 0: the run's seed
    subsets: list[SubsetSpec] = field(default_factory=list)


def lookup(name: str, layers: list[dict], cfg):
    """Most specific value wins: TOML layers in order (subset, dataset, general), then the config."""
    for layer in layers:
        if name in layer and layer[name] is not None:
            return layer[name]
    return TOML_ONLY_SUBSET_DEFAULTS[name] if name in TOML_ONLY_SUBSET_DEFAULTS else option(cfg, name)


def subset_values(layers: list[dict], cfg) -> dict[str, Any]:
    values = {name: lookup(name, layers, cfg) for name in SUBSET_KEYS}
    return values | {name: option(cfg, name) for name in RUN_CAPTION_KEYS}


def make_subset(image_dir: Path, values: dict[str, Any], *, is_reg: bool, label: str) -> SubsetSpec:
    caption = CaptionOptions(**{k: values[k] for k in CaptionOptions.__dataclass_fields__})
    ext = values["caption_extension"] or ".txt"
    return SubsetSpec(
        image_dir=image_dir, num_repeats=int(values["num_repeats"]), class_tokens=str(values["class_tokens"]),
        is_reg=is_reg, caption_extension=ext if ext.startswith(".") else "." + ext,
        recursive=bool(values["recursive"]), flip_aug=bool(values["flip_aug"]),
        color_aug=bool(values["color_aug"]), random_crop=bool(values["random_crop"]),
        face_crop_aug_range=face_crop_range(values["face_crop_aug_range"]),
        resize_interpolation=interpolation(values["resize_interpolation"]),
        alpha_mask=bool(values["alpha_mask"]), caption=caption, label=label)


def interpolation(value) -> str:
    name = str(value or "").strip().lower()
    if name not in RESIZE_INTERPOLATIONS:
        raise DatasetError(f"resize_interpolation {value!r} is not one of {', '.join(RESIZE_INTERPOLATIONS[1:])}",
                           "leave it empty (area when shrinking, Lanczos when enlarging) or name one of those")
    return name


def face_crop_range(value) -> tuple[float, float] | None:
    try:
        return parse_face_crop_aug_range(value)
    except ValueError as exc:
        raise DatasetError(str(exc), 'write it as face_crop_aug_range = [2.0, 4.0] (or "2.0,4.0")') from None


def make_dataset_spec(layers: list[dict], cfg) -> DatasetSpec:
    v = {}
    for key, name in DATASET_OPTIONS.items():
        found = next((layer[key] for layer in layers if layer.get(key) is not None), None)
        v[key] = found if found is not None else option(cfg, name)
    return DatasetSpec(resolution=parse_resolution(v["resolution"]), batch_size=max(1, int(v["batch_size"])),
                       enable_bucket=bool(v["enable_bucket"]), min_bucket_reso=int(v["min_bucket_reso"]),
                       max_bucket_reso=int(v["max_bucket_reso"]), bucket_reso_steps=int(v["bucket_reso_steps"]),
                       bucket_no_upscale=bool(v["bucket_no_upscale"]),
                       validation_split=float(v["validation_split"]), validation_seed=int(v["validation_seed"]))


def steps_for(batches_per_epoch: int, cfg) -> tuple[int, int, int]:
    """(steps_per_epoch, epochs, total_steps) the way the trainer counts them (each of num_processes
    takes its share of the batches); max_train_steps > 0 wins."""
    accum = max(1, int(cfg.gradient_accumulation_steps))
    processes = max(1, int(cfg.num_processes))
    steps_per_epoch = math.ceil(math.ceil(batches_per_epoch / processes) / accum)
    epochs, total = run_length(steps_per_epoch, int(cfg.epoch), int(cfg.max_train_steps))
    return steps_per_epoch, epochs, total
