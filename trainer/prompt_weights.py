"""Prompt-weight syntax of AUTOMATIC1111 and Kohya's --weighted_captions: text → (text, weight) runs.

* ``(word)`` multiplies the weight of ``word`` by 1.1, ``[word]`` divides it by 1.1; they nest.
* ``(word:1.3)`` multiplies by 1.3 (only round brackets take a number).
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters.
* As in A1111 (and sd-scripts' copy of its parser): a bracket that never closes weights everything after it,
  a closing bracket with nothing open is literal text, a ``:`` not followed by a number and ``)`` is literal.

Torch-free: the tokenizer (trainer/models/text.py) and caption shuffling (trainer/data/captions.py) use it.
"""
from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1
# one token of the syntax per match; group 1 is the number of a "(text:number)" close
_ATTENTION = re.compile(r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\ |
    \( | \[ | :\s*([+-]?[.\d]+)\s*\) | \) | \] |
    [^\\()\[\]:]+ | :
""", re.X)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Runs of text with their weight, neighbours of equal weight merged; [("", 1.0)] for an empty text.

    >>> parse_weights("a (red:1.5) [hat]")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('hat', 0.9090909090909091)]
    """
    runs: list[list] = []
    round_open: list[int] = []   # where each still-open bracket's text starts in `runs`
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, number = m.group(0), m.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])  # a lone backslash is dropped, as in A1111
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif number is not None and round_open and _is_number(number):
            scale(round_open.pop(), float(number))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:  # plain text, or syntax that does not apply here (read literally)
            runs.append([token, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[list] = []
    for run in runs:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged] or [("", 1.0)]


def plain_text(text: str) -> str:
    """What the text encoder reads of a weighted caption: the text without the weight syntax."""
    return "".join(t for t, _ in parse_weights(text))


def bracket_spans(text: str) -> list[tuple[int, int]]:
    """(open, close) character positions of each matched, unescaped bracket pair: a weighted group such as
    "(red hair, blue eyes:1.2)" that caption shuffling must keep whole."""
    spans: list[tuple[int, int]] = []
    open_at: dict[str, list[int]] = {"(": [], "[": []}
    closes = {")": "(", "]": "["}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped character is text
            continue
        if ch in open_at:
            open_at[ch].append(i)
        elif ch in closes and open_at[closes[ch]]:
            spans.append((open_at[closes[ch]].pop(), i))
        i += 1
    return spans


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:  # "1.2.3" or ".": A1111 stops with an error; here the text stays literal
        return False
    return True
