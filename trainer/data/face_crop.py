"""sd-scripts' face_crop_aug_range: an image named `name_<cx>_<cy>_<w>_<h>.png` (the face's centre and size in
pixels, as its tools/detect_face_rotate.py names its output) is zoomed by a random scale and cropped around the
face, every step.

The scale puts the crop's short side between low and high face sizes (face_crop_aug_range = "low,high"), never
below filling the bucket and never enlarging more than filling it needs; the crop is centred on the face, nudged
by a few pixels when the range is a range, or moved widely with random_crop (sd-scripts' BaseDataset.crop_target).
sd-scripts crops this way only without buckets (its target is the resolution); here the target is the image's
bucket, which without enable_bucket is the resolution too, so bucketed runs get face crops as well.
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from .buckets import Placement

Face = tuple[int, int, int, int]  # centre x, centre y, width, height


def face_from_name(path: Path) -> Face | None:
    """The face box a file name ends with, or None (any other name: the image is used as it is)."""
    tokens = Path(path).stem.split("_")
    if len(tokens) < 5:
        return None
    try:
        cx, cy, width, height = (int(t) for t in tokens[-4:])
    except ValueError:
        return None
    return (cx, cy, width, height) if cx > 0 and max(width, height) > 0 else None


def face_crop_placement(size: tuple[int, int], face: Face, placement: Placement, aug_range: tuple[float, float],
                        random_crop: bool, rng: random.Random) -> Placement:
    """Where an image of `size` lands in its bucket this step: the scaled size and the crop around the face."""
    width, height = size
    bw, bh = placement.bucket
    cx, cy, fw, fh = face
    face_size = max(fw, fh)
    short = min(bw, bh)
    cover = max(bw / width, bh / height)  # the smallest scale that still fills the bucket
    ceiling = max(cover, 1.0)
    low, high = aug_range
    min_scale = min(ceiling, max(cover, short / (face_size * high)))
    max_scale = min(ceiling, max(min_scale, short / (face_size * low)))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    # round as sd-scripts; never a pixel short of the bucket
    scaled = (max(bw, int(width * scale + 0.5)), max(bh, int(height * scale + 0.5)))
    jitter = low != high and face_size > short // 10 and face_size >= 40
    top = _start(int(cy * scale + 0.5), bh, scaled[1], face_size, jitter, random_crop, rng)
    left = _start(int(cx * scale + 0.5), bw, scaled[0], face_size, jitter, random_crop, rng)
    return replace(placement, resized=scaled, crop_ltrb=(left, top, left + bw, top + bh))


def _start(face_at: int, target: int, length: int, face_size: int, jitter: bool, random_crop: bool,
           rng: random.Random) -> int:
    """The crop's first pixel on one axis: the face centred, moved as sd-scripts moves it, kept inside."""
    start = face_at - target // 2
    if random_crop:  # anywhere from -reach to +reach, most likely near the face (a sum of two draws)
        reach = max(length - face_at, face_at)
        start += rng.randint(0, reach) + rng.randint(0, reach) - reach
    elif jitter:
        start += rng.randint(-face_size // 20, face_size // 20)
    return max(0, min(start, length - target))
