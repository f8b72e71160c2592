"""Group images by aspect ratio (kohya_ss's tools/group_images.py, same arguments), copying only.

Images are sorted by width/height and cut into groups of `group_size`; each group is cropped (or,
with `pad`, padded with black) to the group's mean aspect ratio and resized to the group's largest
size, so a batch of one group needs no bucketing. Results are written as new files
`group-<g>-image-<i><ext>` in `output_folder`, with the same-named caption/other files copied
beside them. The input folder is only read; nothing existing in the output is replaced (a name
already taken is reported as a conflict and left alone).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from .dataset_tools import _copy_file, check_no_overlap
from .images import find_images

SKIPPED_COMPANIONS = (".npz",)  # latent caches belong to the original image size


@dataclass
class GroupResult:
    output_folder: str
    groups: list[list[str]] = field(default_factory=list)  # source images per group, in order
    written: int = 0
    copied: int = 0
    conflicts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(path: Path) -> float:
    with Image.open(path) as img:
        return img.width / img.height


def fit_to_ratio(img: Image.Image, ratio: float, pad: bool) -> Image.Image:
    """Centre-crop (or pad with black) `img` to width/height = `ratio`."""
    own = img.width / img.height
    if pad:
        if own < ratio:
            extra = round(ratio * img.height) - img.width
            return ImageOps.expand(img, border=(extra // 2, 0, extra - extra // 2, 0), fill="black")
        extra = round(img.width / ratio) - img.height
        return ImageOps.expand(img, border=(0, extra // 2, 0, extra - extra // 2), fill="black")
    if own > ratio:
        width = round(ratio * img.height)
        left = (img.width - width) // 2
        return img.crop((left, 0, left + width, img.height))
    height = round(img.width / ratio)
    top = (img.height - height) // 2
    return img.crop((0, top, img.width, top + height))


def _save_new(img: Image.Image, dest: Path) -> bool:
    """Write `img` to `dest` atomically unless a file is there already (then False)."""
    if dest.exists():
        return False
    fd, tmp = tempfile.mkstemp(prefix=".~group", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    try:
        out = img.convert("RGB") if dest.suffix.lower() in (".jpg", ".jpeg") else img
        out.save(tmp, quality=95) if dest.suffix.lower() in (".jpg", ".jpeg", ".webp") else out.save(tmp)
        if dest.exists():
            return False
        os.replace(tmp, dest)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def group_images(input_folder, output_folder, group_size: int, include_subfolders: bool = False,
                 do_not_copy_other_files: bool = False, pad: bool = False, progress=None) -> GroupResult:
    src, dest = Path(input_folder), Path(output_folder)
    if int(group_size) < 1:
        raise ValueError(f"group_size={group_size} must be at least 1")
    images = find_images(src, recursive=include_subfolders)
    if not images:
        raise ValueError(f"{src} holds no images")
    check_no_overlap(src, dest, "input")
    dest.mkdir(parents=True, exist_ok=True)
    ordered = sorted(images, key=lambda p: (_ratio(p), str(p)))
    groups = [ordered[i:i + int(group_size)] for i in range(0, len(ordered), int(group_size))]
    result = GroupResult(str(dest), [[str(p) for p in g] for g in groups])
    done = 0
    for g, group in enumerate(groups, 1):
        ratio = sum(_ratio(p) for p in group) / len(group)
        fitted = []
        for path in group:
            with Image.open(path) as img:
                img.load()
                fitted.append(fit_to_ratio(img, ratio, pad))
        size = (max(i.width for i in fitted), max(i.height for i in fitted))
        for i, (path, img) in enumerate(zip(group, fitted), 1):
            stem = f"group-{g}-image-{i}"
            target = dest / (stem + path.suffix.lower())
            if _save_new(img.resize(size, Image.LANCZOS), target):
                result.written += 1
            else:
                result.conflicts.append(str(target))
            if not do_not_copy_other_files:
                for other in sorted(path.parent.glob(path.stem + ".*")):
                    if other == path or other.suffix.lower() in SKIPPED_COMPANIONS or not other.is_file():
                        continue
                    state = _copy_file(other, dest / (stem + other.suffix))
                    if state == "copied":
                        result.copied += 1
                    elif state == "conflict":
                        result.conflicts.append(str(dest / (stem + other.suffix)))
            done += 1
            if progress:
                progress(done, len(ordered), str(path))
    return result
