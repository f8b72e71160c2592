"""The compile option: on by default only with CUDA and uncaptured steps, and a compile failure never ends a run."""
import pytest
import torch

from trainer.models.tiny import build_tiny_components
from trainer.train import compile as tc


def test_auto_compiles_on_cuda_only_when_steps_are_not_captured():
    assert tc.compile_enabled("auto", torch.device("cuda"), cuda_graphs="off")
    assert not tc.compile_enabled("auto", torch.device("cuda"), cuda_graphs="auto")
    assert not tc.compile_enabled("auto", torch.device("cpu"))
    assert tc.compile_enabled("on", torch.device("cpu"))
    assert not tc.compile_enabled("off", torch.device("cuda"))


def _unet_inputs(unet):
    torch.manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim)
    return sample, torch.tensor([10]), hidden


def test_a_compile_failure_warns_once_and_trains_on_uncompiled(monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            calls.append(1)
            raise RuntimeError("unsupported operator")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    unet = build_tiny_components("sd1")["unet"]
    inputs = _unet_inputs(unet)
    with torch.no_grad():
        expected = unet(*inputs).sample
    warnings = []
    tc.compile_unet(unet, warnings.append)
    for _ in range(3):
        out = unet(*inputs).sample
    assert torch.equal(out.detach(), expected)
    assert len(calls) == 1, "after the first failure the compiled path is not retried"
    assert len(warnings) == 1 and "unsupported operator" in warnings[0] and "continues uncompiled" in warnings[0]


def test_sample_images_never_take_the_compiled_path(monkeypatch):
    traced = []

    def recording_compile(fn, **kwargs):
        def run(*a, **k):
            traced.append(1)
            return fn(*a, **k)
        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    unet = build_tiny_components("sd1")["unet"]
    tc.compile_unet(unet, lambda m: None)
    inputs = _unet_inputs(unet)
    with torch.no_grad():
        unet(*inputs)
    assert traced == []
    unet(*inputs)  # a training forward (grad enabled) is compiled
    assert traced == [1]


@pytest.mark.slow
def test_compiled_lora_steps_match_eager_steps():
    """The correctness guard: the same LoRA weights after a few optimizer steps, compiled or not.
    (Compiling costs ~40 s on a 2-core CPU even for this one-block U-Net.)"""
    from diffusers import UNet2DConditionModel

    from trainer.networks import create_network

    def train(compiled: bool):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,),
                                    layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
                                    up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=32,
                                    norm_num_groups=8, attention_head_dim=4).requires_grad_(False)
        network = create_network(unet, [], "sd1", network_dim=4, network_alpha=4, train_text_encoder=False)
        network.apply_to()
        for name, p in network.named_parameters():  # lora_up starts at zero: give it a value to train
            if "lora_up" in name:
                torch.nn.init.normal_(p, std=0.02)
        if compiled:
            tc.compile_unet(unet, pytest.fail)
        params = [p for p in network.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.1)
        g = torch.Generator().manual_seed(1)
        losses = []
        x, h = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(unet(x, torch.tensor([5, 500]), h).sample, torch.zeros(2, 4, 8, 8))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses, torch.cat([p.detach().flatten() for p in params])

    eager_losses, eager_weights = train(False)
    compiled_losses, compiled_weights = train(True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert torch.allclose(compiled_weights, eager_weights, atol=1e-5)
    assert eager_losses[-1] < eager_losses[0]  # the steps did train
