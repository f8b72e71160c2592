"""Aspect-ratio buckets exactly as Kohya builds and assigns them (model_util.make_bucket_resolutions,
train_util.BucketManager), plus the resize-then-crop placement of one image in its bucket."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import BadImage
from .options import DatasetSpec


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[tuple[int, int]]:
    """Every (width, height) with area <= max_reso's area, sides multiples of `divisible` within
    [min_size, max_size], plus the largest square; sorted."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass(frozen=True)
class Placement:
    """Where an image lands: its bucket, the size it is resized to, and the crop (l, t, r, b) of that
    resized image that fills the bucket (centre crop; random_crop moves it per step)."""

    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop_ltrb: tuple[int, int, int, int]
    ar_error: float


class BucketManager:
    """Buckets of one dataset. Without enable_bucket there is one bucket, the resolution itself."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.steps = spec.bucket_reso_steps
        self.max_area = spec.resolution[0] * spec.resolution[1]
        self.predefined: list[tuple[int, int]] = []
        if spec.enable_bucket and not spec.bucket_no_upscale:
            self.predefined = make_bucket_resolutions(spec.resolution, spec.min_bucket_reso,
                                                      spec.max_bucket_reso, spec.bucket_reso_steps)
        self._ratios = np.array([w / h for w, h in self.predefined])

    def place(self, width: int, height: int) -> Placement:
        if not self.spec.enable_bucket:
            return _cover(width, height, self.spec.resolution)
        if self.spec.bucket_no_upscale:
            return self._place_no_upscale(width, height)
        aspect = width / height
        reso = (width, height)
        if reso not in self.predefined:  # an exact size match wins; otherwise the closest aspect ratio
            reso = self.predefined[int(np.abs(self._ratios - aspect).argmin())]
        return _cover(width, height, reso)

    def _place_no_upscale(self, width: int, height: int) -> Placement:
        aspect = width / height
        if width * height > self.max_area:
            # Downscale keeping the aspect ratio; round whichever side gives the smaller ratio error.
            rw = math.sqrt(self.max_area * aspect)
            rh = self.max_area / rw
            bw = self._round(rw)
            bh_w = self._round(bw / aspect)
            bh = self._round(rh)
            bw_h = self._round(bh * aspect)
            if bh_w and bh and abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect):
                resized = (bw, int(bw / aspect + 0.5))
            else:
                resized = (int(bh * aspect + 0.5), bh)
        else:
            resized = (width, height)
        bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        if bucket[0] <= 0 or bucket[1] <= 0:
            raise BadImage(f"{width}x{height} is smaller than one bucket step ({self.steps} px)",
                           f"use images at least {self.steps} px on each side")
        return Placement(bucket, resized, _centre_crop(resized, bucket), bucket[0] / bucket[1] - aspect)

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps


def _cover(width: int, height: int, reso: tuple[int, int]) -> Placement:
    """Scale so the image covers `reso` (by the relatively shorter side), then centre-crop the overflow."""
    aspect = width / height
    if aspect > reso[0] / reso[1]:
        scale = reso[1] / height
    else:
        scale = reso[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    resized = (max(resized[0], reso[0]), max(resized[1], reso[1]))  # rounding must never leave a gap
    return Placement(reso, resized, _centre_crop(resized, reso), reso[0] / reso[1] - aspect)


def _centre_crop(resized: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int, int, int]:
    left = (resized[0] - bucket[0]) // 2
    top = (resized[1] - bucket[1]) // 2
    return (left, top, left + bucket[0], top + bucket[1])


def bucket_key(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}x{bucket[1]}"
