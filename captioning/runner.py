"""The loop every captioner shares: find images, keep existing captions, decode in parallel, infer in
batches, write atomically, report progress and per-file problems."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .images import batched, find_images, iter_prepared
from .results import CaptionRun
from .writer import caption_path, check_mode, normalize_extension, read_caption, write_caption

ProgressFn = Callable[[int, int, str], None]  # (done, total, current image path)
# setup(run) -> (prepare(path) -> model input, infer(list of inputs) -> list of captions, batch size);
# called only when some image needs a caption, so keeping every caption never loads a model.
SetupFn = Callable[[CaptionRun], tuple[Callable[[Path], Any], Callable[[list], list], int]]


def caption_folder(
    folder: str | os.PathLike,
    setup: SetupFn,
    *,
    caption_extension: str = ".txt",
    existing: str = "skip",
    separator: str = ", ",
    recursive: bool = False,
    batch_size: int = 1,
    workers: int = 2,
    progress: ProgressFn | None = None,
) -> CaptionRun:
    check_mode(existing)
    caption_extension = normalize_extension(caption_extension)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    images = find_images(folder, recursive)
    run = CaptionRun(str(folder), total=len(images))
    todo = []
    for img in images:
        cap = caption_path(img, caption_extension)
        if existing == "skip" and cap.exists():
            run.record(img, "skipped", read_caption(cap))
        else:
            todo.append(img)
    done = len(images) - len(todo)
    if progress:
        progress(done, len(images), "")
    if not todo:
        return run.finish()
    prepare, infer, batch_size = setup(run)
    loader = iter_prepared(todo, prepare, workers=workers, prefetch=max(4, 2 * batch_size))
    for good, bad in batched(loader, batch_size):
        for item in bad:
            run.problem(item.path, item.error)
        if good:
            for item, caption in zip(good, infer([g.value for g in good])):
                if not (caption if isinstance(caption, list) else caption.strip()):
                    # an empty caption file stops sd-scripts; leave the image uncaptioned and say so
                    run.problem(item.path, "empty caption (no tag passed the thresholds); nothing written")
                    continue
                status, text = write_caption(item.path, caption, caption_extension, existing, separator)
                run.record(item.path, status, text)
                if isinstance(caption, list):
                    run.tag_frequency.update(caption)  # what the model found, as kohya counts it
        done += len(good) + len(bad)
        if progress:
            progress(done, len(images), str((good or bad)[-1].path))
    return run.finish()
