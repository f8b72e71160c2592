"""Kohya's long-caption tokenisation: max_token_length 150/225 -> 2/3 chunks of BOS + 75 tokens + EOS.

The trainer encodes each 77-token chunk separately and concatenates the hidden states.
"""
from __future__ import annotations

import torch


def tokenize_long(tokenizer, captions: list[str], max_token_length: int | None = 75) -> torch.Tensor:
    """input_ids [B, n_chunks * 77] with n_chunks = max_token_length / 75 (None -> 75 -> one chunk)."""
    max_token_length = int(max_token_length or 75)
    if max_token_length not in (75, 150, 225):
        raise ValueError(f"max_token_length {max_token_length} must be 75, 150 or 225")
    model_max = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if model_max > 1000:  # a tokenizer saved without its limit reports a huge sentinel
        model_max = 77
    body = model_max - 2  # 75 tokens between BOS and EOS
    total = max_token_length + 2
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=total,
                    return_tensors="pt").input_ids
    if total <= model_max:
        return ids
    pad_is_eos = tokenizer.pad_token_id == tokenizer.eos_token_id
    chunks = []
    for start in range(1, total - model_max + 2, body):
        chunk = torch.cat([ids[:, :1], ids[:, start:start + body], ids[:, -1:]], dim=1)
        if not pad_is_eos:  # SD2 / SDXL tokenizers pad with "!": keep every chunk ending in EOS
            last_real = (chunk[:, -2] != tokenizer.eos_token_id) & (chunk[:, -2] != tokenizer.pad_token_id)
            chunk[last_real, -1] = tokenizer.eos_token_id
            empty = chunk[:, 1] == tokenizer.pad_token_id  # BOS PAD ... -> BOS EOS PAD ...
            chunk[empty, 1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return torch.cat(chunks, dim=1)
