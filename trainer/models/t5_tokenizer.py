"""A small T5 (SentencePiece-Unigram-style) tokenizer built offline with the ``tokenizers`` package.

The tiny DiT test models (FLUX, SD3) need a T5 tokenizer without the hub. T5's real tokenizer is a
Unigram model over ``▁``-prefixed pieces with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and an EOS
appended to every sequence; this builds the same structure from a word list and saves it as a
``T5TokenizerFast`` folder (``tokenizer.json`` + configs), which transformers loads like the real one.
"""
from __future__ import annotations

import math
from pathlib import Path

SPECIALS = ("<pad>", "</s>", "<unk>")


def build_t5_tokenizer(words: list[str]):
    """A ``T5TokenizerFast`` whose vocabulary is the specials, ``▁word`` for each word and single characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [(s, 0.0) for s in SPECIALS]
    seen = set(SPECIALS)
    for i, w in enumerate(dict.fromkeys(words)):
        piece = "\u2581" + w
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, -1.0 - math.log(i + 2)))
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789,.!?-'") | {"\u2581"})
    for c in chars:
        if c not in seen:
            seen.add(c)
            pieces.append((c, -20.0))
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)


def write_t5_tokenizer(words: list[str], out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_t5_tokenizer(words).save_pretrained(out)
    return out
