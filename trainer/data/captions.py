"""Caption files and Kohya's per-step caption transforms (prefix/suffix, dropout, wildcards, keep/shuffle, token
warm-up, tag dropout)."""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

from trainer.prompt_weights import bracket_spans

from .options import CaptionOptions

# Real Japanese text has kana or runs of kanji; Latin accents mis-read as Shift-JIS give lone kanji.
_KANA = re.compile(r"[\u3040-\u30ff]")
_KANJI_RUN = re.compile(r"[\u4e00-\u9fff]{2}")
_HALFWIDTH_KATAKANA = re.compile(r"[\uff61-\uff9f]")
_GLUED_TO_LATIN = re.compile(r"[A-Za-z][\u3040-\u9fff]|[\u3040-\u9fff][A-Za-z]")
# The text encoder sees at most max_token_length (225) tokens, ~1000 characters of real text; a CLIP token
# is rarely over 16 characters, so the cut never changes what is trained, while a 10 MB caption was
# tokenized again at every step (minutes a step, gigabytes of memory).
MAX_CAPTION_CHARS = 225 * 16
WILDCARD = re.compile(r"\{([^}]+)\}")  # {red|blue|green}


def caption_path(image: Path, extension: str) -> Path:
    return image.with_name(image.stem + extension)


def read_caption(path: Path, all_lines: bool = False) -> tuple[str, str | None]:
    """The first non-empty line of a caption file (with `all_lines`, enable_wildcard: every non-empty line,
    joined by newlines), and a warning when it was not UTF-8.

    Kohya errors on non-UTF-8 captions; Windows Notepad still writes ANSI (cp1252) or Shift-JIS,
    so decode with a guess and tell the user instead.
    """
    data = path.read_bytes()
    text, warning = decode_caption_bytes(data)
    if warning:
        warning = f"{warning}; re-save it as UTF-8 to be sure the caption is read as you wrote it"
    lines = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if len(line) > MAX_CAPTION_CHARS:
            cut = (f"has a line {len(line):,} characters long; only its first {MAX_CAPTION_CHARS} are used (the "
                   "text encoder reads at most max_token_length = 225 tokens, about 1000 characters)")
            warning = f"{warning}; it {cut}" if warning else cut
            line = line[:MAX_CAPTION_CHARS]
        lines.append(line)
        if not all_lines:
            break
    return "\n".join(lines), warning


def decode_caption_bytes(data: bytes) -> tuple[str, str | None]:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), None
    codec = _bomless_utf16(data)
    if codec:
        try:
            return data.decode(codec), f"UTF-16 without a byte-order mark; read as {codec.upper()}"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:  # Shift-JIS (Japanese Windows Notepad), only when the result looks like Japanese
        text = data.decode("cp932")
        if ((_KANA.search(text) or _KANJI_RUN.search(text)) and not _HALFWIDTH_KATAKANA.search(text)
                and not _GLUED_TO_LATIN.search(text)):
            return text, "not UTF-8; read as Shift-JIS (cp932)"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "not UTF-8; read as cp1252 (Windows ANSI)"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "not UTF-8; read as latin-1"


def _bomless_utf16(data: bytes) -> str | None:
    """Windows "Unicode" text saved without its BOM: NUL bytes in every other place (the high byte of
    each Latin letter). UTF-8 text never holds NUL."""
    if len(data) < 4 or len(data) % 2 or b"\x00" not in data:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    half = len(data) // 2
    if odd >= half * 0.3 and even == 0:
        return "utf-16-le"
    if even >= half * 0.3 and odd == 0:
        return "utf-16-be"
    return None


def process_caption(caption: str, opts: CaptionOptions, rng: random.Random, epoch: int, step: int | None = None,
                    total_steps: int = 0) -> str:
    """Kohya's BaseDataset.process_caption order: whole-caption dropout -> wildcards -> prefix/suffix ->
    fixed part + token warm-up + shuffle + tag dropout -> join with ", " -> secondary separator -> plain text.

    `epoch` is 1-based as in Kohya, so caption_dropout_every_n_epochs=2 drops in epochs 2, 4, ...
    `step` is the optimizer step (from 0) the caption is trained in, None when not known (no warm-up cut);
    `total_steps` is the run's length, for a token_warmup_step below 1.
    """
    # Draw the dropout number even when the rate is 0 would change other draws; Kohya draws only if > 0.
    dropped = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    every = opts.caption_dropout_every_n_epochs
    if dropped or (every > 0 and epoch % every == 0):
        return ""
    if opts.enable_wildcard:  # before prefix/suffix, so every line gets them (sd-scripts: the first and last)
        caption = draw_wildcards(caption, rng)
    caption = caption.split("\n")[0]
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix
    sep = opts.caption_separator or ","
    marker = opts.keep_tokens_separator
    if opts.shuffle_caption or opts.caption_tag_dropout_rate > 0 or opts.token_warmup_step > 0:
        fixed, flex, fixed_suffix = split_tags(caption, opts)
        flex = warmup_tags(flex, opts, step, total_steps)
        if opts.shuffle_caption:
            rng.shuffle(flex)
        if opts.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)
    elif marker and marker in caption:
        # Kohya leaves the marker in the text when nothing is shuffled; the text encoder should never see it.
        caption = ", ".join(t for t in (p.strip().strip(sep).strip() for p in caption.split(marker)) if t)
    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, sep)
    return caption


def warmup_tags(flex: list[str], opts: CaptionOptions, step: int | None, total_steps: int) -> list[str]:
    """sd-scripts' token warm-up: before step token_warmup_step the shuffle-able tags are cut, in file order (before
    shuffling), to token_warmup_min plus their share of the warm-up done."""
    warmup = token_warmup_steps(opts.token_warmup_step, total_steps)
    if step is None or not warmup or step >= warmup:
        return flex
    keep = math.floor(step * (len(flex) - opts.token_warmup_min) / warmup) + opts.token_warmup_min
    return flex[:max(0, keep)]


def token_warmup_steps(token_warmup_step: float, total_steps: int) -> float:
    """The warm-up's length in steps: below 1 a share of the run, floored (sd-scripts), else the number itself."""
    return math.floor(token_warmup_step * total_steps) if token_warmup_step < 1 else token_warmup_step


def draw_wildcards(caption: str, rng: random.Random) -> str:
    """sd-scripts' enable_wildcard: one line of a multi-line caption, then each {a|b|c} → one of its choices."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    return WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)


def split_tags(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed prefix tags, shuffle-able tags, fixed suffix tags) per keep_tokens / keep_tokens_separator."""
    sep = opts.caption_separator or ","
    marker = opts.keep_tokens_separator
    weighted = opts.weighted_captions
    if marker and marker in caption:
        fixed_part, flex_part = caption.split(marker, 1)
        suffix_part = ""
        if marker in flex_part:
            flex_part, suffix_part = flex_part.split(marker, 1)
        return _tags(fixed_part, sep, weighted), _tags(flex_part, sep, weighted), _tags(suffix_part, sep, weighted)
    tags = [t.strip() for t in split_outside_brackets(caption.strip(), sep, weighted)]
    keep = max(0, opts.keep_tokens)
    return tags[:keep], tags[keep:], []


def _tags(text: str, sep: str, weighted: bool = False) -> list[str]:
    return [t.strip() for t in split_outside_brackets(text, sep, weighted) if t.strip()]


def split_outside_brackets(text: str, sep: str, weighted: bool) -> list[str]:
    """text.split(sep); with weighted captions a separator inside a weighted group such as
    "(red hair, blue eyes:1.2)" does not split it, so shuffling and tag dropout move or drop the group whole
    (sd-scripts splits there and leaves the brackets unbalanced)."""
    spans = bracket_spans(text) if weighted else []
    if not spans:
        return text.split(sep)
    inside = [False] * len(text)
    for start, end in spans:
        inside[start:end + 1] = [True] * (end + 1 - start)
    parts, start, i = [], 0, 0
    while i <= len(text) - len(sep):
        if not inside[i] and text.startswith(sep, i):
            parts.append(text[start:i])
            i = start = i + len(sep)
        else:
            i += 1
    return parts + [text[start:]]
