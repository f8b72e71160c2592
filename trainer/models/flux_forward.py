"""One FLUX.1 transformer call on [B, C, H, W] latents, as diffusers' FluxPipeline makes it:
2×2 patches packed into tokens, positional ids per patch, the timestep as σ (t / 1000), the distilled
guidance (dev models only) and the CLIP-L pooled embedding."""
from __future__ import annotations

import torch


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def make_denoise(base, cfg):
    """fn(transformer, noisy, t, hidden, pooled, time_ids) → prediction shaped like ``noisy``."""
    guidance_scale = float(cfg.guidance_scale)

    def denoise(transformer, noisy, t, hidden, pooled=None, time_ids=None):
        b, _, h, w = noisy.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX.1 latents need even sides, got {h}×{w}: use resolutions divisible by 16")
        dtype = hidden.dtype
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), guidance_scale, device=noisy.device, dtype=torch.float32)
        out = transformer(hidden_states=pack(noisy), timestep=t.float() / 1000, guidance=guidance,
                          pooled_projections=pooled, encoder_hidden_states=hidden,
                          txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=dtype),
                          img_ids=image_ids(h, w, noisy.device, dtype), return_dict=False)[0]
        return unpack(out, h, w)

    return denoise
