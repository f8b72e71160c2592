"""Browser-side file/folder picker confined to allowed roots.

Kohya_ss opened tkinter dialogs on the *server* (softlocks over SSH/RunPod, #3438). Here the
browser lists folders through the server instead, and every path is resolved (symlinks and `..`
included) and refused unless it lies inside one of the allowed roots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 500
MAX_PATH_CHARS = 4096


class PathRefused(ValueError):
    """A path outside the allowed roots (or otherwise unusable)."""


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    is_dir: bool
    size: int

    @property
    def label(self) -> str:
        return f"📁 {self.name}/" if self.is_dir else f"📄 {self.name} ({human_size(self.size)})"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def normalize_roots(roots) -> list[Path]:
    """Resolve roots once; drop duplicates while keeping the order (the first root is the default)."""
    out: list[Path] = []
    for root in roots:
        resolved = Path(os.path.realpath(os.path.expanduser(str(root))))
        if resolved not in out:
            out.append(resolved)
    return out


def is_dir(path: Path) -> bool:
    """Path.is_dir that answers False instead of raising (a name too long for the file system)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine(path: str | os.PathLike, roots: list[Path]) -> Path:
    """Return the real absolute path if it lies inside an allowed root, else raise PathRefused.

    Relative paths are taken relative to the first root. Symlinks are resolved first, so a link
    pointing outside the roots is refused like a `../..` path is.
    """
    if not roots:
        raise PathRefused("No folders are allowed for browsing; start the GUI with --data_root.")
    text = str(path).strip()
    if not text:
        return roots[0]
    if "\x00" in text:
        raise PathRefused("The path contains a NUL character; type or paste it again.")
    if len(text) > MAX_PATH_CHARS:
        raise PathRefused(f"The path is {len(text)} characters long; paths here are at most {MAX_PATH_CHARS}.")
    candidate = Path(os.path.expanduser(text))
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    real = Path(os.path.realpath(candidate))
    if not any(_inside(real, root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PathRefused(
            f"'{text}' is outside the folders this GUI may browse ({allowed}). "
            "Start the GUI with --data_root FOLDER to allow another folder."
        )
    return real


def list_folder(folder: str | os.PathLike, roots: list[Path], *, want: str = "any",
                suffixes: tuple[str, ...] = ()) -> tuple[Path, list[Entry]]:
    """List a folder inside the roots: sub-folders first, then files (when `want` is not "dir").

    Hidden entries are skipped; `suffixes` (e.g. (".json", ".toml")) filters files.
    """
    real = confine(folder, roots)
    try:
        is_dir, exists = real.is_dir(), real.exists()
    except OSError as exc:                      # e.g. a name longer than the file system allows
        raise PathRefused(f"'{folder}' cannot be opened: {exc.strerror or exc}.") from exc
    if not is_dir:
        if exists:
            real = real.parent
        else:
            raise PathRefused(f"'{folder}' does not exist.")
    dirs: list[Entry] = []
    files: list[Entry] = []
    try:
        scan = sorted(os.scandir(real), key=lambda e: e.name.lower())
    except OSError as exc:
        raise PathRefused(f"'{real}' cannot be read: {exc.strerror or exc}.") from exc
    for item in scan:
        if item.name.startswith("."):
            continue
        try:
            is_dir = item.is_dir()
        except OSError:
            continue
        if is_dir:
            dirs.append(Entry(item.name, Path(item.path), True, 0))
        elif want != "dir":
            if suffixes and not item.name.lower().endswith(tuple(s.lower() for s in suffixes)):
                continue
            try:
                size = item.stat().st_size
            except OSError:
                size = 0
            files.append(Entry(item.name, Path(item.path), False, size))
    return real, (dirs + files)[:MAX_ENTRIES]


def parent_within(folder: Path, roots: list[Path]) -> Path:
    """The parent folder, or the folder itself when it is already a root (no climbing out)."""
    if folder in roots:
        return folder
    parent = folder.parent
    try:
        return confine(parent, roots)
    except PathRefused:
        return folder
