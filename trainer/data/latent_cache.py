"""VAE latent cache, in memory or on disk, recomputed automatically when it is stale.

An entry stores the VAE posterior (mean and log-variance), not one frozen sample as Kohya does
(sd-scripts #1709): a fresh latent is drawn from it at every use, as uncached training would.
On disk each image gets `<image name>.<W>x<H>.latents.safetensors` beside it (or under
latent_cache_dir), whose header records what it was made from: the image (size + mtime, and a
content hash used when those differ), the bucket, resize and crop, whether flipped latents are in
it, and the VAE (config + weight fingerprint + dtype). Anything different -> re-encoded.

With alpha masks an image is encoded from its colours as stored (not put on white) and its mask is
kept beside the latents, shrunk to the latent grid: such entries are `<name>.<W>x<H>.alpha.latents.safetensors`,
so the two kinds never stand in for each other (and switching masks off and on again re-encodes nothing).
Masks from a mask folder (conditioning_data_dir) are kept the same way in `<name>.<W>x<H>.mask.latents.safetensors`,
whose header also records the mask file (path, size + mtime, content hash): a changed mask is read again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.atomic import atomic_path

from .augment import render_masked
from .images import load_for_training

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".latents.safetensors"
FORMAT = 1
META_KEY = "kohya_studio_latent_cache"


def vae_fingerprint(vae) -> str:
    """Hash of the VAE's config, dtype and a strided sample of every weight tensor (cheap, but any
    retrained or swapped VAE changes it)."""
    h = hashlib.blake2b(digest_size=16)
    config = dict(getattr(vae, "config", {}) or {})
    h.update(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True,
                        default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(vae.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            sample = flat[::step].to("cpu", torch.float64)
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
            h.update(sample.numpy().tobytes())
            h.update(repr(float(flat.to(torch.float64).sum())).encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mask_tag(item, masked: bool) -> str:
    """The cache file's mark of its mask source: the image's alpha channel or a mask image."""
    if not masked:
        return ""
    return ".alpha" if mask_image(item) is None else ".mask"


def mask_image(item) -> Path | None:
    return getattr(item, "mask_path", None)


def _same_file(recorded: dict, path: Path, facts) -> bool:
    """Whether `recorded` (path-less or naming `path`) describes the file now at `path`: same size and mtime, or
    touched but with the same content."""
    if recorded.get("path", str(path)) != str(path):
        return False
    if recorded.get("bytes") == facts.file_size and recorded.get("mtime_ns") == facts.mtime_ns:
        return True
    try:
        return recorded.get("digest") == file_digest(path)
    except OSError:
        return False


@dataclass
class LatentEntry:
    mean: torch.Tensor
    logvar: torch.Tensor
    mean_flipped: torch.Tensor | None = None
    logvar_flipped: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # alpha mask [h, w] at the latent size (mirrored on use when flipped)

    def sample(self, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
        mean, logvar = (self.mean_flipped, self.logvar_flipped) if flip else (self.mean, self.logvar)
        if mean is None:
            raise KeyError("flipped latents were not cached")
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def mask_for(self, flip: bool) -> torch.Tensor:
        if self.mask is None:
            raise KeyError("alpha masks were not cached")
        return torch.flip(self.mask, dims=[-1]) if flip else self.mask

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"mean": self.mean, "logvar": self.logvar}
        if self.mean_flipped is not None:
            out.update(mean_flipped=self.mean_flipped, logvar_flipped=self.logvar_flipped)
        if self.mask is not None:
            out["mask"] = self.mask
        return {k: v.contiguous() for k, v in out.items()}


class LatentCache:
    """Encodes what is missing or stale, then serves entries by (image path, bucket)."""

    def __init__(self, vae, *, to_disk: bool = False, cache_dir: str | Path = "", batch_size: int = 1,
                 on_progress: Callable[[int, int], None] | None = None):
        self.vae = vae
        self.to_disk = to_disk
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = max(1, int(batch_size))
        self.on_progress = on_progress
        self.fingerprint = vae_fingerprint(vae)
        # keyed by (image path, bucket, alpha masked?)
        self.memory: dict[tuple[str, tuple[int, int], bool], LatentEntry] = {}
        self.files: dict[tuple[str, tuple[int, int], bool], Path] = {}
        self.stats = {"total": 0, "reused": 0, "computed": 0, "failed": 0}

    def __getstate__(self):  # loader workers need the entries, not the VAE
        state = dict(self.__dict__)
        state["vae"] = None
        state["on_progress"] = None
        return state

    # ---- where and what -------------------------------------------------------------------------
    def cache_file(self, item, masked: bool = False) -> Path:
        w, h = item.placement.bucket
        name = f"{item.path.name}.{w}x{h}{_mask_tag(item, masked)}{CACHE_SUFFIX}"
        if self.cache_dir is None:
            return item.path.with_name(name)
        folder = item.path.parent.resolve()
        tag = hashlib.blake2b(str(folder).encode("utf-8"), digest_size=4).hexdigest()
        return self.cache_dir / f"{folder.name}-{tag}" / name

    def _key(self, item, digest: str, flipped: bool, masked: bool, mask_digest: str = "") -> dict:
        p = item.placement
        key = {"format": FORMAT, "vae": self.fingerprint, "bucket": list(p.bucket), "resized": list(p.resized),
               "crop": list(p.crop_ltrb), "flip": flipped, "alpha_mask": masked and mask_image(item) is None,
               "image": {"digest": digest, "bytes": item.facts.file_size, "mtime_ns": item.facts.mtime_ns,
                         "size": list(item.facts.size)}}
        if item.resize_interpolation:  # only when set: caches made with the default stay valid
            key["interpolation"] = item.resize_interpolation
        if masked and mask_image(item) is not None:
            key["mask_image"] = {"path": str(item.mask_path), "digest": mask_digest,
                                 "bytes": item.mask_facts.file_size, "mtime_ns": item.mask_facts.mtime_ns}
        return key

    def is_valid(self, item, need_flip: bool, masked: bool = False) -> bool:
        """True when the on-disk entry was made from this image, placement, flip setting, mask setting and VAE."""
        path = self.cache_file(item, masked)
        try:
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
        except Exception:  # missing, partial or foreign file
            return False
        p = item.placement
        if (meta.get("format") != FORMAT or meta.get("vae") != self.fingerprint
                or meta.get("bucket") != list(p.bucket) or meta.get("resized") != list(p.resized)
                or meta.get("crop") != list(p.crop_ltrb) or (need_flip and not meta.get("flip"))
                or bool(meta.get("alpha_mask")) != (masked and mask_image(item) is None)
                or meta.get("interpolation", "") != item.resize_interpolation):
            return False
        if masked and mask_image(item) is not None and not _same_file(meta.get("mask_image", {}), item.mask_path,
                                                                    item.mask_facts):
            return False
        return _same_file(meta.get("image", {}), item.path, item.facts)

    # ---- building -------------------------------------------------------------------------------
    def prepare(self, items: list, need_flip: Callable[[object], bool],
                need_mask: Callable[[object], bool] | None = None) -> dict:
        """Make sure every item has an up-to-date entry. need_flip(item): cache flipped latents too;
        need_mask(item): encode it with its alpha mask (an entry apart from the unmasked one)."""
        need_mask = need_mask or (lambda item: False)
        unique = {}
        for item in items:
            masked = bool(need_mask(item))
            unique.setdefault(self._entry_key(item, masked), (item, masked))
        todo = []
        for key, (item, masked) in unique.items():
            if self.to_disk and self.is_valid(item, need_flip(item), masked):
                self.files[key] = self.cache_file(item, masked)
                self.stats["reused"] += 1
            elif key not in self.memory or (need_flip(item) and self.memory[key].mean_flipped is None):
                todo.append((item, masked))
            else:
                self.stats["reused"] += 1
        self.stats["total"] = len(unique)
        done = len(unique) - len(todo)
        self._progress(done)
        by_bucket: dict[tuple[int, int], list] = {}
        for item, masked in sorted(todo, key=lambda pair: (str(pair[0].path), pair[1])):
            by_bucket.setdefault(item.placement.bucket, []).append((item, masked))
        # one VAE call per vae_batch_size images of one bucket size
        chunks = [group[i:i + self.batch_size] for _, group in sorted(by_bucket.items())
                  for i in range(0, len(group), self.batch_size)]
        threads = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:  # decode the next batches while the VAE encodes this one
            ahead = iter(chunks)
            pending = deque((c, pool.submit(self._load_chunk, c)) for c in islice(ahead, threads + 1))
            while pending:
                chunk, future = pending.popleft()
                following = next(ahead, None)
                if following is not None:
                    pending.append((following, pool.submit(self._load_chunk, following)))
                loaded = future.result()
                self.stats["failed"] += len(chunk) - len(loaded)
                if loaded:
                    self._encode_and_store(loaded, need_flip)
                done += len(chunk)
                self._progress(done)
        return dict(self.stats)

    def _load_chunk(self, chunk: list) -> list[tuple]:
        """(item, pixels, digest, mask or None) for each (item, masked) whose image still decodes; a file that
        broke after the scan is left out (the dataset then fills its slot) instead of stopping the run."""
        out = []
        for item, masked in chunk:
            try:
                digest = file_digest(item.path) if self.to_disk else ""
                image, alpha = load_for_training(item.path, masked, mask_image(item))
                pixels, _, mask = render_masked(image, alpha, item.placement,
                                                interpolation=item.resize_interpolation)
                out.append((item, pixels, digest, mask if masked else None))
            except Exception as exc:
                log.warning("not caching %s: %s", item.path, exc)
        return out

    def _progress(self, done: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, self.stats["total"])

    def _encode_and_store(self, loaded: list[tuple], need_flip: Callable[[object], bool]) -> None:
        batch = [item for item, _, _, _ in loaded]
        plain = torch.stack([pixels for _, pixels, _, _ in loaded])
        mean, logvar = self._encode(plain)
        flip_rows = [i for i, it in enumerate(batch) if need_flip(it)]
        fmean = flogvar = None
        if flip_rows:
            flipped = torch.flip(plain[flip_rows], dims=[3])  # the crop is centred, so mirroring commutes
            fmean, flogvar = self._encode(flipped)
        for i, (item, _, digest, mask) in enumerate(loaded):
            entry = LatentEntry(mean[i].clone(), logvar[i].clone())
            if i in flip_rows:
                j = flip_rows.index(i)
                entry.mean_flipped, entry.logvar_flipped = fmean[j].clone(), flogvar[j].clone()
            if mask is not None:  # the loss needs it at the latent size only: 1/64 of the pixels to keep
                entry.mask = F.interpolate(mask[None, None], size=tuple(mean.shape[-2:]), mode="area")[0, 0]
            self._store(item, entry, digest)
            self.stats["computed"] += 1

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = next(self.vae.parameters())
        dist = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        return dist.mean.float().cpu(), dist.logvar.float().cpu()

    def _store(self, item, entry: LatentEntry, digest: str) -> None:
        masked = entry.mask is not None
        key = self._entry_key(item, masked)
        if not self.to_disk:
            self.memory[key] = entry
            return
        path = self.cache_file(item, masked)
        mask_digest = file_digest(item.mask_path) if masked and mask_image(item) is not None else ""
        meta = {META_KEY: json.dumps(self._key(item, digest, entry.mean_flipped is not None, masked, mask_digest))}
        with atomic_path(path) as tmp:  # a crash never leaves a half-written cache file
            save_file(entry.tensors(), str(tmp), metadata=meta)
        self.files[key] = path

    # ---- serving --------------------------------------------------------------------------------
    @staticmethod
    def _entry_key(item, masked: bool) -> tuple[str, tuple[int, int], bool]:
        return str(item.path), item.placement.bucket, bool(masked)

    def get(self, item, masked: bool = False) -> LatentEntry:
        key = self._entry_key(item, masked)
        if key in self.memory:
            return self.memory[key]
        tensors = load_file(str(self.files[key]))
        return LatentEntry(tensors["mean"], tensors["logvar"], tensors.get("mean_flipped"),
                           tensors.get("logvar_flipped"), tensors.get("mask"))

    def has(self, item, masked: bool = False) -> bool:
        key = self._entry_key(item, masked)
        return key in self.memory or key in self.files

