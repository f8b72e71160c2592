"""One SD3 MMDiT call, as StableDiffusion3Pipeline makes it: latents as they are (the model patchifies),
the timestep as 1000·σ, the joint CLIP+T5 tokens and the pooled CLIP embeddings."""
from __future__ import annotations


def make_denoise(base, cfg):
    def denoise(transformer, noisy, t, hidden, pooled=None, time_ids=None):
        return transformer(hidden_states=noisy, timestep=t.float(), encoder_hidden_states=hidden,
                           pooled_projections=pooled, return_dict=False)[0]

    return denoise
