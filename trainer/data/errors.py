"""Dataset errors: fatal problems, skipped files and warnings (trainer.problems.Problem), each with a fix."""
from __future__ import annotations

from trainer.problems import Problem

# The layout every folder error shows: the seed's own example.
EXPECTED_LAYOUT = """\
Expected layout (train_data_dir points at the parent folder):
  dataset/images/                 <- train_data_dir
    1_character_name/             <- <repeats>_<name>: repeats >= 1, name = class/instance tokens
      image001.png
      image001.txt                <- optional caption (caption_extension)
    10_other concept/
      ..."""


class DatasetError(ValueError):
    """The dataset cannot be used as given. Carries every fatal problem, not only the first."""

    def __init__(self, problems: list[Problem] | str, hint: str = ""):
        if isinstance(problems, str):
            problems = [Problem("error", problems, hint)]
        self.problems = problems
        self.hint = "; ".join(p.hint for p in problems if p.hint)
        lines = [str(p).replace("\n" + EXPECTED_LAYOUT, "") for p in problems]
        if any(EXPECTED_LAYOUT in p.hint for p in problems):
            lines.append(EXPECTED_LAYOUT)  # once, however many folders are wrong
        super().__init__("\n".join(lines))


class BadImage(Exception):
    """An image file that cannot be used; `reason` and `hint` end up in the preflight report."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
