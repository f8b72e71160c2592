"""From a decoded image to the training tensor: resize, crop to the bucket, flip, colour jitter."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps

from trainer.config.options_data import RESIZE_INTERPOLATIONS

from .buckets import Placement

# sd-scripts' resize_interpolation names → PIL filters (area: PIL's box filter, cv2 INTER_AREA's equivalent)
RESAMPLING = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
              "bilinear": Image.Resampling.BILINEAR, "linear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC, "cubic": Image.Resampling.BICUBIC,
              "area": Image.Resampling.BOX, "box": Image.Resampling.BOX}
assert set(RESAMPLING) == set(RESIZE_INTERPOLATIONS) - {""}, "a resize_interpolation without a filter"


def render(image: Image.Image, placement: Placement, *, flip: bool = False, random_crop: bool = False,
           color_aug: bool = False, rng: random.Random | None = None, interpolation: str = ""
           ) -> tuple[torch.Tensor, tuple]:
    """RGB image -> float tensor [3, H, W] in [-1, 1] at the bucket size, and the crop (l, t, r, b) used
    (in resized-image coordinates, mirrored when flipped, as SDXL's crop conditioning expects)."""
    tensor, crop, _ = render_masked(image, None, placement, flip=flip, random_crop=random_crop,
                                    color_aug=color_aug, rng=rng, interpolation=interpolation)
    return tensor, crop


def render_masked(image: Image.Image, alpha: Image.Image | None, placement: Placement, *, flip: bool = False,
                  random_crop: bool = False, color_aug: bool = False, rng: random.Random | None = None,
                  interpolation: str = "") -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """`render`, plus the alpha channel ("L", or None: opaque) as a loss mask [H, W] in 0..1 that went
    through the same resize, crop and flip as the pixels (colour jitter leaves it alone). `interpolation`:
    a RESAMPLING name, "" = area when shrinking, Lanczos when enlarging."""
    rng = rng or random.Random(0)
    left, top, right, bottom = placement.crop_ltrb
    if random_crop:
        bw, bh = placement.bucket
        left = rng.randint(0, placement.resized[0] - bw)
        top = rng.randint(0, placement.resized[1] - bh)
        right, bottom = left + bw, top + bh
    crop = (left, top, right, bottom)
    image = _place(image, placement, crop, flip, interpolation)
    if flip:
        width = placement.resized[0]
        crop = (width - right, top, width - left, bottom)
    array = np.asarray(image, dtype=np.float32)
    if color_aug:
        array = color_jitter(array, rng)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1) / 127.5 - 1.0
    if alpha is None:
        return tensor, crop, torch.ones(tensor.shape[1:])
    mask = np.asarray(_place(alpha, placement, (left, top, right, bottom), flip, interpolation),
                      dtype=np.float32) / 255.0
    return tensor, crop, torch.from_numpy(np.ascontiguousarray(mask))


def _place(image: Image.Image, placement: Placement, box: tuple, flip: bool, interpolation: str = ""
           ) -> Image.Image:
    """Resize to the placement, cut out `box` (resized-image coordinates), mirror when flipped."""
    if image.size != placement.resized:
        upscale = placement.resized[0] > image.size[0]
        # Area averaging when shrinking (Kohya uses cv2 INTER_AREA), Lanczos when enlarging (as Kohya).
        method = RESAMPLING[interpolation or ("lanczos" if upscale else "area")]
        image = image.resize(placement.resized, method)
    image = image.crop(box)
    return ImageOps.mirror(image) if flip else image


def color_jitter(array: np.ndarray, rng: random.Random) -> np.ndarray:
    """Kohya's color_aug intent, done on normalised values: a hue rotation of up to +-16 degrees or a
    gamma of 0.95-1.05, each with probability 1/3 (Kohya applies its gamma to 0-255 values, which is a
    much stronger brightness change; see sd_scripts.md section 9)."""
    choice = rng.random()
    if choice < 1 / 3:
        hsv = np.asarray(Image.fromarray(array.astype(np.uint8)).convert("HSV"), dtype=np.int16)
        shift = int(round(rng.uniform(-16, 16) / 360 * 255))
        hsv[..., 0] = (hsv[..., 0] + shift) % 256
        return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), dtype=np.float32)
    if choice < 2 / 3:
        gamma = rng.uniform(0.95, 1.05)
        return (np.clip(array / 255.0, 0.0, 1.0) ** gamma) * 255.0
    return array
