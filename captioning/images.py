"""Finding and loading images for the captioners, with decoding overlapped with inference."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

# Kohya's tagger and sd-scripts accept these (both cases); avif/jxl only with optional plugins.
from trainer.data.images import IMAGE_EXTENSIONS  # one list: what the trainer reads


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (sorted); `recursive` also walks sub-folders."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"Image folder not found: {root}. Check the path.")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; give the folder that holds the images.")
    walker = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in walker if p.is_file() and is_image(p))


def open_rgb_on_white(path: Path) -> Image.Image:
    """Decode fully (so truncated files fail here) and flatten any transparency onto white."""
    with Image.open(path) as img:
        img.load()
        has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        if has_alpha:
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return img.convert("RGB")


@dataclass
class Loaded:
    path: Path
    value: Any = None  # whatever the prepare function returned
    error: str | None = None


def _safe(prepare: Callable[[Path], Any], path: Path) -> Loaded:
    try:
        return Loaded(path, prepare(path))
    except Exception as exc:  # any decode problem is reported per file, never fatal
        return Loaded(path, error=f"cannot read image: {type(exc).__name__}: {exc}")


def iter_prepared(
    paths: Iterable[Path],
    prepare: Callable[[Path], Any],
    workers: int = 2,
    prefetch: int = 8,
) -> Iterator[Loaded]:
    """Yield `prepare(path)` results in order while up to `prefetch` more decode in background threads.

    PIL decoding and numpy work release the GIL, so this overlaps with ONNX/torch inference
    running on the caller's thread.
    """
    paths = list(paths)
    if workers <= 0:
        for p in paths:
            yield _safe(prepare, p)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="caption-load") as pool:
        pending = []
        it = iter(paths)
        for p in it:
            pending.append(pool.submit(_safe, prepare, p))
            if len(pending) >= prefetch:
                break
        while pending:
            fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_safe, prepare, nxt))
            yield fut.result()


def batched(items: Iterator[Loaded], batch_size: int) -> Iterator[tuple[list[Loaded], list[Loaded]]]:
    """Group loaded items into (good batch, failed items) pairs of at most `batch_size` good ones."""
    good: list[Loaded] = []
    bad: list[Loaded] = []
    for item in items:
        (bad if item.error else good).append(item)
        if len(good) >= batch_size:
            yield good, bad
            good, bad = [], []
    if good or bad:
        yield good, bad
