"""What `fp8_base` saves: base-weight bytes (SD1.5, SDXL) and, on a full-size SD1.5 U-Net, the bytes autograd
keeps for one LoRA training step and how far the output moves (CPU).

    .venv/bin/python bench/fp8_memory.py [--resolution 512] [--rank 16] [--skip-step]

1. Weights: U-Net and text encoders of ``configs/models/sd15`` and ``sdxl-base`` are built on the meta device
   (shapes only), cast to bf16 and converted by ``trainer.models.fp8.to_fp8``; bytes = numel × element size,
   fp32 scales included.
2. Step: the SD1.5 U-Net with random weights (seed 0) in real memory, a kohya LoRA (``create_network``, rank
   ``--rank``, LoCon off) with random up weights, latents 1×4×(res/8)², 77 text tokens, t=500, under bf16
   autocast as training runs; loss = mean(out²), one backward. "saved" = bytes of the tensors autograd keeps
   for backward (``saved_tensors_hooks``), each storage once, the model's own weights and scales not
   counted. Runs: fp32 base (reference output), bf16 base, fp8 base, and fp8 with the custom autograd
   Function switched off ("naive": widen, then F.linear/F.conv2d) to show what the Function avoids.
   Relative error = ‖a − b‖ / ‖b‖ over the whole output. Random weights are not a trained model's, so the
   error is an indication only. Seconds are CPU wall time, for orientation, not a speed claim.
Prints one JSON line per measurement, then a small table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trainer.models.fp8 as fp8  # noqa: E402
from trainer.models.registry import get_architecture  # noqa: E402

GIB = 2**30


def build(arch_name: str, empty: bool) -> dict:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from trainer.models.components import build_text_encoder

    arch = get_architecture(arch_name)
    with init_empty_weights() if empty else torch.device("cpu"):
        parts = {"unet": UNet2DConditionModel.from_config(arch.config("unet"))}
        with init_empty_weights():  # the step trains the U-Net only: its text encoders need shapes only
            for folder in arch.text_encoder_folders:
                parts[folder] = build_text_encoder(arch.config(folder))
    return parts


def param_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def weight_table(arch_name: str) -> list[dict]:
    rows = []
    for part, module in build(arch_name, empty=True).items():
        torch.nn.Module.to(module, dtype=torch.bfloat16).requires_grad_(False)
        bf16 = param_bytes(module)
        report = fp8.to_fp8(module, torch.bfloat16)
        rows.append({"bench": "weights", "model": arch_name, "part": part, "layers": report.layers,
                     "bf16_bytes": bf16, "fp8_bytes": bf16 - report.saved_bytes,
                     "converted_bf16": report.bytes_before, "converted_fp8": report.bytes_after})
    return rows


def lora_step(unet, net, x, t, hidden, autocast: bool):
    """(output, saved bytes, seconds) of one forward + backward with the LoRA applied."""
    model = {p.untyped_storage().data_ptr() for m in (unet, net) for p in m.parameters()}
    model |= {m.weight_scale.untyped_storage().data_ptr() for m in unet.modules() if fp8.is_fp8(m)}
    sizes: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in model:
            sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    for p in net.parameters():
        p.grad = None
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = unet(x, t, hidden).sample
    out.float().square().mean().backward()
    return out.detach().float(), sum(sizes.values()), time.perf_counter() - start


def step_rows(resolution: int, rank: int) -> list[dict]:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trainer.networks import create_network

    torch.manual_seed(0)
    parts = build("sd15", empty=False)
    unet = parts["unet"].requires_grad_(False).eval()
    unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA, as the trainer's default (set_attention)
    net = create_network({"unet": unet, "text_encoder": parts["text_encoder"], "family": "sd1"},
                         network_dim=rank, network_alpha=rank, train_text_encoder=False)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.normal_(0, 0.02)  # a trained-looking LoRA: every weight gets a gradient
    g = torch.Generator().manual_seed(1)
    side = resolution // 8
    x = torch.randn(1, 4, side, side, generator=g)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500])

    net.apply_to()
    with torch.no_grad():
        reference = unet(x, t, hidden).sample.float()
    net.restore()
    rows, outputs = [], {}
    torch.nn.Module.to(unet, dtype=torch.bfloat16)
    for base in ("bf16", "fp8", "fp8_naive"):
        if base == "fp8":
            report = fp8.to_fp8(unet, torch.bfloat16)
        net.apply_to()
        needs_graph = fp8._needs_graph
        if base == "fp8_naive":
            fp8._needs_graph = lambda x, bias: False  # widen, then let autograd save the widened weight
        try:
            out, saved, seconds = lora_step(unet, net, x, t, hidden, autocast=True)
        finally:
            fp8._needs_graph = needs_graph
            net.restore()
        outputs[base] = out
        row = {"bench": "step", "model": "sd15", "resolution": resolution, "rank": rank, "base": base,
               "unet_param_bytes": param_bytes(unet), "saved_bytes": saved, "seconds": round(seconds, 1),
               "rel_err_vs_fp32": rel(out, reference)}
        if base != "bf16":
            row["rel_err_vs_bf16"] = rel(out, outputs["bf16"])
        if base == "fp8":
            row["fp8_layers"] = report.layers
        rows.append(row)
    return rows


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(((a - b).norm() / b.norm()).item(), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--skip-step", action="store_true", help="only the weight bytes (no full-size model in RAM)")
    args = p.parse_args()
    rows = weight_table("sd15") + weight_table("sdxl-base")
    if not args.skip_step:
        rows += step_rows(args.resolution, args.rank)
    for row in rows:
        print(json.dumps(row))
    print("\n| model | part | layers | bf16 GiB | fp8 GiB |\n|---|---|---|---|---|")
    for r in (r for r in rows if r["bench"] == "weights"):
        print(f"| {r['model']} | {r['part']} | {r['layers']} | {r['bf16_bytes'] / GIB:.3f} | "
              f"{r['fp8_bytes'] / GIB:.3f} |")
    steps = [r for r in rows if r["bench"] == "step"]
    if steps:
        print(f"\nSD1.5 U-Net, {args.resolution}px batch 1, LoRA r{args.rank}, bf16 autocast, one forward+backward:")
        print("| base | U-Net GiB | saved for backward GiB | rel. error vs fp32 | vs bf16 | s |")
        print("|---|---|---|---|---|---|")
        for r in steps:
            print(f"| {r['base']} | {r['unet_param_bytes'] / GIB:.3f} | {r['saved_bytes'] / GIB:.3f} | "
                  f"{r['rel_err_vs_fp32']:.4f} | {r.get('rel_err_vs_bf16', 0):.4f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
