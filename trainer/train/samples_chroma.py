"""Chroma sample images through diffusers' ChromaPipeline, from prompts in Kohya's syntax.

Chroma is not guidance-distilled: ``--l`` is a true classifier-free scale (Kohya's default 7.5; 1 = off),
with ``--n`` as the negative prompt. Prompts are encoded by Chroma's text seam (``text_chroma``), and the
boolean text mask is handed to the pipeline with them (what training uses): the pipeline's own float mask
would be added to the attention scores rather than mask the padding.
"""
from __future__ import annotations

import torch


def build_pipeline(base):
    from diffusers import ChromaPipeline

    scheduler = type(base.scheduler).from_config(base.scheduler.config)
    pipe = ChromaPipeline(transformer=base.unet, scheduler=scheduler, vae=base.vae, text_encoder=base.text_encoders[0],
                          tokenizer=base.tokenizers[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embed(base, prompt: str, t5_length):
    from trainer.models import text_chroma

    cfg = type("Cfg", (), {"t5xxl_max_token_length": t5_length or 0})
    with torch.no_grad():
        hidden, mask = text_chroma.encode(base, text_chroma.tokenize(base, [prompt], cfg))
    return hidden, mask > 0.5


def sample(base, p, default_size: tuple[int, int], generator, t5_length: int | None = None):
    """One image for prompt ``p`` (trainer.train.samples.SamplePrompt)."""
    pipe = build_pipeline(base)
    width = max(16, (p.width or default_size[0]) // 16 * 16)
    height = max(16, (p.height or default_size[1]) // 16 * 16)
    hidden, mask = _embed(base, p.prompt, t5_length)
    kwargs = dict(width=width, height=height, num_inference_steps=p.steps, generator=generator,
                  prompt_embeds=hidden, prompt_attention_mask=mask, guidance_scale=p.scale or 1.0)
    if p.scale and p.scale > 1:
        neg, neg_mask = _embed(base, p.negative or "", t5_length)
        kwargs.update(negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask)
    with torch.no_grad():
        return pipe(**kwargs).images[0]
