"""From a decoded image to the training tensor: resize, crop to the bucket, flip, colour jitter."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import Placement


def render(image: Image.Image, placement: Placement, *, flip: bool = False, random_crop: bool = False,
           color_aug: bool = False, rng: random.Random | None = None) -> tuple[torch.Tensor, tuple]:
    """RGB image -> float tensor [3, H, W] in [-1, 1] at the bucket size, and the crop (l, t, r, b) used
    (in resized-image coordinates, mirrored when flipped, as SDXL's crop conditioning expects)."""
    rng = rng or random.Random(0)
    if image.size != placement.resized:
        upscale = placement.resized[0] > image.size[0]
        # Area averaging when shrinking (Kohya uses cv2 INTER_AREA), Lanczos when enlarging (as Kohya).
        method = Image.Resampling.LANCZOS if upscale else Image.Resampling.BOX
        image = image.resize(placement.resized, method)
    left, top, right, bottom = placement.crop_ltrb
    if random_crop:
        bw, bh = placement.bucket
        left = rng.randint(0, placement.resized[0] - bw)
        top = rng.randint(0, placement.resized[1] - bh)
        right, bottom = left + bw, top + bh
    image = image.crop((left, top, right, bottom))
    crop = (left, top, right, bottom)
    if flip:
        image = ImageOps.mirror(image)
        width = placement.resized[0]
        crop = (width - right, top, width - left, bottom)
    array = np.asarray(image, dtype=np.float32)
    if color_aug:
        array = color_jitter(array, rng)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1) / 127.5 - 1.0
    return tensor, crop


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
