"""Captions → U-Net conditioning for training, the way sd-scripts builds it.

SD1/SD2: the last hidden state, or with clip_skip N the N-th last layer + the final layer norm.
SDXL: both encoders' penultimate layers concatenated, plus text encoder 2's pooled projection.
Long captions (max_token_length 150/225) are encoded as 77-token chunks and joined (BOS, 75 × n, EOS).

When the text encoders are frozen, each caption is encoded once (alone, so the result never depends
on the rest of the batch) and remembered: later steps skip the text-encoder forward entirely.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from trainer.data.tokens import tokenize_long

logger = logging.getLogger(__name__)

MEMO_LIMIT_BYTES = 512 * 2**20


def join_chunks(hidden: torch.Tensor, chunks: int) -> torch.Tensor:
    """[B, n·77, D] from n separately encoded chunks → [B, 2 + 75n, D] (one BOS, one EOS)."""
    if chunks == 1:
        return hidden
    b, _, d = hidden.shape
    per = hidden.view(b, chunks, -1, d)
    return torch.cat([per[:, 0, :1], per[:, :, 1:-1].reshape(b, -1, d), per[:, -1, -1:]], dim=1)


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

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [B, L, D] and (SDXL) pooled embeddings [B, 1280]."""
        device = next(self.encoders[0].parameters()).device
        ids = [t.to(device) for t in self.tokenize(captions)]
        chunks = ids[0].shape[1] // 77
        if self.family != "sdxl":
            return join_chunks(self._sd_hidden(self.encoders[0], ids[0], chunks), chunks), None
        hidden, pooled = [], None
        for i, (encoder, enc_ids) in enumerate(zip(self.encoders, ids)):
            states = []
            for c in range(chunks):
                out = encoder(enc_ids[:, c * 77:(c + 1) * 77], output_hidden_states=True)
                states.append(out.hidden_states[-2])
                if i == 1 and c == 0:
                    pooled = out.text_embeds  # sd-scripts pools the first chunk
            hidden.append(join_chunks(torch.cat(states, dim=1), chunks))
        return torch.cat(hidden, dim=-1), pooled

    def _sd_hidden(self, encoder, ids: torch.Tensor, chunks: int) -> torch.Tensor:
        states = []
        for c in range(chunks):
            part = ids[:, c * 77:(c + 1) * 77]
            if self.clip_skip == 1:
                states.append(encoder(part)[0])
            else:
                out = encoder(part, output_hidden_states=True)
                norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 nests it
                states.append(norm(out.hidden_states[-self.clip_skip]))
        return torch.cat(states, dim=1)

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
