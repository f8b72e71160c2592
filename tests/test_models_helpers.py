"""Output probes shared by the tests/test_models_*.py files: run a U-Net / VAE / text encoder on fixed
seeded inputs so two models can be compared exactly. (No tests here.)"""

from __future__ import annotations

import torch


def _unet_inputs(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    return x, torch.tensor([500]), ctx, kw


def unet_out(unet):
    x, t, ctx, kw = _unet_inputs(unet)
    with torch.no_grad():
        return unet(x.to(unet.dtype), t, ctx.to(unet.dtype), **{
            "added_cond_kwargs": {k: v.to(unet.dtype) for k, v in kw["added_cond_kwargs"].items()}} if kw else {}).sample.float()


def vae_out(vae):
    img = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return vae.decode(vae.encode(img.to(vae.dtype)).latent_dist.mean).sample.float()


def te_out(te, tokenizer):
    ids = tokenizer(["a photo of sks dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return te(ids).last_hidden_state.float()


def assert_same_model(base, comps):
    assert torch.equal(unet_out(base.unet), unet_out(comps["unet"]))
    assert torch.equal(vae_out(base.vae), vae_out(comps["vae"]))
    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    for te, tok, name in zip(base.text_encoders, base.tokenizers, names):
        assert torch.equal(te_out(te, tok), te_out(comps[name], comps[name.replace("text_encoder", "tokenizer")]))
