"""fused_backward_pass: a DreamBooth user on a 24 GB card lets Adafactor update each weight inside the backward
pass. The steps run in process through the trainer's own set-up (config → base → kind → step context → step
function); the weights come out exactly as with the ordinary Adafactor step, and no gradient is left after
any step."""
from __future__ import annotations

import pytest
import torch

from trainer.config import ConfigError, parse_config


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def steps_of_a_run(model_files: dict, family: str, fused: bool, n_steps: int = 2, **values):
    """The trained weights after `n_steps` DreamBooth steps, and each step's leftover gradients."""
    from trainer.train import setup as S
    from trainer.train.graphs import make_step_fn
    from trainer.kinds import create_kind as create_training_kind

    torch.set_num_threads(1)
    flags = {"flux": {"flux1_checkbox": True, "t5xxl_max_token_length": 16}, "sd1": {}}[family]
    te_files = {k: str(v) for k, v in model_files.items() if k in ("clip_l", "t5xxl", "ae")}
    config = parse_config("dreambooth", dict(
        pretrained_model_name_or_path=str(model_files["model"]), train_data_dir="unused", output_dir="unused",
        optimizer="Adafactor", optimizer_args="relative_step=False scale_parameter=False warmup_init=False",
        learning_rate=1e-3, learning_rate_te=0, lr_scheduler="constant", lr_warmup=0, mixed_precision="no",
        seed=7, fused_backward_pass=fused, **flags, **te_files, **values))
    accelerator, mp = S.make_accelerator(config, print)
    base = S.load_base(config, accelerator, mp)
    kind = create_training_kind(config)
    groups = kind.prepare(base, torch.float32)
    ctx = S.build_step_context(config, base, kind, groups, accelerator, mp, 7, print, n_steps, cached=True)
    step_fn = make_step_fn(ctx, config, print)
    channels = ctx.latent_channels
    g = torch.Generator().manual_seed(1)
    leftovers = []
    for step in range(n_steps):
        batch = {"latents": torch.randn(1, channels, 8, 8, generator=g), "captions": ["a photo of sks dog"],
                 "loss_weights": torch.ones(1)}
        step_fn([batch], step)
        leftovers.append([n for n, p in base.unet.named_parameters() if p.grad is not None])
    return {k: v.detach().clone() for k, v in base.unet.state_dict().items()}, leftovers


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    from trainer.models.tiny_dit import write_tiny_flux

    return write_tiny_flux(tmp_path_factory.mktemp("fused") / "flux")


@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_fused_backward_pass_gives_the_weights_of_the_ordinary_adafactor_step(family, tiny_model_dir, flux_files):
    files = flux_files if family == "flux" else {"model": tiny_model_dir("sd1")}
    # max_grad_norm 0: the ordinary step clips by the global norm, the fused one per weight (as sd-scripts)
    plain, _ = steps_of_a_run(files, family, fused=False, max_grad_norm=0)
    fused, leftovers = steps_of_a_run(files, family, fused=True, max_grad_norm=0)
    assert leftovers == [[], []], "every gradient is freed inside the backward pass"
    changed = [k for k in plain if not torch.equal(plain[k], fused[k])]
    # the same Adafactor arithmetic on the same gradients, on CPU: bit-identical
    assert not changed, changed[:5]


def test_fused_backward_pass_clips_each_weight_on_its_own():
    """max_grad_norm in the fused step: each parameter's gradient is clipped by itself (sd-scripts' hook)."""
    from transformers.optimization import Adafactor

    from trainer.train.fused_backward import install_update_hooks

    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
        return model, Adafactor(model.parameters(), lr=1e-2, relative_step=False, scale_parameter=False)

    x = torch.randn(4, 6)
    by_hand, opt = model_and_optimizer()
    (by_hand(x) ** 2).sum().mul(100).backward()
    for p in by_hand.parameters():
        torch.nn.utils.clip_grad_norm_(p, 0.5)
    opt.step()
    fused, opt = model_and_optimizer()
    install_update_hooks(opt, max_grad_norm=0.5)
    (fused(x) ** 2).sum().mul(100).backward()
    assert all(p.grad is None for p in fused.parameters())
    assert all(torch.equal(a, b) for a, b in zip(by_hand.parameters(), fused.parameters()))


@pytest.mark.parametrize("values, words", [
    ({"optimizer": "AdamW"}, "Adafactor optimizer only"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps to 1"),
    ({"mixed_precision": "fp16"}, "fp16 loss scaling"),
    ({"num_processes": 2}, "num_processes to 1"),
])
def test_fused_backward_pass_refuses_what_it_cannot_do(values, words):
    base = dict(pretrained_model_name_or_path="m.safetensors", train_data_dir="d", optimizer="Adafactor",
                mixed_precision="bf16", fused_backward_pass=True)
    parse_config("dreambooth", base)  # the valid combination
    with pytest.raises(ConfigError) as err:
        parse_config("dreambooth", {**base, **values})
    assert "fused_backward_pass" in str(err.value) and words in str(err.value)
    with pytest.raises(ConfigError, match="unknown option 'fused_backward_pass'"):
        parse_config("lora", {**base})  # LoRA keeps no full gradients: sd-scripts' LoRA scripts lack it
