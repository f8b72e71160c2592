"""Finding, checking and decoding training images (PIL): every odd file either becomes RGB or a BadImage."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# What PIL calls the format each suffix promises.
_FORMAT_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
_SUFFIX_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif",
                     "TIFF": ".tif", "MPO": ".jpg"}
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (sub-folders too when recursive), de-duplicated and sorted."""
    found = set()
    walker = folder.rglob("*") if recursive else folder.iterdir()
    for p in walker:
        if recursive and any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]):
            continue  # hidden folders (our cache, .git, ...) are not training data
        if is_image_file(p) and p.is_file():
            found.add(p)
    return sorted(found, key=lambda p: str(p))


# Image files that are not trained on: said so in preflight rather than dropped in silence.
_UNTRAINED_IMAGE_TYPES = (".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".jfif")


def ignored_entries(folder: Path, recursive: bool = False) -> list[tuple[Path, str, str]]:
    """(path, why, hint) for each entry that looks like an image but is not read as one."""
    out = []
    walker = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(walker, key=lambda p: str(p)):
        if p.name.startswith(".") or (recursive and any(s.startswith(".") for s in p.relative_to(folder).parts)):
            continue
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS and p.is_symlink() and not p.exists():
            out.append((p, "a symbolic link to a file that does not exist", "fix or delete the link"))
        elif suffix in IMAGE_EXTENSIONS and p.is_dir():
            out.append((p, "a folder named like an image", "rename the folder; images inside it are not read"
                        + ("" if recursive else " (unless recursive is on)")))
        elif suffix in _UNTRAINED_IMAGE_TYPES and p.is_file():
            out.append((p, f"{suffix} images are not trained on", "convert it to PNG or JPEG (one frame of an "
                        f"animation), or leave it out; only {', '.join(IMAGE_EXTENSIONS)} are read"))
    return out


@dataclass(frozen=True)
class ImageFacts:
    size: tuple[int, int]  # (width, height) after EXIF orientation
    file_size: int
    mtime_ns: int
    misnamed: tuple[str, str] | None = None  # (message, hint) when the content is not what the suffix says


def probe_image(path: Path) -> ImageFacts:
    """Fully decode `path` once so that nothing breaks mid-run; BadImage says why it can't be used."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise BadImage(f"cannot be read ({exc.strerror or exc})", "check the file's permissions") from exc
    if stat.st_size == 0:
        raise BadImage("empty file (0 bytes)", "delete it or copy the image again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                misnamed = _check_format(path, im)
                frames = getattr(im, "n_frames", 1)
                if frames > 1:
                    raise BadImage(f"animated image ({frames} frames)", "export a single frame as PNG")
                im.load()  # decodes everything: truncated files fail here, not during training
                width, height = im.size
                orientation = im.getexif().get(0x0112, 1)
    except BadImage:
        raise
    except UnidentifiedImageError as exc:
        raise BadImage("not an image PIL can read (corrupt, or not an image at all)",
                       "open it in an image editor and save it again as PNG or JPEG") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too many pixels (decompression-bomb guard)", "downscale it below ~89 megapixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated (the file ends early)" if "truncated" in str(exc) else f"cannot be decoded ({exc})"
        raise BadImage(reason, "copy the image again or re-save it in an image editor") from exc
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageFacts((width, height), stat.st_size, stat.st_mtime_ns, misnamed)


def _check_format(path: Path, im: Image.Image) -> tuple[str, str] | None:
    """PIL decodes by content, so a PNG named .jpg trains fine here; other tools may not read it (a warning)."""
    expected = _FORMAT_OF_SUFFIX.get(path.suffix.lower())
    actual = "JPEG" if im.format == "MPO" else im.format
    if expected and actual and actual != expected:
        right = _SUFFIX_OF_FORMAT.get(actual, "." + actual.lower())
        return (f"holds {actual} data but is named {path.suffix}; it is read by its content",
                f"rename it to {path.stem}{right} (and its caption file alike) so every tool reads it the same way")
    return None


def load_rgb(path: Path) -> Image.Image:
    """Decode to 8-bit RGB: EXIF orientation applied, transparency composited on white,
    CMYK / 16-bit / greyscale / palette converted."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def load_rgb_and_alpha(path: Path) -> tuple[Image.Image, Image.Image | None]:
    """For alpha masks: the RGB as stored (transparent pixels keep their own colour, as sd-scripts reads
    them) and the alpha channel ("L"), or None when the image has no transparency."""
    with Image.open(path) as im:
        im.load()
        return split_alpha(ImageOps.exif_transpose(im))


def load_masked(path: Path, mask_path: Path | None = None) -> tuple[Image.Image, Image.Image | None]:
    """The image and its loss mask ("L", or None: counts everywhere): from a mask image when the image has one
    (its subset has a mask folder), else from the image's own alpha channel."""
    if mask_path is None:
        return load_rgb_and_alpha(path)
    image = load_rgb(path)
    return image, load_mask_image(mask_path, image.size)


def load_for_training(path: Path, masked: bool, mask_path: Path | None = None
                      ) -> tuple[Image.Image, Image.Image | None]:
    """(RGB, loss mask or None) as a subset trains it: with masks (alpha or a mask folder) the colours as stored
    and the mask, else the image put on white (load_rgb) and no mask."""
    return load_masked(path, mask_path) if masked else (load_rgb(path), None)


def load_mask_image(path: Path, size: tuple[int, int]) -> Image.Image:
    """A mask image's red channel ("L"; a greyscale image's own value), as sd-scripts reads conditioning masks
    (R / 255 after its [-1, 1] round trip), at `size`: a mask saved smaller or larger is stretched to its image so
    that it then goes through the same resize, crop and flip."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # oriented as it is displayed, like the training image
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            im = _high_bit_depth_to_l(im)
        red = im.convert("RGB").getchannel("R")  # RGB(A) drops its alpha; L, 1 and P give their grey value
    return red if red.size == size else red.resize(size, Image.Resampling.BILINEAR)


def split_alpha(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    if "transparency" in im.info and im.mode in ("P", "L", "RGB"):
        im = im.convert("RGBA")  # a palette or colour-key transparency is an alpha channel too
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return to_rgb(im), None


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = _high_bit_depth_to_l(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F" and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    elif im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
        arr = arr / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
