"""Basic captioning: kohya_ss's Utilities ▸ Captioning ▸ Basic Captioning (its tools/caption.py plus the
GUI's add_pre_postfix and find_replace), for the caption files of the images in one folder.

Per caption file, in kohya's order: the Caption text is written where there is no caption (or over it with
`overwrite`), then the prefix/postfix are added, then find/replace. Unlike kohya, prefix and postfix do not
need `overwrite`, and are never added twice (a second click changes nothing); every line of a caption gets
them (the trainer reads the first line; with enable_wildcard each line is an alternative caption).
A file is written only when its text changes, atomically, as UTF-8; a file that is not UTF-8 is left alone
and listed (kohya's find_replace read it with errors="ignore" and wrote the damaged text back).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.atomic import atomic_write_text

from .images import IMAGE_EXTENSIONS, find_images
from .writer import caption_path

Progress = Callable[[int, int, Path], None]
# status of each caption file; the first three are the files this run wrote
STATUSES = ("created", "overwritten", "changed", "unchanged", "no caption", "failed")


@dataclass(frozen=True)
class BasicEdit:
    """What to do to each caption (kohya's form fields, already checked)."""

    caption_text: str = ""
    prefix: str = ""
    postfix: str = ""
    find_text: str = ""
    replace_text: str = ""
    overwrite: bool = False


def check_edit(caption_text=None, prefix=None, postfix=None, find_text=None, replace_text=None,
               overwrite=False) -> BasicEdit:
    """The form's values as a BasicEdit, or a ValueError naming the field to fix."""
    e = BasicEdit((caption_text or "").strip(), (prefix or "").strip(), (postfix or "").strip(), find_text or "",
                  replace_text or "", bool(overwrite))
    if e.replace_text and not e.find_text:
        raise ValueError(f"Replacement text is {e.replace_text!r} but Find text is empty: type the text to "
                         "replace in Find text (or clear Replacement text)")
    if not (e.caption_text or e.prefix or e.postfix or e.find_text):
        raise ValueError("nothing to do: fill Caption text, Prefix, Postfix or Find text")
    return e


def _wordy(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def has_prefix(line: str, prefix: str) -> bool:
    """`line` starts with `prefix` as a whole word: 'sks, 1girl' has 'sks'; 'sksx' does not."""
    if not line.startswith(prefix):
        return False
    rest = line[len(prefix):]
    return not rest or not _wordy(prefix[-1]) or not _wordy(rest[0])


def has_postfix(line: str, postfix: str) -> bool:
    if not line.endswith(postfix):
        return False
    head = line[:len(line) - len(postfix)]
    return not head or not _wordy(postfix[0]) or not _wordy(head[-1])


def add_prefix_postfix(line: str, prefix: str, postfix: str) -> str:
    """kohya's `prefix content postfix` (single spaces), each added only when not already there."""
    if prefix and not has_prefix(line, prefix):
        line = f"{prefix} {line}".strip()
    if postfix and not has_postfix(line, postfix):
        line = f"{line} {postfix}".strip()
    return line


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def edited(original: str | None, e: BasicEdit) -> str | None:
    """The caption after the edit (None: still no caption). `original` is None when there is no file."""
    text = original
    if e.caption_text and (original is None or e.overwrite):
        text = e.caption_text
    if e.prefix or e.postfix:  # as kohya: an image without a caption gets one of prefix + postfix
        text = "\n".join(add_prefix_postfix(ln, e.prefix, e.postfix) for ln in (_lines(text or "") or [""]))
    if e.find_text and text is not None:
        text = text.replace(e.find_text, e.replace_text)
    return None if text is None else "\n".join(_lines(text))


@dataclass
class BasicRun:
    folder: str
    images: int = 0
    counts: Counter = field(default_factory=Counter)  # status -> caption files
    captions: dict[str, str] = field(default_factory=dict)  # caption file -> its text now
    problems: list[dict] = field(default_factory=list)  # {"path", "error"}: files left untouched

    @property
    def written(self) -> int:
        return sum(self.counts[s] for s in STATUSES[:3])

    def report(self) -> str:
        n = self.written
        parts = [f"{self.counts[s]} {s}" for s in STATUSES[:3] if self.counts[s]]
        if self.counts["unchanged"]:
            parts.append(f"{self.counts['unchanged']} already as asked (unchanged)")
        if self.counts["no caption"]:
            parts.append(f"{self.counts['no caption']} image(s) without a caption (fill Caption text to write one)")
        if self.problems:
            parts.append(f"{len(self.problems)} left untouched (listed above)")
        head = f"{n} caption file{'s' if n != 1 else ''} written for {self.images} image(s)"
        return head + (f": {', '.join(parts)}" if parts else "")

    def summary(self) -> str:
        lines = [" | ".join([f"{self.images} image(s) in {self.folder}"]
                            + [f"{s}: {self.counts[s]}" for s in STATUSES if self.counts[s]])]
        return "\n".join(lines + [f"left untouched {p['path']}: {p['error']}" for p in self.problems])

    def to_dict(self) -> dict:
        return {"folder": self.folder, "images": self.images, "counts": {s: self.counts[s] for s in STATUSES},
                "written": self.written, "captions": dict(self.captions), "problems": list(self.problems),
                "report": self.report()}


def _read(path: Path) -> str | None:
    """The caption's text (a BOM is dropped), None when there is no file; UnicodeDecodeError/OSError pass."""
    if not path.exists():
        return None
    return path.read_text(encoding="utf-8-sig")


def _edit_file(path: Path, e: BasicEdit, run: BasicRun) -> None:
    try:
        original = _read(path)
    except UnicodeDecodeError:
        if not (e.overwrite and e.caption_text):  # replacing it whole needs no reading
            run.counts["failed"] += 1
            run.problems.append({"path": str(path), "error": "not UTF-8 text; re-save it as UTF-8 (or tick "
                                 "Overwrite with a Caption text to replace it)"})
            return
        original = ""
    except OSError as exc:
        run.counts["failed"] += 1
        run.problems.append({"path": str(path), "error": f"cannot read: {exc}"})
        return
    text = edited(original, e)
    if text is None:
        run.counts["no caption"] += 1
        return
    if original is not None and text == "\n".join(_lines(original)):
        run.counts["unchanged"] += 1
        run.captions[str(path)] = text
        return
    if not text:  # an empty caption file stops sd-scripts
        run.counts["failed"] += 1
        run.problems.append({"path": str(path), "error": "the caption would be empty after find/replace; kept "
                             "as it was"})
        return
    try:
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        run.counts["failed"] += 1
        run.problems.append({"path": str(path), "error": f"cannot write: {exc}"})
        return
    status = ("created" if original is None else
              "overwritten" if e.overwrite and e.caption_text else "changed")
    run.counts[status] += 1
    run.captions[str(path)] = text


def basic_captions(folder, edit: BasicEdit, caption_extension: str = ".txt", recursive: bool = False,
                   progress: Progress | None = None) -> BasicRun:
    """Apply `edit` to the caption file of every image in `folder` (sub-folders with `recursive`)."""
    images = find_images(folder, recursive)
    if not images:
        where = "" if recursive else " (its sub-folders were not searched: tick Include sub-folders)"
        raise ValueError(f"Image folder {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)})"
                         f"{where}; choose the folder that holds them")
    run = BasicRun(str(folder), images=len(images))
    seen: set[Path] = set()
    for i, image in enumerate(images, 1):
        path = caption_path(image, caption_extension)
        if path not in seen:  # a.png and a.jpg share a.txt: edit it once
            seen.add(path)
            _edit_file(path, e=edit, run=run)
        if progress:
            progress(i, len(images), image)
    return run
