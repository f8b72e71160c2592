"""One finding about a config, a dataset or a model, on its way to the user (CLI, events, the page).

Config rules (trainer/config/rules.py, paths.py), dataset checks (trainer/data/scan.py, preflight.py)
and the page's model check (kohya_gui/modelcheck.py) all report this one type, so the page renders
one shape: the level, what is wrong, how to fix it, and where (the option to mark, the file).
No imports beyond the standard library: every floor, the GUI included, may use it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

LEVELS = ("error", "warning", "skipped")  # error: cannot start; skipped: a file left out; warning: a note


@dataclass(frozen=True)
class Problem:
    level: str
    message: str
    hint: str = ""
    path: str = ""   # the file or folder it is about, when there is one
    field: str = ""  # the option to fix, when there is one (the page marks that field)

    @classmethod
    def at(cls, field: str, message: str, level: str = "error", hint: str = "") -> "Problem":
        """A problem with one option (the config rules' form: the message names the fix)."""
        return cls(level, message, hint, field=field)

    @property
    def is_error(self) -> bool:
        return self.level == "error"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, default_level: str = "error") -> "Problem":
        """Back from JSON (the preflight subprocess); `severity` is the older name of `level`."""
        return cls(str(raw.get("level") or raw.get("severity") or default_level), str(raw.get("message", "")),
                   str(raw.get("hint") or ""), str(raw.get("path") or ""), str(raw.get("field") or ""))

    def __str__(self) -> str:
        where = self.path or self.field
        return (f"{where}: " if where else "") + self.message + (f" — {self.hint}" if self.hint else "")
