"""Correctness guard for captured / compiled steps (issue 9): the same loss curve and LoRA weights as eager.

Builds the trainer's step three times from the same seed on the reference's architecture
(bench/train_bench.py build_trainer_step) — eager, cuda_graphs on, cuda_graphs + compile on — runs the
same batches for N steps and compares each variant with eager: the largest relative loss difference
per step and the weight difference relative to the size of the training update. bf16 kernels are not
bit-reproducible between eager and fused/captured code, so the verdict uses bf16-sized tolerances.

    python bench/graph_check.py                       # GPU: SD1.5-shape 512, batch 4
    python bench/graph_check.py --tiny                # CPU smoke run (graphs fall back to eager there)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import build_trainer_step, load_reference  # noqa: E402

from trainer.config import config_for  # noqa: E402  (train_bench put the repository on sys.path)

LOSS_RTOL = 5e-2     # per-step loss, relative (bf16 compute)
WEIGHT_RTOL = 5e-2   # |w_variant - w_eager| / |w_eager - w_start|


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def run_variant(ref, cfg, tiny, device, steps, **opts):
    # the schema's defaults, the reference's recipe (constant LR, no warm-up, its precision), eager unless asked
    chosen = dict(compile="off", cuda_graphs="off", lr_scheduler="constant", lr_warmup=0, mixed_precision=cfg[9])
    options = config_for("lora", **{**chosen, **opts})
    step, _, trained = build_trainer_step(ref, cfg, tiny, device, options)
    start = snapshot(trained)
    losses = [step() for _ in range(steps)]
    return [float(x) for x in losses], start, snapshot(trained)


def compare(base, other) -> dict:
    (l0, s0, w0), (l1, _, w1) = base, other
    loss_rel = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(l0, l1))
    update = torch.cat([(w0[k] - s0[k]).flatten() for k in w0]).norm()
    diff = torch.cat([(w1[k] - w0[k]).flatten() for k in w0]).norm()
    weight_rel = float(diff / update.clamp_min(1e-12))
    ok = loss_rel <= LOSS_RTOL and weight_rel <= WEIGHT_RTOL
    return dict(max_loss_rel=round(loss_rel, 5), weight_rel=round(weight_rel, 5), ok=ok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--config", default="sd15-lora-b4")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--no-compile", action="store_true", help="skip the graphs + compile variant")
    args = ap.parse_args(argv)
    ref = load_reference()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = next(c for c in ref.CONFIGS if c[0] == args.config)
    eager = run_variant(ref, cfg, args.tiny, device, args.steps)
    variants = {"graphs": dict(cuda_graphs="on")}
    if not args.no_compile:
        variants["graphs+compile"] = dict(cuda_graphs="on", compile="on")
    ok = True
    for name, opts in variants.items():
        row = dict(check=name, config=args.config, steps=args.steps, device=str(device),
                   **compare(eager, run_variant(ref, cfg, args.tiny, device, args.steps, **opts)))
        ok &= row["ok"]
        print(json.dumps(row), flush=True)
    print("graph check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
