"""Shared by tests/test_kinds_*.py (no tests here): a thread fixture and small probes."""
from __future__ import annotations

import pytest
import torch
from test_models_helpers import unet_out as unet_probe  # noqa: F401  (the U-Net on fixed seeded inputs)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_steps(kind, base, groups, captions=("a photo of mytok", "mytok on the beach"), steps=3,
                weight_decay=0.1, first_step=1):
    """A few real denoising steps with AdamW, the way the loop drives a kind (captions -> text encoder
    under kind.text_encoder_grad() -> U-Net -> MSE -> step -> kind.after_optimizer_step)."""
    from trainer.models.text import encode_prompt, tokenize_prompt

    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    n = len(captions)
    for step in range(first_step, first_step + steps):
        prompts = kind.prepare_captions(list(captions))
        with torch.set_grad_enabled(kind.text_encoder_grad()):
            hidden, pooled = encode_prompt(base, tokenize_prompt(base, prompts))
        latents = torch.randn(n, 4, 8, 8, generator=g)
        noise = torch.randn(n, 4, 8, 8, generator=g)
        t = torch.randint(0, 1000, (n,), generator=g)
        noisy = base.noise_scheduler.add_noise(latents, noise, t)
        extra = {}
        if base.family == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": pooled,
                                          "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * n)}
        pred = base.unet(noisy, t, hidden, **extra).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        kind.after_optimizer_step(step)
    return optimizer
