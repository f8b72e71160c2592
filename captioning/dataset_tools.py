"""Dataset folder tools: Kohya folder preparation (copy only) and repeat balancing (rename only).

Both refuse to delete anything. Preparation copies into `<dest>/img/<repeats>_<instance> <class>`
and `<dest>/reg/<repeats>_<class>` (+ `log/`, `model/`), refusing overlapping folders (the kohya_ss
tool once deleted users' images, #872/#3436, and once copied itself until the disk filled, #1761).
Balancing proposes new `N_` prefixes, shows them, and renames only when confirmed.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .images import is_image

CAPTION_EXTENSIONS = (".txt", ".caption", ".cap")
ProgressFn = Callable[[int, int, str], None]


def _inside(a: Path, b: Path) -> bool:
    """True when `a` is `b` or lies inside it (after resolving links and '..')."""
    return a == b or b in a.parents


def check_no_overlap(source: Path, dest: Path, what: str) -> None:
    s, d = source.resolve(), dest.resolve()
    if s == d:
        raise ValueError(f"{what} folder and destination are the same folder ({s}); pick another destination")
    if _inside(d, s):
        raise ValueError(f"destination {d} is inside the {what} folder {s}; pick a destination outside it")
    if _inside(s, d):
        raise ValueError(f"{what} folder {s} is inside the destination {d}; pick a destination outside it")


def _copy_file(src: Path, dst: Path) -> str:
    """Copy without ever replacing a different file: 'copied', 'same' (identical already there), 'conflict'."""
    if dst.exists():
        return "same" if filecmp.cmp(src, dst, shallow=False) else "conflict"
    fd, tmp = tempfile.mkstemp(prefix=".~copy", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        if dst.exists():  # appeared meanwhile: keep theirs
            os.unlink(tmp)
            return "conflict"
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return "copied"


@dataclass
class PrepareResult:
    img_dir: str
    reg_dir: str | None
    log_dir: str
    model_dir: str
    copied: int = 0
    already_there: int = 0
    conflicts: list[str] = field(default_factory=list)  # destination files left untouched
    images: int = 0
    reg_images: int = 0

    def config_fields(self) -> dict:
        """What the GUI's "Copy info to respective fields" fills in."""
        return {
            "train_data_dir": self.img_dir,
            "reg_data_dir": self.reg_dir or "",
            "output_dir": self.model_dir,
            "logging_dir": self.log_dir,
        }

    def to_dict(self) -> dict:
        return asdict(self) | {"config_fields": self.config_fields()}


def _files_to_copy(folder: Path, what: str) -> tuple[list[Path], int]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file())  # flat, like a kohya concept folder
    images = [p for p in files if is_image(p)]
    if not images:
        raise ValueError(f"{what} folder {folder} holds no images (.png .jpg .jpeg .webp .bmp)")
    stems = {p.stem for p in images}
    captions = [p for p in files if p.suffix.lower() in CAPTION_EXTENSIONS and p.stem in stems]
    return images + captions, len(images)


def _check_name(value: str, field_name: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{field_name} is empty")
    if any(c in value for c in '/\\:*?"<>|') or value in (".", ".."):
        raise ValueError(f"{field_name} {value!r} cannot be part of a folder name (no / \\ : * ? \" < > |)")
    return value


def prepare_training_folders(
    instance_prompt: str,
    class_prompt: str,
    training_images_dir: str | os.PathLike,
    destination_dir: str | os.PathLike,
    training_repeats: int = 40,
    reg_images_dir: str | os.PathLike | None = None,
    reg_repeats: int = 1,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Copy images (and same-named caption files) into the Kohya layout under `destination_dir`.

    Sources are only read. Files already in the destination are never replaced: identical ones count
    as already there, different ones are listed as conflicts and left alone.
    """
    instance = _check_name(instance_prompt, "instance_prompt")
    cls = class_prompt.strip()
    if cls:
        _check_name(cls, "class_prompt")
    for name, value in (("training_repeats", training_repeats), ("reg_repeats", reg_repeats)):
        if int(value) < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    dest = Path(destination_dir)
    train_src = Path(training_images_dir)
    jobs: list[tuple[Path, Path]] = []
    train_files, n_img = _files_to_copy(train_src, "training images")
    check_no_overlap(train_src, dest, "training images")
    concept = dest / "img" / f"{int(training_repeats)}_{instance}{' ' + cls if cls else ''}"
    jobs += [(p, concept / p.name) for p in train_files]
    reg_dir, n_reg = None, 0
    if reg_images_dir:
        if not cls:
            raise ValueError("class_prompt is needed with regularisation images (folder <repeats>_<class>)")
        reg_src = Path(reg_images_dir)
        reg_files, n_reg = _files_to_copy(reg_src, "regularisation images")
        check_no_overlap(reg_src, dest, "regularisation images")
        reg_dir = dest / "reg"
        jobs += [(p, reg_dir / f"{int(reg_repeats)}_{cls}" / p.name) for p in reg_files]
    result = PrepareResult(
        str(dest / "img"), str(reg_dir) if reg_dir else None, str(dest / "log"), str(dest / "model"),
        images=n_img, reg_images=n_reg,
    )  # fmt: skip
    for sub in (dest / "log", dest / "model"):
        sub.mkdir(parents=True, exist_ok=True)
    for i, (src, dst) in enumerate(jobs, start=1):
        dst.parent.mkdir(parents=True, exist_ok=True)
        status = _copy_file(src, dst)
        if status == "copied":
            result.copied += 1
        elif status == "same":
            result.already_there += 1
        else:
            result.conflicts.append(str(dst))
        if progress:
            progress(i, len(jobs), str(src))
    return result


# ---------------------------------------------------------------------------------------------
# Balancing

_MULT = re.compile(r"^\{(\d+(?:\.\d+)?)\}")
_REPEATS = re.compile(r"^(\d+)_(.+)$")


@dataclass
class BalanceItem:
    folder: str
    new_name: str | None  # None: left as is (see note)
    images: int
    old_repeats: int | None
    new_repeats: int | None
    multiplier: float = 1.0
    note: str = ""

    @property
    def steps_before(self) -> int:
        return self.images * (self.old_repeats or 0)

    @property
    def steps_after(self) -> int:
        return self.images * (self.new_repeats or 0)


@dataclass
class BalancePlan:
    dataset_dir: str
    steps_per_concept: int
    items: list[BalanceItem] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # filled by apply_balance
    problems: list[str] = field(default_factory=list)

    @property
    def renames(self) -> list[BalanceItem]:
        return [i for i in self.items if i.new_name and i.new_name != Path(i.folder).name]

    def to_dict(self) -> dict:
        items = [asdict(i) | {"steps_before": i.steps_before, "steps_after": i.steps_after} for i in self.items]
        return {"dataset_dir": self.dataset_dir, "steps_per_concept": self.steps_per_concept, "items": items,
                "renamed": self.renamed, "problems": self.problems}  # fmt: skip

    def preview(self) -> str:
        lines = [f"Balancing {self.dataset_dir} to ~{self.steps_per_concept} image repeats per concept per epoch:"]
        for i in self.items:
            old = Path(i.folder).name
            if i.new_name and i.new_name != old:
                lines.append(f"  {old!r} -> {i.new_name!r}  ({i.images} images: {i.steps_before} -> {i.steps_after})")
            else:
                lines.append(f"  {old!r} unchanged{': ' + i.note if i.note else ''}")
        return "\n".join(lines + [f"  problem: {p}" for p in self.problems])


def plan_balance(
    dataset_dir: str | os.PathLike, steps_per_concept: int = 1000, rename_unprefixed: bool = False
) -> BalancePlan:
    """Propose `N_name` for every concept folder so images × N ≈ steps_per_concept (× a `{1.5}` prefix).

    Folders without an `N_` prefix are left alone unless `rename_unprefixed` (kohya's "insecure
    folder renaming"). Nothing is touched here; see `apply_balance`.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder not found: {root}")
    if steps_per_concept < 1:
        raise ValueError(f"steps_per_concept={steps_per_concept} must be at least 1")
    plan = BalancePlan(str(root), steps_per_concept)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name, mult = sub.name, 1.0
        m = _MULT.match(name)
        if m:
            mult, name = float(m.group(1)), name[m.end() :]
        images = sum(1 for p in sub.iterdir() if p.is_file() and is_image(p))
        r = _REPEATS.match(name)
        old_repeats, base = (int(r.group(1)), r.group(2)) if r else (None, name)
        item = BalanceItem(str(sub), None, images, old_repeats, None, mult)
        if images == 0:
            item.note = "no images"
        elif r is None and not rename_unprefixed:
            item.note = "no N_ prefix (set rename_unprefixed to include it)"
        else:
            item.new_repeats = max(1, round(steps_per_concept / images * mult))
            item.new_name = f"{item.new_repeats}_{base}"  # the {x} marker is dropped: sd-scripts needs N_ first
        plan.items.append(item)
    targets = [i.new_name for i in plan.renames]
    for i in plan.renames:
        if targets.count(i.new_name) > 1 or (root / i.new_name).exists():
            plan.problems.append(f"{Path(i.folder).name!r} -> {i.new_name!r}: that name is taken; left as is")
            i.new_name, i.new_repeats = None, None
    return plan


def apply_balance(plan: BalancePlan, confirm: bool = False) -> BalancePlan:
    """Rename the folders the plan lists. Refuses without confirm=True; never deletes or overwrites."""
    if not confirm:
        raise PermissionError("Renaming dataset folders needs confirm=True (review plan.preview() first)")
    for item in plan.renames:
        src = Path(item.folder)
        dst = src.with_name(item.new_name)
        if not src.is_dir():
            plan.problems.append(f"{src} is gone since the plan was made; skipped")
        elif dst.exists():
            plan.problems.append(f"{dst} already exists; {src.name!r} left as is")
        else:
            src.rename(dst)
            plan.renamed.append((str(src), str(dst)))
    return plan
