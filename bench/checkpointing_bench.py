"""Gradient checkpointing: activation memory, work and step time of none / selective / full, on CPU.

SD1.5-shape U-Net (the reference's SD15_UNET config, random weights) with the trainer's kohya LoRA r16,
bf16 weights under bf16 autocast (as accelerate runs it), 512 px = 64×64 latents, batch 1. Per mode:

  act_mib    activation memory at the end of the forward pass: bytes of every tensor storage created
             during the forward that is still alive (what the autograd graph and the checkpoints keep)
  peak_mib   the most live bytes at any time of forward + backward (a block's recomputation included)
  tflop, gb, kernels   matmul/conv/attention work, bytes read+written by all ops, op count of the step
  est_gpu    a roofline estimate of the step on an H100 relative to none (per op: max(flops / 400 TFLOP/s,
             bytes / 2.5 TB/s) + 4 µs). Eager GPU steps are slower than this (overheads); a guide only.
  cpu_ms     forward+backward time, median (and min) over --steps, the modes interleaved step by step.
             CPU backward is far slower than forward, so recomputation costs less here than on a GPU.

Live bytes are counted by a TorchDispatchMode that sees every op output (inside checkpoints too) and a
finalizer on each new storage. saved_tensors_hooks cannot count them here: a checkpoint installs its own
hooks, and only the innermost hooks see what is saved inside it.

    python bench/checkpointing_bench.py                     # SD1.5 512 b1: memory, work, CPU time
    python bench/checkpointing_bench.py --sdxl              # + SDXL 1024 b1: memory and work, 1 step each
    python bench/checkpointing_bench.py --tiny --steps 2    # smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import weakref
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.utils.flop_counter as fc
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.table import print_table  # noqa: E402

MODES = ("none", "selective", "full")
MIB = 2**20
aten = torch.ops.aten


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created by ops while active and not yet freed; `peak` is the maximum."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            # views and in-place results share an input's storage: counted where it was made, or a parameter
            if id(t.untyped_storage()) not in inputs:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage):
        key = id(storage)
        if key in self._seen:
            return
        self._seen.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def _free(self, key, nbytes):
        self._seen.discard(key)
        self.live -= nbytes


def _cpu_flash(q, k, v, *args, out_val=None, **kwargs):
    return fc.sdpa_flop_count(q.shape, k.shape, v.shape)


def _cpu_flash_backward(grad, q, k, v, *args, out_val=None, **kwargs):
    return fc.sdpa_backward_flop_count(grad.shape, q.shape, k.shape, v.shape)


FLOPS = {**fc.flop_registry, aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
         aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward}


class Work(TorchDispatchMode):
    """FLOPs, bytes read + written and kernels of the ops run (views excluded), and a roofline time."""

    def __init__(self, flops_s=400e12, bytes_s=2.5e12, launch_s=4e-6):
        super().__init__()
        self.flops = self.bytes = self.kernels = 0
        self.seconds = 0.0
        self._rates = flops_s, bytes_s, launch_s

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins, outs = _tensors((args, kwargs)), _tensors(out)
        in_storages = {t.untyped_storage().data_ptr() for t in ins}
        counted = FLOPS.get(func._overloadpacket)
        if not counted and not func._schema.is_mutable and all(
                t.untyped_storage().data_ptr() in in_storages for t in outs):
            return out  # a view: no kernel runs
        flops = counted(*args, **kwargs, out_val=out) if counted else 0
        nbytes = sum(t.numel() * t.element_size() for t in ins + outs)
        flops_s, bytes_s, launch_s = self._rates
        self.flops, self.bytes, self.kernels = self.flops + flops, self.bytes + nbytes, self.kernels + 1
        self.seconds += max(flops / flops_s, nbytes / bytes_s) + launch_s
        return out


def build_unet(shape: str, mode: str, seed: int = 0):
    """U-Net of the reference's config in bf16 with the trainer's kohya LoRA (fp32) applied."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from bench.train_bench import load_reference
    from trainer.networks import create_network
    from trainer.train.precision import enable_gradient_checkpointing, set_attention

    diffusers_logging.set_verbosity_error()  # the bf16 cast warns about from_pretrained, not our case
    ref = load_reference()
    config = {"sd15": ref.SD15_UNET, "sdxl": ref.SDXL_UNET, "tiny": ref.TINY_UNET}[shape]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).requires_grad_(False).to(torch.bfloat16)
    network = create_network(unet, [], "sdxl" if shape == "sdxl" else "sd1", network_dim=16, network_alpha=16,
                             train_text_encoder=False)
    network.apply_to()
    for lora in network.loras:  # a trained LoRA: zero-initialised up weights would hide its cost
        torch.nn.init.normal_(lora.lora_up.weight, std=0.01)
    network.requires_grad_(True)
    set_attention(unet, "sdpa", print)
    if mode != "none":
        enable_gradient_checkpointing(unet, [], False, mode=mode)
    unet.train()
    return unet, network


def make_inputs(unet, shape: str, batch: int):
    g = torch.Generator().manual_seed(1)
    cfg = unet.config
    res = {"sd15": 512, "sdxl": 1024, "tiny": 32}[shape]
    latents = torch.randn(batch, 4, res // 8, res // 8, generator=g)
    hidden = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g, dtype=torch.bfloat16)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, dtype=torch.bfloat16),
                                       "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * batch)}
    return latents, torch.full((batch,), 500), hidden, kwargs


def step(unet, inputs, live: LiveBytes | None = None, work: Work | None = None) -> float:
    """One forward + backward under bf16 autocast; returns the live bytes after the forward (with `live`)."""
    latents, timesteps, hidden, kwargs = inputs
    with ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", torch.bfloat16))
        for mode in (live, work):
            if mode is not None:
                stack.enter_context(mode)
        pred = unet(latents, timesteps, hidden, **kwargs).sample
        loss = torch.nn.functional.mse_loss(pred.float(), latents)
        after_forward = live.live if live else 0
        loss.backward()
    return after_forward


def measure_memory(shape: str, batch: int) -> dict[str, dict]:
    """One metered step per mode: memory, work, and the LoRA gradients (to check they agree)."""
    rows = {}
    for mode in MODES:
        unet, network = build_unet(shape, mode)
        live, work = LiveBytes(), Work()
        act = step(unet, make_inputs(unet, shape, batch), live, work)
        rows[mode] = dict(act_mib=act / MIB, peak_mib=live.peak / MIB, tflop=work.flops / 1e12,
                          gb=work.bytes / 1e9, kernels=work.kernels, est_s=work.seconds,
                          grad=[p.grad.float().clone() for p in network.parameters() if p.grad is not None])
        del unet, network
    return rows


def measure_time(shape: str, batch: int, steps: int) -> dict[str, list[float]]:
    """ms per forward+backward; the three models are built once and stepped in turn."""
    models = {mode: build_unet(shape, mode) for mode in MODES}
    inputs = make_inputs(models["none"][0], shape, batch)
    times = {mode: [] for mode in MODES}
    for i in range(steps + 1):  # the first round warms up
        for mode, (unet, network) in models.items():
            network.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step(unet, inputs)
            if i:
                times[mode].append((time.perf_counter() - t0) * 1000)
    return times


def report(shape: str, batch: int, memory: dict, times: dict | None) -> list[dict]:
    none = memory["none"]
    rows = []
    for mode in MODES:
        m = memory[mode]
        row = dict(shape=shape, batch=batch, mode=mode, act_mib=round(m["act_mib"], 1),
                   act_vs_none=round(m["act_mib"] / none["act_mib"], 3), peak_mib=round(m["peak_mib"], 1),
                   peak_vs_none=round(m["peak_mib"] / none["peak_mib"], 3), tflop=round(m["tflop"], 3),
                   gb=round(m["gb"], 2), kernels=m["kernels"], est_gpu_vs_none=round(m["est_s"] / none["est_s"], 3),
                   max_grad_diff_vs_none=max(float((a - b).abs().max()) for a, b in zip(none["grad"], m["grad"])))
        if times:
            med = {k: statistics.median(v) for k, v in times.items()}
            row.update(cpu_ms=round(med[mode], 1), cpu_ms_min=round(min(times[mode]), 1),
                       cpu_vs_none=round(med[mode] / med["none"], 3))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes instead of SD1.5 (smoke run)")
    ap.add_argument("--sdxl", action="store_true", help="also SDXL 1024 b1, memory and work only")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode (0 = no timing)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(dict(device="cpu", threads=torch.get_num_threads(), torch=torch.__version__)), flush=True)
    shapes = [("tiny" if args.tiny else "sd15", args.batch, args.steps)] + ([("sdxl", 1, 0)] if args.sdxl else [])
    rows = []
    for shape, batch, steps in shapes:
        memory = measure_memory(shape, batch)
        rows += report(shape, batch, memory, measure_time(shape, batch, steps) if steps else None)
    print_table([("shape", "shape", "5"), ("b", "batch", ">2"), ("mode", "mode", "9"), ("act MiB", "act_mib", ">8"),
                 ("x none", "act_vs_none", ">6"), ("peak MiB", "peak_mib", ">8"), ("x none", "peak_vs_none", ">6"),
                 ("TFLOP", "tflop", ">6"), ("GB", "gb", ">6"), ("kernels", "kernels", ">7"),
                 ("est GPU", "est_gpu_vs_none", ">7"), ("CPU ms", "cpu_ms", ">8"), ("x none", "cpu_vs_none", ">6")],
                rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
