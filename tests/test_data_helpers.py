"""Shared helpers for the dataset tests: a config factory with Kohya's option names, image makers
and a tiny seeded VAE. (No tests here; the name keeps it next to the tests that use it.)"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from trainer.config import CONFIG_TYPES

# what the data stories choose where the schema's default differs (everything else is the user's default)
DATA_CHOICES = dict(resolution="512", enable_bucket=False, max_bucket_reso=1024, bucket_no_upscale=False,
                    cache_latents=False, seed=42, epoch=1,
                    # a writable folder for the preflight's output check; the data stories write no model there
                    output_dir=os.path.join(tempfile.gettempdir(), "kohya-studio-data-stories"))


def make_cfg(training_type: str = "lora", **overrides):
    """A typed config as the trainer gets it. Cross-field rules are not applied: some stories feed the data layer
    what the config page would refuse (cache_latents with random_crop) to see the data layer say so too."""
    return CONFIG_TYPES[training_type](**{**DATA_CHOICES, **overrides})


def make_image(path: Path, size=(64, 64), seed=0, mode="RGB", fmt=None, **save_kwargs) -> Path:
    """A noise image (different seed -> different pixels) saved in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, **save_kwargs)
    return path


def make_concept(root: Path, folder: str, count: int, size=(64, 64), captions: dict | None = None,
                 seed0=0, ext=".png") -> Path:
    """root/folder/img000.png ... with optional {index: caption} written as .txt files."""
    folder_path = root / folder
    for i in range(count):
        make_image(folder_path / f"img{i:03d}{ext}", size, seed=seed0 + i)
        if captions and i in captions:
            (folder_path / f"img{i:03d}.txt").write_text(captions[i], encoding="utf-8")
    return folder_path


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root with (size, mtime_ns, sha1): proves nothing was modified."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def tiny_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         sample_size=64).eval()


class _Events:
    """The events build_data writes, as the trainer's EventWriter would: warnings kept, cache progress forwarded."""

    def __init__(self, on_progress=None):
        self.warnings, self.on_progress = [], on_progress

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def emit(self, type_: str, **fields) -> None:
        if type_ == "cache" and self.on_progress is not None:
            self.on_progress(fields["done"], fields["total"])


def trainer_data(cfg, vae=None, *, scan=None, on_progress=None):
    """(dataset, steps) from the trainer's own data path (trainer.train.setup.build_data → StepBatches,
    latents cached as the trainer caches them), in one CPU process. `steps.epoch(e)` yields optimizer
    steps, each a list of `gradient_accumulation_steps` batches."""
    import contextlib

    import torch

    from trainer.train.setup import build_data, cache_latents

    one_process = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"),
                                  main_process_first=contextlib.nullcontext)
    scan, latents, dataset, steps, need_flip = build_data(cfg, SimpleNamespace(vae=vae), one_process,
                                                          _Events(on_progress), scan=scan)
    if latents is not None:
        cache_latents(latents, scan, need_flip, one_process)
    return dataset, steps


def batches(steps, epoch: int, skip_steps: int = 0) -> list[dict]:
    """Every batch this process trains in `epoch`, in order."""
    return [b for group in steps.epoch(epoch, skip_steps=skip_steps) for b in group]
