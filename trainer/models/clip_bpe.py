"""CLIP byte-level BPE vocabularies written as Hugging Face tokenizer folders.

CLIP's tokenizer is fully described by an ordered list of BPE merges: the vocabulary is the 256
byte symbols, the same symbols with the end-of-word marker ``</w>``, one entry per merge, then
``<|startoftext|>`` and ``<|endoftext|>``.  That lets us build the real SD tokenizers offline from
open_clip's ``bpe_simple_vocab_16e6.txt.gz`` and generate small vocabularies for tiny test models.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

from trainer.atomic import atomic_write_text

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# openai/clip-vit-large-patch14 uses 49152 - 256 - 2 merges of the open_clip file.
CLIP_NUM_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable unicode table of GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """A deterministic, minimal BPE learner (most frequent pair, ties by sort order)."""
    byte_map = bytes_to_unicode()
    corpus = Counter()
    for w in words:
        chars = [byte_map[b] for b in w.lower().encode("utf-8")]
        if chars:
            corpus[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, freq in corpus.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, freq in corpus.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        corpus = merged
    return merges


def read_open_clip_merges(path: Path) -> list[tuple[str, str]]:
    """The merges CLIP uses, read from open_clip's ``bpe_simple_vocab_16e6.txt.gz``."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    return [tuple(line.split()) for line in lines[1 : CLIP_NUM_MERGES + 1]]  # type: ignore[misc]


def write_tokenizer_folder(merges: list[tuple[str, str]], out: Path, *, pad_token: str = EOS,
                           model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json (atomic files).

    ``pad_token`` is ``<|endoftext|>`` for openai CLIP-L (SD1, SDXL TE1) and ``!`` for the
    OpenCLIP tokenizers of SD2 and SDXL TE2, as in the published model repos.
    """
    out.mkdir(parents=True, exist_ok=True)
    vocab = vocab_from_merges(merges)
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    atomic_write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(out / "merges.txt", "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special, indent=2))
    return out

