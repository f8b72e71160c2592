"""The compile option: on by default only with CUDA, and a compile failure never ends a run."""
import torch

from trainer.models.tiny import build_tiny_components
from trainer.train import compile as tc


def test_auto_compiles_on_cuda_only():
    assert tc.compile_enabled("auto", torch.device("cuda"))
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
