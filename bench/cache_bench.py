"""Latent-cache throughput vs a bare VAE forward, and loader time per batch (CPU, tiny VAE).

    .venv/bin/python bench/cache_bench.py [--images 48] [--vae-batch 4] [--threads 2] [--rounds 3]

"bare VAE" encodes pixel tensors already decoded and resized in memory: the floor any cache pays.
"cache" runs LatentCache.prepare from the image files: decode, EXIF, resize/crop, encode, store
(and for disk: hash, write atomically). "reuse" is a second disk run with nothing changed.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import config_for  # noqa: E402
from trainer.data import scan_dataset  # noqa: E402
from trainer.train.setup import build_data, cache_latents  # noqa: E402  (the trainer's one data path)
from trainer.data.augment import render  # noqa: E402
from trainer.data.images import load_rgb  # noqa: E402
from trainer.data.latent_cache import LatentCache  # noqa: E402


def make_vae():
    try:
        from trainer.models.tiny import build_tiny_components
        return build_tiny_components("sd1")["vae"], "trainer.models.tiny sd1 VAE"
    except Exception:
        from diffusers import AutoencoderKL
        torch.manual_seed(0)
        vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        return vae.eval(), "diffusers AutoencoderKL (8,16)"


def make_dataset(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    sizes = [(320, 240), (240, 320), (256, 256)]
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        folder = root / "images" / "2_bench concept"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
        (folder / f"{i:04d}.txt").write_text("bench, tag a, tag b", encoding="utf-8")
    return root / "images"


def cfg_for(train_dir: Path, **kw):
    """A LoRA config with the schema's defaults and this bench's dataset choices."""
    base = dict(train_data_dir=str(train_dir), resolution="128", enable_bucket=True, min_bucket_reso=64,
                max_bucket_reso=256, bucket_reso_steps=64, train_batch_size=4, seed=1, cache_latents=False,
                vae_batch_size=4, shuffle_caption=True)
    return config_for("lora", **{**base, **kw})


def bare_vae(vae, items, batch: int) -> float:
    groups: dict = {}
    for it in items:  # decode and resize outside the timed part
        groups.setdefault(it.placement.bucket, []).append(render(load_rgb(it.path), it.placement)[0])
    start = time.perf_counter()
    with torch.no_grad():
        for tensors in groups.values():
            for i in range(0, len(tensors), batch):
                vae.encode(torch.stack(tensors[i:i + batch])).latent_dist.mean
    return len(items) / (time.perf_counter() - start)


def cache_run(vae, items, batch: int, **kw) -> float:
    cache = LatentCache(vae, batch_size=batch, **kw)
    start = time.perf_counter()
    cache.prepare(items, lambda it: False)
    return len(items) / (time.perf_counter() - start)


class _NoEvents:
    def warning(self, message: str) -> None:
        pass

    def emit(self, type_: str, **fields) -> None:
        pass


def trainer_steps(cfg, vae=None):
    """The trainer's data path (build_data → StepBatches) in one process, latents cached as it caches them."""
    one = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"),
                          main_process_first=contextlib.nullcontext)
    scan, latents, _, steps, need_flip = build_data(cfg, SimpleNamespace(vae=vae), one, _NoEvents())
    if latents is not None:
        cache_latents(latents, scan, need_flip, one)
    return steps


def loader_ms(cfg, vae=None) -> float:
    """Milliseconds per batch over epoch 2 (epoch 1 warms workers and the order memo)."""
    steps = trainer_steps(cfg, vae)
    for _ in steps.epoch(1):
        pass
    start, n = time.perf_counter(), 0
    for group in steps.epoch(2):
        n += len(group)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vae, vae_name = make_vae()
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = make_dataset(Path(tmp), args.images)
        items = scan_dataset(cfg_for(train_dir)).items
        with torch.no_grad():  # warm-up so the first timed call pays no one-off costs
            vae.encode(torch.zeros(1, 3, 128, 128))
        rounds = []  # interleaved rounds, best of each: a shared machine's noise hits all alike
        for r in range(args.rounds):
            cache_dir = Path(tmp) / f"cache{r}"
            rounds.append([
                bare_vae(vae, items, args.vae_batch),
                cache_run(vae, items, args.vae_batch),
                cache_run(vae, items, args.vae_batch, to_disk=True, cache_dir=cache_dir),
                cache_run(vae, items, args.vae_batch, to_disk=True, cache_dir=cache_dir)])
        bare, memory, disk, reuse = (max(col) for col in zip(*rounds))
        cache_dir = str(Path(tmp) / "cache0")
        mem_ms = loader_ms(cfg_for(train_dir, cache_latents=True), vae)
        disk_ms = loader_ms(cfg_for(train_dir, cache_latents=True, cache_latents_to_disk=True,
                                    latent_cache_dir=cache_dir), vae)
        raw0_ms = loader_ms(cfg_for(train_dir, flip_aug=True))
        raw2_ms = loader_ms(cfg_for(train_dir, flip_aug=True, max_data_loader_n_workers=2,
                                    persistent_data_loader_workers=True))
    print(f"Latent cache (CPU): {args.images} JPEGs 320x240/240x320/256x256 -> buckets at 128, "
          f"vae_batch_size {args.vae_batch}, {args.threads} torch threads, {vae_name}, best of {args.rounds}")
    print("| what | images/s | vs bare VAE |")
    print("|---|---:|---:|")
    for name, value in [("bare VAE forward (pre-decoded tensors)", bare), ("cache in memory (from files)", memory),
                        ("cache to disk, first run", disk), ("cache to disk, reuse (nothing changed)", reuse)]:
        print(f"| {name} | {value:.1f} | {value / bare:.2f}x |")
    print("| loader, batch 4 | ms/batch | |")
    print("|---|---:|---:|")
    for name, value in [("latents in memory", mem_ms), ("latents from disk", disk_ms),
                        ("images decoded, 0 workers", raw0_ms), ("images decoded, 2 workers", raw2_ms)]:
        print(f"| {name} | {value:.2f} | |")


if __name__ == "__main__":
    main()
