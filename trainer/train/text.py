"""Captions → U-Net conditioning for training, the way sd-scripts builds it.

SD1/SD2: the last hidden state, or with clip_skip N the N-th last layer + the final layer norm.
SDXL: both encoders' penultimate layers concatenated, plus text encoder 2's pooled projection.
Long captions (max_token_length 150/225) are encoded as 77-token chunks and joined (BOS, 75 × n, EOS).
The encoding itself is trainer.models.text's; this module adds the per-caption memo.

When the text encoders are frozen, each caption is encoded once (alone, so the result never depends
on the rest of the batch) and remembered: later steps skip the text-encoder forward entirely.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from trainer.models.text import encode_prompt, tokenize_long

logger = logging.getLogger(__name__)

MEMO_LIMIT_BYTES = 512 * 2**20


class TextConditioner(nn.Module):
    def __init__(self, family: str, text_encoders, tokenizers, clip_skip: int = 1, max_token_length: int = 75,
                 memoize: bool = True, tokenize=None, grad_enabled=None):
        super().__init__()
        self.family = family
        self.encoders = nn.ModuleList(text_encoders)
        self.tokenizers = list(tokenizers)
        self.clip_skip = max(1, int(clip_skip or 1))
        self.max_token_length = int(max_token_length or 75)
        self.memoize = memoize
        self.grad_enabled = grad_enabled  # callable: does the text-encoder forward need gradients now?
        self._tokenize = tokenize  # optional override: captions → list of id tensors, one per encoder
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._memo_bytes = 0
        if family == "sdxl" and self.clip_skip > 1:
            logger.warning("clip_skip is ignored for SDXL (it always uses the penultimate layers)")

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        if self._tokenize is not None:
            return self._tokenize(captions)
        return [tokenize_long(tok, captions, self.max_token_length) for tok in self.tokenizers]

    @property
    def text_encoders(self) -> list[nn.Module]:  # what encode_prompt reads, as on a BaseModel
        return list(self.encoders)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [B, L, D] and (SDXL) pooled embeddings [B, 1280]."""
        return encode_prompt(self, self.tokenize(captions), self.clip_skip)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.memoize:
            grad = self.grad_enabled() if callable(self.grad_enabled) else True
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return self.encode(list(captions))
        for caption in dict.fromkeys(captions):
            if caption not in self._memo:
                if self._memo_bytes > MEMO_LIMIT_BYTES:
                    return self.encode(list(captions))  # too many distinct captions to remember
                with torch.no_grad():
                    hidden, pooled = self.encode([caption])
                self._memo[caption] = (hidden[0], None if pooled is None else pooled[0])
                self._memo_bytes += hidden.numel() * hidden.element_size()
        hidden = torch.stack([self._memo[c][0] for c in captions])
        if self.family != "sdxl":
            return hidden, None
        return hidden, torch.stack([self._memo[c][1] for c in captions])
