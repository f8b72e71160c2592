"""The structured result every captioning run returns (the GUI lists it; the CLI prints it)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CaptionRun:
    folder: str
    total: int = 0  # images found
    counts: Counter = field(default_factory=Counter)  # status -> number of images
    captions: dict[str, str] = field(default_factory=dict)  # image path -> caption now on disk
    skipped: list[str] = field(default_factory=list)  # images whose existing caption was kept
    problems: list[dict] = field(default_factory=list)  # {"path", "error"} per unreadable image
    warnings: list[str] = field(default_factory=list)
    tag_frequency: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def record(self, image: Path, status: str, text: str) -> None:
        self.counts[status] += 1
        self.captions[str(image)] = text
        if status == "skipped":
            self.skipped.append(str(image))

    def problem(self, image: Path, error: str) -> None:
        self.counts["failed"] += 1
        self.problems.append({"path": str(image), "error": error})

    def finish(self) -> "CaptionRun":
        self.seconds = time.perf_counter() - self._start
        return self

    @property
    def processed(self) -> int:
        """Images that went through the model (skipped ones did not)."""
        return sum(v for k, v in self.counts.items() if k not in ("skipped", "failed"))

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "total": self.total,
            "counts": dict(self.counts),
            "captions": dict(self.captions),
            "skipped": list(self.skipped),
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "tag_frequency": dict(self.tag_frequency.most_common()),
            "written": self.written,
            "report": self.report(),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
        }

    @property
    def written(self) -> int:
        """Caption files created or changed."""
        return sum(self.counts.get(k, 0) for k in ("written", "overwritten", "appended"))

    def report(self, fixes: str = "choose Overwrite or Append") -> str:
        """What the run did, in one sentence — '0 captions written' is never reported as success."""
        n = self.written
        head = f"{n} caption{'s' if n != 1 else ''} written"
        if self.total == 0:
            return (f"{head}: no image files in {self.folder}; choose the folder that holds them (or include "
                    "sub-folders)")
        why = []
        skipped, failed, unchanged = (self.counts.get(k, 0) for k in ("skipped", "failed", "unchanged"))
        if skipped == self.total:
            return f"{head}: all {self.total} images already have one — {fixes} to replace or extend them"
        if skipped:
            why.append(f"{skipped} already had one (kept)")
        if unchanged:
            why.append(f"{unchanged} unchanged (nothing new to append)")
        if failed:
            why.append(f"{failed} failed (listed above)")
        return f"{head} for {self.total} image(s)" + (f"; {', '.join(why)}" if why else "")

    def summary(self, top_tags: int = 20) -> str:
        parts = [f"{self.total} image(s) in {self.folder}"]
        parts += [f"{k}: {v}" for k, v in sorted(self.counts.items())]
        lines = [" | ".join(parts), f"{self.images_per_s:.2f} images/s over {self.seconds:.1f} s"]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"could not read {p['path']}: {p['error']}" for p in self.problems]
        if self.tag_frequency and top_tags:
            lines.append("tag frequency:")
            lines += [f"  {n:5d}  {t}" for t, n in self.tag_frequency.most_common(top_tags)]
        return "\n".join(lines)
