"""The training step on a tiny SD1 model: it learns, accumulation is exact, 8-bit and bf16 run on CPU."""
from __future__ import annotations

import copy

import pytest
import torch

from trainer.config import config_for


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def build(optimizer="AdamW", lr=1e-3, mixed_precision="no", seed=0, **cfg_values):
    """A LoRA step context on the tiny SD1 model (seeded: two builds are identical)."""
    from accelerate import Accelerator

    from trainer.models.components import build_noise_scheduler
    from trainer.models.tiny import build_tiny_components
    from trainer.networks import create_network
    from trainer.train.loop import Denoiser, StepContext
    from trainer.train.optimizers import build_optimizer
    from trainer.train.precision import weight_dtype
    from trainer.train.schedulers import build_scheduler
    from trainer.train.text import TextConditioner

    torch.set_num_threads(1)
    parts = build_tiny_components("sd1", 0)
    dtype = weight_dtype(mixed_precision)
    parts["unet"].to(dtype)
    parts["text_encoder"].to(dtype)
    torch.manual_seed(seed)
    network = create_network(parts, family="sd1", network_dim=8, network_alpha=8)
    network.apply_to()
    groups = network.prepare_optimizer_params(None, None, lr)
    cfg = config_for("lora", lr_scheduler="constant", lr_warmup=0, learning_rate=lr, mixed_precision=mixed_precision,
                     **cfg_values)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=True)
    text = TextConditioner("sd1", [parts["text_encoder"]], [parts["tokenizer"]], clip_skip=1)
    optimizer = build_optimizer(optimizer, groups, lr)
    scheduler = build_scheduler(cfg, optimizer, 1000)
    model, optimizer = accelerator.prepare(Denoiser(parts["unet"], text, network), optimizer)
    ctx = StepContext(accelerator, model, optimizer, scheduler, [p for g in groups for p in g["params"]],
                      build_noise_scheduler(False), cfg, max_grad_norm=float(cfg_values.get("max_grad_norm", 1.0)))
    return ctx, network


def batch(latents, captions):
    return {"latents": latents, "captions": list(captions), "loss_weights": torch.ones(len(captions))}


def weights(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def fixed_loss(ctx, b, n=16):
    """The loss at fixed timesteps and noise: comparable before and after training."""
    from trainer.train.diffusion import per_sample_loss

    g = torch.Generator().manual_seed(123)
    latents = b["latents"].repeat(n, 1, 1, 1) * 0.18215
    noise = torch.randn(latents.shape, generator=g)
    t = torch.linspace(50, 950, n).long()
    with torch.no_grad():
        pred = ctx.model(ctx.noise_scheduler.add_noise(latents, noise, t), t, b["captions"] * n)
    return per_sample_loss(pred, noise).mean().item()


def test_loss_falls_clearly_on_an_image_the_lora_can_memorise():
    from trainer.train.loop import train_step

    ctx, _ = build(lr=1e-2, max_grad_norm=0)
    b = batch(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 4, ["toy, red circle"])
    before = fixed_loss(ctx, b)
    for step in range(80):
        train_step(ctx, [b], step)
    after = fixed_loss(ctx, b)
    assert after < 0.7 * before, (before, after)


def test_batch_two_equals_batch_one_with_two_accumulation_steps():
    """Same samples, same noise: the update agrees up to float noise (the tiny U-Net's batched and
    unbatched forwards differ on CPU), far below what a wrong loss scaling (2×) would give."""
    from trainer.train.loop import train_step

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    captions = ["toy, red circle", "toy, blue triangle"]
    # SGD: the update is proportional to the gradient, so any scaling error would show
    ctx_a, net_a = build(optimizer="SGD", lr=0.05, max_grad_norm=0)
    ctx_b, net_b = build(optimizer="SGD", lr=0.05, max_grad_norm=0)
    start = weights(net_a)
    assert all(torch.equal(start[k], v) for k, v in weights(net_b).items())
    for step in range(2):
        loss_a = train_step(ctx_a, [batch(latents, captions)], step)
        loss_b = train_step(ctx_b, [batch(latents[:1], captions[:1]), batch(latents[1:], captions[1:])], step)
        assert torch.allclose(loss_a, loss_b, rtol=1e-4)
    wa, wb = weights(net_a), weights(net_b)
    update = torch.cat([(wa[k] - start[k]).flatten() for k in wa])
    difference = torch.cat([(wa[k] - wb[k]).flatten() for k in wa])
    assert update.norm() > 0, "the step must train"
    # a wrong loss scaling (2x or 1/2) puts the difference at >= 0.5x the update; the batched and unbatched
    # forwards are different kernels on different shapes, so their float noise is what remains: measured
    # 0.2% of the update on torch 2.13 and 2.4% on 2.14 (the second step starts from the first's noise)
    assert difference.norm() < 0.1 * update.norm(), (difference.norm(), update.norm())


def test_adamw8bit_trains_on_the_cpu():
    from trainer.train.loop import train_step

    ctx, net = build(optimizer="AdamW8bit")
    assert type(ctx.optimizer.optimizer).__name__ == "AdamW8bit"
    start = weights(net)
    b = batch(torch.randn(1, 4, 8, 8), ["toy"])
    losses = [train_step(ctx, [b], s) for s in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(v, start[k]) for k, v in weights(net).items())


def test_bf16_autocast_runs_on_the_cpu_with_fp32_lora_weights():
    from trainer.train.loop import train_step

    ctx, net = build(mixed_precision="bf16")
    assert next(ctx.model.unet.parameters()).dtype == torch.bfloat16
    start = weights(net)
    b = batch(torch.randn(2, 4, 8, 8), ["toy, red circle", "toy"])
    loss = train_step(ctx, [b], 0)
    assert torch.isfinite(loss)
    after = weights(net)
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(v, start[k]) for k, v in after.items())


def test_a_step_is_reproducible_from_its_number():
    """Resume relies on it: the same weights, batch and step number give the same update."""
    from trainer.train.loop import train_step

    b = batch(torch.randn(1, 4, 8, 8), ["toy"])
    ctx_a, net_a = build(network_dropout=0)
    ctx_b, net_b = build()
    train_step(ctx_a, [b], 0)
    train_step(ctx_b, [b], 0)
    torch.manual_seed(999)  # whatever happened to the global generator in between
    train_step(ctx_a, [b], 1)
    train_step(ctx_b, [b], 1)
    for k, v in weights(net_a).items():
        assert torch.equal(v, weights(net_b)[k]), k


def test_min_snr_gamma_weights_follow_the_paper():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from trainer.train.diffusion import snr_loss_weights

    s = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = torch.tensor([10, 500, 990])
    snr = compute_snr(s, t)
    cfg = config_for("lora", min_snr_gamma=5)
    assert torch.allclose(snr_loss_weights(s, t, cfg, False), torch.clamp(snr, max=5) / snr)
    assert torch.allclose(snr_loss_weights(s, t, cfg, True), torch.clamp(snr, max=5) / (snr + 1))
    assert snr_loss_weights(s, t, config_for("lora"), False) is None


def test_frozen_text_encoder_outputs_are_remembered_exactly():
    from trainer.models.tiny import build_tiny_components
    from trainer.train.text import TextConditioner

    parts = build_tiny_components("sd1", 0)
    args = ("sd1", [parts["text_encoder"]], [parts["tokenizer"]])
    memo = TextConditioner(*args, clip_skip=2, memoize=True)
    plain = TextConditioner(*args, clip_skip=2, memoize=False)
    captions = ["toy, red circle", "toy", "toy, red circle"]
    with torch.no_grad():
        first, _ = memo(captions)
        again, _ = memo(captions)
        direct = torch.cat([plain([c])[0] for c in captions])
        skip1, _ = TextConditioner(*args, clip_skip=1, memoize=False)(captions)
        long, _ = TextConditioner(*args, max_token_length=150, memoize=False)(captions)
    assert torch.equal(first, again) and torch.equal(first, direct)
    assert not torch.allclose(first, skip1)
    assert long.shape[1] == 2 + 150


def test_optimizer_args_and_names_as_kohya_writes_them():
    from trainer.train.faults import TrainingFault
    from trainer.train.optimizers import build_optimizer, parse_optimizer_args

    assert parse_optimizer_args("weight_decay=0.01 betas=0.9,0.999 decouple=True d_coef=x") == {
        "weight_decay": 0.01, "betas": (0.9, 0.999), "decouple": True, "d_coef": "x"}
    params = [{"params": [torch.nn.Parameter(torch.zeros(4, 4))], "lr": 1e-3}]
    for name in ("AdamW", "adamw", "SGDNesterov", "Lion", "Adafactor", "Lion8bit", "PagedAdamW8bit"):
        assert build_optimizer(name, copy.deepcopy(params), 1e-3) is not None
    opt = build_optimizer("AdamW", copy.deepcopy(params), 1e-3, "weight_decay=0.05 betas=0.8,0.9")
    assert opt.defaults["weight_decay"] == 0.05 and opt.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(TrainingFault, match="optimizer_args"):
        build_optimizer("AdamW", copy.deepcopy(params), 1e-3, "no_such_arg=1")
    with pytest.raises(TrainingFault, match="Unknown optimizer"):
        build_optimizer("Adamm", copy.deepcopy(params), 1e-3)
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        with pytest.raises(TrainingFault, match="prodigyopt") as missing:
            build_optimizer("Prodigy", copy.deepcopy(params), 1.0)
        assert "pip install prodigyopt" in missing.value.hint


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_schedulers_warm_up_by_percent_or_steps(name):
    from trainer.train.schedulers import build_scheduler, warmup_steps

    assert warmup_steps(config_for("lora", lr_warmup=10.0, lr_warmup_steps=0), 200) == 20
    assert warmup_steps(config_for("lora", lr_warmup=10.0, lr_warmup_steps=5), 200) == 5
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    cfg = config_for("lora", lr_scheduler=name, lr_warmup=10.0, lr_warmup_steps=0, lr_scheduler_num_cycles=2,
                     lr_scheduler_power=2.0, learning_rate=1.0)
    sched = build_scheduler(cfg, opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(1.0)
    if name != "constant_with_warmup":
        assert lrs[-1] < 0.1
