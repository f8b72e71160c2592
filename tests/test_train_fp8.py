"""A user with a small card ticks `fp8_base`: the frozen base model's Linear/Conv2d weights are stored in
8-bit floats (per-output-channel scale) and widened one layer at a time, for LoRA and Textual Inversion."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn
from test_train_support import lora_config, make_dataset, run_trainer, trainer_cli, write_config

from trainer.models.fp8 import FP8, fp8_weight, quantize, to_fp8, widen
from trainer.models.tiny import build_tiny_components
from trainer.networks import create_network


def layers(module):
    return [m for m in module.modules() if type(m) in (nn.Linear, nn.Conv2d)]


def weight_bytes(module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in layers(module))


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@functools.lru_cache(maxsize=1)
def _tiny_sd1():
    return build_tiny_components("sd1", seed=0)


def tiny(dtype=torch.float32, fp8=False):
    """A fresh copy of the tiny SD1 model's U-Net and text encoder, frozen, in `dtype` (and fp8)."""
    built = _tiny_sd1()
    comps = {"family": "sd1", **{name: copy.deepcopy(built[name]) for name in ("unet", "text_encoder")}}
    for name in ("unet", "text_encoder"):
        comps[name].to(dtype).requires_grad_(False)
        if fp8:
            to_fp8(comps[name], dtype)
    return comps


def unet_inputs(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)  # at 8×8 the 1×1 bottom level makes bf16 GroupNorm unstable
    hidden = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([500]), hidden


def lora_on(comps):
    """The same LoRA (non-zero up weights, so every LoRA weight gets a gradient) whatever the base dtype."""
    torch.manual_seed(3)
    net = create_network(comps, network_dim=4, network_alpha=4, conv_dim=4, conv_alpha=4,
                         train_text_encoder=False).apply_to()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
    return net


def lora_step(comps, autocast: bool):
    """One forward + backward of the U-Net with a LoRA: (output, LoRA gradients, saved activation bytes)."""
    unet, net = comps["unet"], lora_on(comps)
    model = {p.untyped_storage().data_ptr() for m in (unet, net) for p in m.parameters()}
    model |= {m.weight_scale.untyped_storage().data_ptr() for m in layers(unet) if hasattr(m, "weight_scale")}
    seen: set[int] = set()

    def pack(t):  # bytes autograd keeps for backward beyond the model's own tensors, each storage once
        storage = t.untyped_storage()
        if storage.data_ptr() not in model:
            seen.add(storage.data_ptr())
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    sizes: dict[int, int] = {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = unet(*unet_inputs(unet)).sample
    out.float().square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    return out.detach(), grads, sum(sizes.values())


def test_fp8_base_stores_the_frozen_unets_linear_and_conv_weights_in_half_the_bytes_of_bf16():
    unet = tiny(torch.bfloat16)["unet"]
    shapes = {id(m): m.weight.shape for m in layers(unet)}
    bf16 = weight_bytes(unet)
    report = to_fp8(unet, torch.bfloat16)
    assert report.layers == len(shapes) > 100
    assert weight_bytes(unet) * 2 == bf16 == report.bytes_before
    rows = sum(m.weight.shape[0] for m in layers(unet))
    assert report.bytes_after == bf16 // 2 + 4 * rows  # + one fp32 scale per output channel
    assert all(m.weight.shape == shapes[id(m)] and fp8_weight(m).dtype == FP8 for m in layers(unet))
    # diffusers pipelines cast prompt embeddings to unet.dtype (SDXL): it must still say bf16
    assert unet.dtype == torch.bfloat16
    # Textual Inversion casts its text encoder with Module.to: the 8-bit weights stay 8-bit
    unet.to(torch.float32)
    assert weight_bytes(unet) * 2 == bf16


def test_each_weight_is_rounded_to_the_nearest_fp8_step_of_its_rows_scale():
    """e4m3 has 3 mantissa bits: a value in its normal range is off by at most half a step, 2^-4 relative.
    Below its normal range (|w| < scale · 2^-6, scale = amax / 448) the step is absolute: scale · 2^-9."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, 3, 3, generator=g) * torch.logspace(-4, 0, 64)[:, None, None, None]
    w[:, 0] *= 1e-5  # some values below e4m3's normal range
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize(w)
    back = widen(q.view(torch.uint8), scale, torch.float32)
    assert torch.equal(back[5], w[5])
    amax = w.abs().amax(dim=(1, 2, 3), keepdim=True)
    step = amax / 448
    normal = w.abs() >= step * 2**-6
    assert normal.float().mean() > 0.9 and (~normal[w != 0]).any()
    assert ((back - w).abs() <= w.abs() * 2**-4 * 1.0001)[normal].all()
    assert ((back - w).abs() <= step * 2**-10 * 1.0001)[~normal].all()
    assert torch.allclose(back.abs().amax(dim=(1, 2, 3), keepdim=True), amax, rtol=1e-6)  # largest: exact


def test_an_fp8_unets_output_stays_close_to_the_full_precision_one():
    """Measured on the tiny SD1 U-Net (seed 0): bf16 weights move the output by 1.3 % (relative L2) and fp8
    weights by 9.0 %. Each weight is off by 2.5 % rms (3-bit mantissa), and ~20 layers in sequence add
    such errors up; 15 % leaves room for other seeds while a wrong scale or a lost bias gives > 50 %."""
    inputs = unet_inputs(tiny()["unet"])
    with torch.no_grad():
        reference = tiny()["unet"](*inputs).sample
        bf16 = tiny(torch.bfloat16)["unet"](*[t.bfloat16() if t.is_floating_point() else t for t in inputs]).sample
        fp8 = tiny(torch.bfloat16, fp8=True)["unet"](*[t.bfloat16() if t.is_floating_point() else t
                                                       for t in inputs]).sample
    assert fp8.dtype == torch.bfloat16
    assert rel(bf16, reference) < 0.03
    assert rel(fp8, reference) < 0.15


def test_lora_gradients_through_fp8_layers_equal_those_of_the_same_rounded_weights_in_full_precision():
    """The custom backward widens the 8-bit weight again: it must give exactly the gradients a plain fp32
    U-Net holding the rounded weights gives (fp32 compute, so only summation order differs)."""
    fp8 = tiny(fp8=True)
    rounded = tiny()
    for plain, stored in zip(layers(rounded["unet"]), layers(fp8["unet"])):
        plain.weight.data = widen(stored.weight, stored.weight_scale, torch.float32)
    out8, grads8, _ = lora_step(fp8, autocast=False)
    out, grads, _ = lora_step(rounded, autocast=False)
    assert rel(out8, out) < 1e-5 and rel(grads8, grads) < 1e-4


@pytest.fixture(scope="module")
def bf16_and_fp8_steps():
    return lora_step(tiny(torch.bfloat16), autocast=True), lora_step(tiny(torch.bfloat16, fp8=True), autocast=True)


def test_lora_gradients_through_fp8_layers_match_the_bf16_ones_within_tolerance(bf16_and_fp8_steps):
    """Measured under bf16 autocast (as training runs): bf16 base vs fp32 base 3.5 % relative L2 of all LoRA
    gradients, fp8 base vs bf16 base 18 % (the backward goes through the rounded weights twice: forward
    activations and input gradients), cosine 0.984. The optimizer's step direction is what matters."""
    (_, bf16, _), (_, fp8, _) = bf16_and_fp8_steps
    assert fp8.dtype == torch.float32 and fp8.shape == bf16.shape
    assert rel(fp8, bf16) < 0.3
    assert torch.nn.functional.cosine_similarity(fp8, bf16, dim=0) > 0.95


def test_autograd_keeps_no_widened_weight_between_forward_and_backward(bf16_and_fp8_steps):
    """Activation bytes autograd saves (the model's own tensors not counted): 5.27 MB with the bf16 base,
    5.26 MB with fp8. Widening, then calling F.linear/F.conv2d under autograd would keep a bf16 copy of
    every weight until backward: 9.69 MB (measured by switching the custom Function off)."""
    (_, _, bf16), (_, _, fp8) = bf16_and_fp8_steps
    assert bf16 > 0
    assert fp8 <= bf16


def test_inference_without_gradients_and_a_moved_module_still_work():
    comps = tiny(torch.bfloat16, fp8=True)
    unet = copy.deepcopy(comps["unet"])
    with torch.no_grad():
        first = unet(*[t.bfloat16() if t.is_floating_point() else t for t in unet_inputs(unet)]).sample
    unet.to("meta")  # a device move: the 8-bit weights and their scales follow
    out = unet(*[(t.bfloat16() if t.is_floating_point() else t).to("meta") for t in unet_inputs(unet)]).sample
    assert out.shape == first.shape and torch.isfinite(first).all()


def test_fp8_is_for_frozen_layers_that_no_lora_wraps_yet():
    comps = tiny()
    lora_on(comps)
    with pytest.raises(RuntimeError, match="before applying a network"):
        to_fp8(comps["unet"], torch.float32)
    with pytest.raises(ValueError, match="only frozen weights"):
        to_fp8(nn.Linear(4, 4), torch.float32)


def test_a_lora_run_with_fp8_base_finishes_and_writes_a_lora_verify_accepts(tmp_path, tiny_model_dir):
    model = tiny_model_dir("sd1")
    config = lora_config(model, make_dataset(tmp_path / "data"), tmp_path / "out", fp8_base=True,
                         mixed_precision="bf16", epoch=1, sample_every_n_epochs=1,
                         sample_prompts="toy, red circle --w 64 --h 64 --s 2 --d 1")
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 0, err[-3000:]
    assert "fp8_base:" in err and "GiB saved" in err
    (saved,) = [e for e in events if e["type"] == "saved"]
    assert saved["verified"]
    assert len(list((tmp_path / "out" / "sample").glob("*.png"))) == 1
    verify = trainer_cli("verify", saved["path"], "--base", str(model), timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_textual_inversion_run_with_fp8_base_learns_its_embedding(tmp_path, tiny_model_dir):
    from trainer.config import parse_config
    from trainer.kinds.embedding_files import read_embedding

    values = dict(pretrained_model_name_or_path=str(tiny_model_dir("sd1")),
                  train_data_dir=str(make_dataset(tmp_path / "data")), output_dir=str(tmp_path / "out"),
                  output_name="mytok", token_string="mytok", init_word="toy", learning_rate=5e-2, epoch=1,
                  resolution="64", enable_bucket=False, train_batch_size=2, optimizer="AdamW",
                  lr_scheduler="constant", lr_warmup=0, mixed_precision="bf16", seed=7, cache_latents=True,
                  num_cpu_threads_per_process=1, save_precision="float", fp8_base=True)
    rc, events, err = run_trainer(write_config(parse_config("textual_inversion", values), tmp_path / "ti.json"))
    assert rc == 0, err[-3000:]
    assert "fp8_base:" in err
    learned = read_embedding(tmp_path / "out" / "mytok.safetensors", num_text_encoders=1).vectors[0]
    from trainer.models import load_base_model

    base = load_base_model(tiny_model_dir("sd1"))
    tokenizer, encoder = base.tokenizers[0], base.text_encoders[0]
    start = encoder.get_input_embeddings().weight[tokenizer("toy", add_special_tokens=False).input_ids[0]]
    assert torch.isfinite(learned).all() and not torch.allclose(learned[0], start, atol=1e-3)


def test_fp8_base_unet_keeps_the_text_encoders_wide_and_trains(tmp_path, tiny_model_dir):
    """Kohya's "fp8 base unet": only the U-Net / transformer in 8 bits (FLUX's T5 loses more in 8 bits)."""
    from safetensors import safe_open

    from trainer.config import config_for
    from trainer.models import load_base_model
    from trainer.train.setup import fp8_modules

    base = load_base_model(tiny_model_dir("sd1"))
    assert fp8_modules(config_for("lora", fp8_base_unet=True), base) == [base.unet]
    assert fp8_modules(config_for("lora", fp8_base=True, fp8_base_unet=True), base) == [base.unet]
    assert fp8_modules(config_for("lora", fp8_base=True), base) == [base.unet, *base.text_encoders]
    assert fp8_modules(config_for("lora"), base) == []

    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), tmp_path / "out",
                         fp8_base_unet=True, mixed_precision="bf16", epoch=1)
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 0, err[-3000:]
    assert "(the U-Net / transformer only)" in err
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert (meta["ss_fp8_base"], meta["ss_fp8_base_unet"]) == ("True", "True")
