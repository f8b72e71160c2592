"""Sample images of the DiT families through diffusers' own pipelines (FluxPipeline,
StableDiffusion3Pipeline), from prompts in Kohya's syntax.

FLUX.1 (as sd-scripts' flux sampling): ``--g`` is the distilled guidance of dev models (default 3.5),
``--l`` a true classifier-free scale (1 = off; above 1 the ``--n`` negative prompt is used). SD3: ``--l`` is
the CFG scale with ``--n`` as the negative prompt. Every family samples with its flow-matching Euler
scheduler (Kohya's ``sample_sampler`` names are U-Net schedulers). Sides are rounded down to multiples of 16.
"""
from __future__ import annotations

import torch


def build_dit_pipeline(base):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    scheduler = type(base.scheduler).from_config(base.scheduler.config)
    te, tok = base.text_encoders, base.tokenizers
    if base.family == "flux":
        pipe = FluxPipeline(transformer=base.unet, scheduler=scheduler, vae=base.vae, text_encoder=te[0],
                            tokenizer=tok[0], text_encoder_2=te[1], tokenizer_2=tok[1])
    else:
        pipe = StableDiffusion3Pipeline(transformer=base.unet, scheduler=scheduler, vae=base.vae, text_encoder=te[0],
                                        tokenizer=tok[0], text_encoder_2=te[1], tokenizer_2=tok[1],
                                        text_encoder_3=te[2], tokenizer_3=tok[2])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_dit(base, p, default_size: tuple[int, int], generator, t5_length: int | None = None):
    """One image for prompt ``p`` (trainer.train.samples.SamplePrompt)."""
    from trainer.models.dit import dit_family

    fam = dit_family(base.family)
    if fam is not None and fam.samples:
        return fam.module("samples").sample(base, p, default_size, generator, t5_length)
    pipe = build_dit_pipeline(base)
    width = max(16, (p.width or default_size[0]) // 16 * 16)
    height = max(16, (p.height or default_size[1]) // 16 * 16)
    kwargs = dict(width=width, height=height, num_inference_steps=p.steps, generator=generator)
    if t5_length:
        kwargs["max_sequence_length"] = t5_length
    if base.family == "flux":
        kwargs["guidance_scale"] = p.guidance if p.guidance is not None else 3.5
        if p.scale and p.scale > 1:
            kwargs.update(true_cfg_scale=p.scale, negative_prompt=p.negative or "")
    else:
        kwargs.update(guidance_scale=p.scale, negative_prompt=p.negative or None)
    with torch.no_grad():
        return pipe(p.prompt, **kwargs).images[0]
