"""Captions → FLUX.1 conditioning, as sd-scripts' flux_train_network computes it.

* CLIP-L: 77 tokens, the pooled output (``pooler_output``: final-norm hidden state at EOS) → ``pooled``.
* T5-XXL: ``t5xxl_max_token_length`` tokens (kohya: 512 for dev, 256 for schnell), the last hidden state
  → the transformer's text tokens.
* ``apply_t5_attn_mask``: T5 ignores the padding and the padded positions' outputs are zeroed, so the
  transformer's joint attention gets nothing from them (diffusers' FluxTransformer2DModel takes no text
  mask; zero keys/values still take a share of the softmax, which sd-scripts' masked attention does not).
"""
from __future__ import annotations

import torch

DEFAULT_T5_LENGTH = {"dev": 512, "schnell": 256}


def t5_length(base, cfg) -> int:
    n = int(cfg.t5xxl_max_token_length)
    return n or DEFAULT_T5_LENGTH.get(base.extra.get("variant", "dev"), 512)


def tokenize(base, captions: list[str], cfg=None) -> list[torch.Tensor]:
    """[CLIP ids (B, 77), T5 ids (B, L)] + [T5 mask (B, L)] when apply_t5_attn_mask is on."""
    clip_tok, t5_tok = base.tokenizers
    captions = [captions] if isinstance(captions, str) else list(captions)
    clip = clip_tok(captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    t5 = t5_tok(captions, padding="max_length", truncation=True, max_length=t5_length(base, cfg), return_tensors="pt")
    out = [clip, t5.input_ids]
    if bool(cfg.apply_t5_attn_mask):
        out.append(t5.attention_mask)
    return out


def encode(base, ids: list[torch.Tensor], clip_skip=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 hidden states [B, L, D], CLIP-L pooled [B, 768])."""
    clip, t5 = base.text_encoders[:2]
    device = next(clip.parameters()).device
    pooled = clip(ids[0].to(device), output_hidden_states=False, return_dict=True).pooler_output
    device = next(t5.parameters()).device
    mask = ids[2].to(device) if len(ids) > 2 else None
    hidden = t5(ids[1].to(device), attention_mask=mask, return_dict=True).last_hidden_state
    if mask is not None:
        hidden = hidden * mask[..., None].to(hidden.dtype)
    return hidden, pooled
