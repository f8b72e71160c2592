"""Captions → SD3 conditioning, as sd-scripts' sd3 strategy and diffusers' pipeline compute it.

* CLIP-L and CLIP-G (77 tokens each): penultimate hidden states, concatenated on the feature axis and
  zero-padded to T5's width; their projected pooled outputs concatenated → ``pooled`` (768 + 1280).
* T5-XXL: ``t5xxl_max_token_length`` tokens (0 = 256, sd-scripts' SD3 default), last hidden state,
  appended after the 77 CLIP tokens. ``apply_t5_attn_mask`` as for FLUX.1 (text_flux).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_T5_LENGTH = 256


def tokenize(base, captions: list[str], cfg=None) -> list[torch.Tensor]:
    captions = [captions] if isinstance(captions, str) else list(captions)
    out = [tok(captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
           for tok in base.tokenizers[:2]]
    n = int(cfg.t5xxl_max_token_length) or DEFAULT_T5_LENGTH
    t5 = base.tokenizers[2](captions, padding="max_length", truncation=True, max_length=n, return_tensors="pt")
    out.append(t5.input_ids)
    if bool(cfg.apply_t5_attn_mask):
        out.append(t5.attention_mask)
    return out


def encode(base, ids: list[torch.Tensor], clip_skip=None) -> tuple[torch.Tensor, torch.Tensor]:
    hiddens, pooled = [], []
    for encoder, tokens in zip(base.text_encoders[:2], ids[:2]):
        device = next(encoder.parameters()).device
        out = encoder(tokens.to(device), output_hidden_states=True, return_dict=True)
        hiddens.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    t5 = base.text_encoders[2]
    device = next(t5.parameters()).device
    mask = ids[3].to(device) if len(ids) > 3 else None
    t5_hidden = t5(ids[2].to(device), attention_mask=mask, return_dict=True).last_hidden_state
    if mask is not None:
        t5_hidden = t5_hidden * mask[..., None].to(t5_hidden.dtype)
    clip = torch.cat(hiddens, dim=-1)
    clip = F.pad(clip, (0, t5_hidden.shape[-1] - clip.shape[-1])).to(t5_hidden.device, t5_hidden.dtype)
    return torch.cat([clip, t5_hidden], dim=1), torch.cat(pooled, dim=-1)
