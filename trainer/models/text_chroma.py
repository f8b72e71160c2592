"""Captions → Chroma conditioning (T5-XXL only, no CLIP-L), as sd-scripts trains Chroma (where
``apply_t5_attn_mask`` is required) and diffusers' ChromaPipeline encodes prompts:

* T5 reads ``t5xxl_max_token_length`` tokens (0 = 512) with its attention mask; its last hidden state is the
  transformer's text tokens.
* Chroma has no pooled embedding: the second conditioning tensor (the ``pooled`` slot every family's text
  seam returns, so the text cache and memo keep it per caption) is the transformer's text mask — the
  caption's tokens plus one padding token (sd-scripts' ``attn_padding`` 1, the pipeline's mask), as 0/1.
"""
from __future__ import annotations

import torch

DEFAULT_T5_LENGTH = 512


def t5_length(base, cfg) -> int:
    return (cfg.t5xxl_max_token_length if cfg is not None else 0) or DEFAULT_T5_LENGTH


def tokenize(base, captions: list[str], cfg=None) -> list[torch.Tensor]:
    """[T5 ids (B, L), T5 attention mask (B, L)]."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    t5 = base.tokenizers[0](captions, padding="max_length", truncation=True, max_length=t5_length(base, cfg),
                            return_tensors="pt")
    return [t5.input_ids, t5.attention_mask]


def transformer_text_mask(t5_mask: torch.Tensor) -> torch.Tensor:
    """The caption's tokens and the first padding token (0/1, float so it caches like any output)."""
    lengths = t5_mask.sum(dim=1, keepdim=True)
    return (torch.arange(t5_mask.shape[1], device=t5_mask.device)[None, :] <= lengths).float()


def encode(base, ids: list[torch.Tensor], clip_skip=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 hidden states [B, L, D], transformer text mask [B, L])."""
    t5 = base.text_encoders[0]
    device = next(t5.parameters()).device
    mask = ids[1].to(device)
    hidden = t5(ids[0].to(device), attention_mask=mask, return_dict=True).last_hidden_state
    return hidden, transformer_text_mask(mask).to(hidden.dtype)
