"""Caption files: where they go, atomic writes, and the skip / overwrite / append policy."""

from __future__ import annotations

from pathlib import Path

from trainer.atomic import atomic_write_text

from .images import IMAGE_EXTENSIONS

EXISTING_MODES = ("skip", "overwrite", "append")


def normalize_extension(caption_extension: str) -> str:
    """'.txt' / 'txt' -> '.txt'; refuses image extensions so a caption can never replace a picture."""
    ext = (caption_extension or "").strip()
    if not ext:
        raise ValueError("caption_extension is empty; use e.g. .txt or .caption")
    if not ext.startswith("."):
        ext = "." + ext
    if ext.lower() in IMAGE_EXTENSIONS or any(c in ext for c in "/\\"):
        raise ValueError(f"caption_extension {caption_extension!r} is not allowed; use e.g. .txt or .caption")
    return ext


def caption_path(image: Path, caption_extension: str) -> Path:
    return image.with_name(image.stem + normalize_extension(caption_extension))


def check_mode(existing: str) -> str:
    if existing not in EXISTING_MODES:
        raise ValueError(f"existing={existing!r}: choose one of {', '.join(EXISTING_MODES)}")
    return existing


def read_caption(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def split_tags(text: str, separator: str = ", ") -> list[str]:
    sep = separator.strip() or separator
    return [t.strip() for t in text.replace("\n", sep).split(sep) if t.strip()]


def _key(tag: str) -> str:
    # 'long_hair', 'Long Hair' and an escaped 'a \(b\)' count as the same tag when de-duplicating
    return tag.replace("\\", "").replace("_", " ").strip().lower()


def merge_tags(existing: list[str], new: list[str]) -> list[str]:
    """Existing tags first, then the new ones not already present."""
    seen = {_key(t) for t in existing}
    out = list(existing)
    for t in new:
        if _key(t) not in seen:
            seen.add(_key(t))
            out.append(t)
    return out


def write_caption(
    image: Path,
    caption: str | list[str],
    caption_extension: str = ".txt",
    existing: str = "skip",
    separator: str = ", ",
) -> tuple[str, str]:
    """Write the caption for `image`; returns (status, final text).

    status: "written" (new file), "overwritten", "appended", "unchanged" (append found nothing new),
    "skipped" (a caption exists and `existing` is "skip").
    Tag lists are joined with `separator`; in append mode a plain-text caption is treated as one
    more separator-split list, so appending never duplicates a tag or a sentence already there.
    """
    check_mode(existing)
    path = caption_path(image, caption_extension)
    new_items = caption if isinstance(caption, list) else split_tags(caption, separator) if existing == "append" else None
    text = separator.join(caption) if isinstance(caption, list) else caption.strip()
    if path.exists():
        if existing == "skip":
            return "skipped", read_caption(path)
        if existing == "append":
            old = split_tags(read_caption(path), separator)
            merged = merge_tags(old, new_items or [])
            if len(merged) == len(old):
                return "unchanged", separator.join(old)
            text = separator.join(merged)
            atomic_write_text(path, text + "\n")
            return "appended", text
        atomic_write_text(path, text + "\n")
        return "overwritten", text
    atomic_write_text(path, text + "\n")
    return "written", text
