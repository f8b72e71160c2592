"""Output probes shared by the tests/test_models_*.py files: run a U-Net / VAE / text encoder on fixed
seeded inputs so two models can be compared. (No tests here.)

Two models "are the same" when their weights are bit-identical (`assert_same_weights`): that is what a
loader or a saver must guarantee. Their outputs are then compared with `assert_outputs_match`, not
torch.equal: the same weights in another tensor (another allocation, alignment, an mmapped file) can
send the CPU kernels down another vectorized path, and from torch 2.14 on the last bits differ
(seen: up to 4e-5 on outputs of magnitude 1). The same module run twice on the same input stays exact."""

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


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def assert_outputs_match(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Float32 outputs of the same weights in different tensors: within 1e-3 of the output's scale
    (measured on torch 2.14: up to 4.4e-5 for the SD2 U-Net, ~1e-6 elsewhere; exact on 2.13). The weights
    are checked bit-exactly beside this; a wrong key or a transposed weight moves outputs by > 1e-2."""
    assert got.shape == expected.shape
    scale = expected.abs().max().item() or 1.0
    assert torch.allclose(got, expected, rtol=0, atol=1e-3 * scale), (got - expected).abs().max().item()


def assert_same_model(base, comps):
    assert_same_weights(base.unet, comps["unet"])
    assert_same_weights(base.vae, comps["vae"])
    assert_outputs_match(unet_out(base.unet), unet_out(comps["unet"]))
    assert_outputs_match(vae_out(base.vae), vae_out(comps["vae"]))
    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    for te, tok, name in zip(base.text_encoders, base.tokenizers, names):
        assert_same_weights(te, comps[name])
        assert_outputs_match(te_out(te, tok), te_out(comps[name], comps[name.replace("text_encoder", "tokenizer")]))
