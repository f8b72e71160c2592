"""FLUX.1 / SD3.5 LoRA training-step speed: the trainer's step against a reference recipe in the style of
diffusers' examples (train_dreambooth_lora_flux.py / _sd3.py: peft LoRA on the attention projections,
bf16, cached latents and text embeddings, flow-matching loss), same shapes, same process.

    python bench/dit_bench.py --tiny                    # CPU smoke run on the tiny test shapes
    python bench/dit_bench.py --only flux-lora-r16-1024 # GPU: FLUX.1-dev shape, 1024 px, rank 16, batch 1

The trainer side is the trainer's own pieces: Denoiser with the family's transformer call, kohya's LoRA
network on kohya's targets (every Linear of the blocks, so more modules than the reference's attention-only
LoRA), FlowMatchingObjective, train_step. Prints one JSON line per configuration: ms/step of each side,
ratio (trainer / reference, below 1 is faster) and peak GiB on CUDA. No GPU figures are recorded yet.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {  # name: (family, config folder, tiny folder, resolution, rank, batch)
    "flux-lora-r16-1024": ("flux", "flux-dev", "tiny-flux", 1024, 16, 1),
    "sd35m-lora-r16-1024": ("sd3", "sd35-medium", "tiny-sd3", 1024, 16, 1),
    "sd35l-lora-r16-1024": ("sd3", "sd35-large", "tiny-sd3", 1024, 16, 1),
}


def build_transformer(family: str, folder: str, device, dtype):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from trainer.models.registry import get_architecture

    arch = get_architecture(folder)
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    torch.manual_seed(0)
    with torch.device(device):
        model = cls.from_config(arch.config("transformer")).to(dtype)
    text_width = arch.config("transformer")["joint_attention_dim"]
    pooled = arch.config("transformer")["pooled_projection_dim"]
    return model.requires_grad_(False), text_width, pooled


def conditioning(family, batch, text_width, pooled, device, dtype, tiny):
    tokens = (16 if tiny else 512) if family == "flux" else (77 + (16 if tiny else 256))
    return (torch.randn(batch, tokens, text_width, device=device, dtype=dtype),
            torch.randn(batch, pooled, device=device, dtype=dtype))


def reference_step(family, model, latents, hidden, pooled, rank):
    """The diffusers example's loop body (no prior preservation, weighting_scheme none)."""
    from peft import LoraConfig

    from trainer.models.flux_forward import image_ids, pack, unpack

    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                 target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        noise = torch.randn_like(latents)
        sigma = torch.rand(latents.shape[0], device=latents.device)
        s = sigma.view(-1, 1, 1, 1).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        b, c, h, w = latents.shape
        with torch.autocast(latents.device.type, dtype=latents.dtype, enabled=latents.device.type == "cuda"):
            if family == "flux":
                guidance = torch.full((b,), 3.5, device=latents.device) if model.config.guidance_embeds else None
                out = model(hidden_states=pack(noisy), timestep=sigma, guidance=guidance, pooled_projections=pooled,
                            encoder_hidden_states=hidden, txt_ids=torch.zeros(hidden.shape[1], 3, device=latents.device),
                            img_ids=image_ids(h, w, latents.device, latents.dtype), return_dict=False)[0]
                pred = unpack(out, h, w)
            else:
                pred = model(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=hidden,
                             pooled_projections=pooled, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), (noise - latents).float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def trainer_step(family, model, latents, hidden, pooled, rank, device):
    from accelerate import Accelerator

    from trainer.models.dit import dit_family
    from trainer.networks import create_network
    from trainer.train.flow_matching import FlowMatchingObjective
    from trainer.train.loop import Denoiser, StepContext, train_step

    from trainer.config import config_for

    cfg = config_for("lora", **{"flux1_checkbox" if family == "flux" else "sd3_checkbox": True},
                     timestep_sampling="sigma", model_prediction_type="raw", guidance_scale=3.5,
                     discrete_flow_shift=3.0, weighting_scheme="uniform", loss_type="l2")
    network = create_network(model, [], family, network_dim=rank, network_alpha=rank, train_text_encoder=False)
    network.apply_to()
    network.to(device, dtype=torch.float32)
    call = dit_family(family).module("forward").make_denoise(types.SimpleNamespace(extra={}), cfg)
    fixed = torch.nn.Module()
    fixed.forward = lambda captions: (hidden, pooled)
    denoiser = Denoiser(model, fixed, network, call=call)
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no")
    opt = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    denoiser, opt = acc.prepare(denoiser, opt)
    fixed_obj = dit_family(family).objective_fixed
    ctx = StepContext(accelerator=acc, model=denoiser, optimizer=opt, lr_scheduler=sched,
                      params=list(network.parameters()), noise_scheduler=None, cfg=cfg,
                      objective=FlowMatchingObjective.from_config(cfg, **fixed_obj), latent_channels=latents.shape[1])
    batch = {"latents": latents, "captions": ["x"] * latents.shape[0],
             "loss_weights": torch.ones(latents.shape[0], device=device)}
    counter = iter(range(10 ** 9))
    return lambda: train_step(ctx, [batch], next(counter))


def time_it(step, steps, warmup, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bench(name, args, device) -> dict:
    family, folder, tiny_folder, res, rank, batch = CONFIGS[name]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    res = 64 if args.tiny else res
    out = {"config": name, "family": family, "resolution": res, "rank": rank, "batch": batch, "tiny": args.tiny}
    for side in ("reference", "trainer"):
        model, text_width, pooled_width = build_transformer(family, tiny_folder if args.tiny else folder, device, dtype)
        hidden, pooled = conditioning(family, batch, text_width, pooled_width, device, dtype, args.tiny)
        torch.manual_seed(1)
        latents = torch.randn(batch, 16, res // 8, res // 8, device=device, dtype=dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step = (reference_step(family, model, latents, hidden, pooled, rank) if side == "reference"
                else trainer_step(family, model, latents, hidden, pooled, rank, device))
        out[f"{side}_ms"] = round(time_it(step, args.steps, args.warmup, device), 2)
        out[f"{side}_peak_gib"] = (round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                                   if device.type == "cuda" else None)
        del model, step
    out["ratio"] = round(out["trainer_ms"] / out["reference_ms"], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--tiny", action="store_true", help="tiny test shapes (CPU smoke run)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    for name in args.only.split(","):
        print(json.dumps(bench(name.strip(), args, device)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
