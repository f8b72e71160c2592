"""Turning a WD14 tagger's probabilities into a caption: thresholds, MCut, ordering, clean-up.

Option names follow kohya's `tag_images_by_wd14_tagger.py`; where kohya and the model author's
reference app (SmilingWolf/wd-tagger) differ, the choice is documented on the option.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATING, GENERAL, CHARACTER = 9, 0, 4
# Tags made of punctuation whose underscore is part of the face (SmilingWolf's list).
KAOMOJIS = frozenset(
    "0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split()
)


@dataclass(frozen=True)
class Labels:
    names: list[str]
    categories: np.ndarray  # int, one per model output

    def index(self, category: int) -> np.ndarray:
        return np.flatnonzero(self.categories == category)


def load_labels(csv_path: str | os.PathLike) -> Labels:
    """Read `selected_tags.csv` (tag_id,name,category,count) as real CSV; row i = model output i."""
    path = Path(csv_path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"name", "category"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {sorted(missing)}; expected the tagger's selected_tags.csv "
                "with header tag_id,name,category,count"
            )
        names, cats = [], []
        for line, row in enumerate(reader, start=2):
            try:
                cats.append(int(row["category"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: category {row['category']!r} is not a number") from None
            names.append(row["name"])
    if not names:
        raise ValueError(f"{path} has no tags")
    return Labels(names, np.asarray(cats, dtype=np.int64))


def parse_list(value: str | list[str] | None, separator: str = ", ") -> list[str]:
    """'a, b' -> ['a', 'b'] split on the caption separator (stripped), as kohya does."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v.strip() for v in value if v.strip()]
    sep = separator.strip() or ","
    return [v.strip() for v in value.split(sep) if v.strip()]


def parse_replacements(spec: str | None) -> list[tuple[str, str]]:
    r"""'src,dst;src2,dst2' -> pairs; '\,' and '\;' stand for literal commas/semicolons."""
    if not spec:
        return []
    comma, semi = "\x00", "\x01"
    spec = spec.replace("\\,", comma).replace("\\;", semi)
    pairs = []
    for item in spec.split(";"):
        if not item.strip():
            continue
        parts = item.split(",")
        if len(parts) != 2:
            raise ValueError(f"tag_replacement item {item!r} must be 'source,replacement' (escape commas as \\,)")
        src, dst = (p.replace(comma, ",").replace(semi, ";").strip() for p in parts)
        pairs.append((src, dst))
    return pairs


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut thresholding (Largeron et al. 2012): midpoint of the largest gap in sorted scores."""
    if probs.size < 2:
        return 0.0
    p = np.sort(probs)[::-1]
    t = int(np.argmax(p[:-1] - p[1:]))
    return float((p[t] + p[t + 1]) / 2)


@dataclass
class TagOptions:
    thresh: float = 0.35  # shared threshold; the two below fall back to it (kohya)
    general_threshold: float | None = None
    character_threshold: float | None = None
    general_mcut_enabled: bool = False  # MCut per image instead of a fixed threshold (v3 models)
    character_mcut_enabled: bool = False  # floored at 0.15 like the reference app
    undesired_tags: list[str] | str = field(default_factory=list)
    always_first_tags: list[str] | str = field(default_factory=list)  # moved to the front if detected
    prefix_tags: list[str] | str = field(default_factory=list)  # always added at the front (trigger words)
    postfix_tags: list[str] | str = field(default_factory=list)  # always added at the end
    character_tags_first: bool = False
    use_rating_tags: bool = False  # argmax rating as the first tag
    use_rating_tags_as_last_tag: bool = False  # ... or as the last tag
    remove_underscore: bool = True
    escape_parentheses: bool = False  # '(' -> '\(' for A1111-style prompt weighting
    tag_replacement: str | None = None
    character_tag_expand: bool = False  # 'name_(series)' -> 'name, series'
    caption_separator: str = ", "
    order: str = "confidence"  # "confidence" (highest first) or "model" (selected_tags.csv order, kohya)

    def __post_init__(self) -> None:
        if self.order not in ("confidence", "model"):
            raise ValueError(f"order={self.order!r}: choose 'confidence' or 'model'")
        if self.use_rating_tags and self.use_rating_tags_as_last_tag:
            raise ValueError("use_rating_tags and use_rating_tags_as_last_tag are exclusive; pick one")
        for name in ("thresh", "general_threshold", "character_threshold"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v:
                raise ValueError(f"{name}={v} must be >= 0 (above 1 turns that category off)")
        self.replacements = parse_replacements(self.tag_replacement)

    def threshold(self, category: int, probs: np.ndarray) -> float:
        if category == GENERAL:
            if self.general_mcut_enabled:
                return mcut_threshold(probs)
            return self.thresh if self.general_threshold is None else self.general_threshold
        if self.character_mcut_enabled:
            return max(0.15, mcut_threshold(probs))
        return self.thresh if self.character_threshold is None else self.character_threshold


def _key(tag: str) -> str:
    return tag.replace("\\", "").replace("_", " ").strip().lower()


def format_tag(name: str, opts: TagOptions) -> str:
    if opts.remove_underscore and name not in KAOMOJIS and len(name) > 3:
        name = name.replace("_", " ")
    return name


def _expand_character(name: str) -> list[str]:
    """'hatsune_miku_(vocaloid)' -> ['hatsune_miku', 'vocaloid'] (kohya's --character_tag_expand)."""
    if name.endswith(")") and "(" in name:
        head, _, series = name.rpartition("(")
        head = head.rstrip("_").rstrip()
        series = series[:-1]
        if head and series:
            return [head, series]
    return [name]


def _picked(probs: np.ndarray, idx: np.ndarray, threshold: float, order: str) -> list[int]:
    chosen = [int(i) for i in idx if probs[i] >= np.float32(threshold)]
    if order == "confidence":
        chosen.sort(key=lambda i: -probs[i])  # stable: ties keep model order
    return chosen


def select_tags(probs: np.ndarray, labels: Labels, opts: TagOptions) -> list[str]:
    """One image's probabilities (sigmoid outputs, index-aligned with `labels`) -> ordered tag list."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)  # compare as the model's float32, like kohya
    if probs.shape[0] != len(labels.names):
        raise ValueError(
            f"the model outputs {probs.shape[0]} scores but selected_tags.csv lists {len(labels.names)} "
            "tags; the two files come from different taggers"
        )
    sep = opts.caption_separator
    undesired = {_key(t) for t in parse_list(opts.undesired_tags, sep)}

    def names_for(ids: list[int], expand: bool) -> list[str]:
        out = []
        for i in ids:
            raw = labels.names[i]
            parts = _expand_character(raw) if expand else [raw]
            out += [format_tag(p, opts) for p in parts]
        return out

    gen_idx, char_idx = labels.index(GENERAL), labels.index(CHARACTER)
    general = names_for(_picked(probs, gen_idx, opts.threshold(GENERAL, probs[gen_idx]), opts.order), False)
    chars = names_for(
        _picked(probs, char_idx, opts.threshold(CHARACTER, probs[char_idx]), opts.order),
        opts.character_tag_expand,
    )
    tags = chars + general if opts.character_tags_first else general + chars

    rating_idx = labels.index(RATING)
    if (opts.use_rating_tags or opts.use_rating_tags_as_last_tag) and rating_idx.size:
        rating = format_tag(labels.names[int(rating_idx[np.argmax(probs[rating_idx])])], opts)
        tags = [rating] + tags if opts.use_rating_tags else tags + [rating]

    tags = [t for t in tags if _key(t) not in undesired]  # before replacement, as kohya does
    for src, dst in opts.replacements:
        tags = [dst if _key(t) == _key(src) else t for t in tags]
    tags = [t for t in tags if t]  # replacing with '' removes a tag

    first = [_key(t) for t in parse_list(opts.always_first_tags, sep)]
    front = [t for k in first for t in tags if _key(t) == k]
    tags = front + [t for t in tags if t not in front]
    tags = parse_list(opts.prefix_tags, sep) + tags + parse_list(opts.postfix_tags, sep)

    if opts.escape_parentheses:
        tags = [escape(t) for t in tags]
    return _dedupe(tags)


def escape(tag: str) -> str:
    """'(' -> '\\(' and ')' -> '\\)' unless already escaped (so appending twice is harmless)."""
    out = []
    for i, c in enumerate(tag):
        if c in "()" and (i == 0 or tag[i - 1] != "\\"):
            out.append("\\")
        out.append(c)
    return "".join(out)


def _dedupe(tags: list[str]) -> list[str]:
    seen, out = set(), []
    for t in tags:
        if _key(t) not in seen:
            seen.add(_key(t))
            out.append(t)
    return out
