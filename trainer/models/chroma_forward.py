"""One Chroma transformer call on [B, C, H, W] latents: FLUX.1's 2×2 patch packing and positional ids, the
timestep as σ (t / 1000; Chroma has no guidance or pooled input), and the text mask (the ``pooled`` slot of
Chroma's text seam, see text_chroma) extended over the image tokens as a boolean attention mask, so
padding takes no share of the joint attention (a float 0/1 mask would be added to the scores instead)."""
from __future__ import annotations

import torch

from trainer.models.flux_forward import image_ids, pack, unpack


def attention_mask(text_mask: torch.Tensor, n_image: int) -> torch.Tensor:
    text = text_mask > 0.5
    return torch.cat([text, torch.ones(text.shape[0], n_image, dtype=torch.bool, device=text.device)], dim=1)


def make_denoise(base, cfg):
    """fn(transformer, noisy, t, hidden, text_mask, time_ids) → prediction shaped like ``noisy``."""

    def denoise(transformer, noisy, t, hidden, pooled=None, time_ids=None):
        b, _, h, w = noisy.shape
        if h % 2 or w % 2:
            raise ValueError(f"Chroma latents need even sides, got {h}×{w}: use resolutions divisible by 16")
        mask = None if pooled is None else attention_mask(pooled.to(noisy.device), (h // 2) * (w // 2))
        out = transformer(hidden_states=pack(noisy), timestep=t.float() / 1000, encoder_hidden_states=hidden,
                          txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=hidden.dtype),
                          img_ids=image_ids(h, w, noisy.device, hidden.dtype), attention_mask=mask,
                          return_dict=False)[0]
        return unpack(out, h, w)

    return denoise
