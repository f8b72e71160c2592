"""Training-step speed: the trainer's own step against the reference recipe, same configs, same run.

The reference is ../shared/bench/ref_train_bench.py (plain diffusers + peft, as in the diffusers
example scripts). It is copied into bench/_ref/ (git-ignored) and imported from there, so both sides
build the same architectures from the same config dicts: SD1.5-shape 512 LoRA r16 at batch 1/4/8,
SDXL-shape 1024 batch 1 (without and with memory savers: the reference checkpoints and uses AdamW8bit,
the trainer adds fp8_base and its gradient_checkpointing_mode), and the SD1.5 full fine-tune at batch 4
with AdamW8bit; bf16, cached latents. Two rows run the SD1.5 text encoder every step on both sides:
`sd15-lora-b4+te-each-step` (in the default set: a frozen encoder, but the trainer's caption memo is
off, as when shuffle_caption or caption dropout changes the captions every step; the reference runs
the encoder every step anyway) and `sd15-lora-b4-te` (a text-encoder LoRA trains, forward and
backward). Both run in this process, interleaved round by round (ours, reference, ours, reference, …
at least 3 rounds), and the median step time of each is compared. The
trainer side is the step function the trainer itself uses, configured by a `LoraConfig` (the option
schema's defaults, e.g. compile / cuda_graphs "auto", except where a flag or the recipe says otherwise:
constant LR without warm-up, as the reference). Memory verdicts use reserved memory (what the card must
hold). Figures live in docs/benchmarks.md.

    python bench/train_bench.py --tiny            # CPU smoke run on tiny shapes
    python bench/train_bench.py                   # GPU: the real shapes
    python bench/train_bench.py --only sd15-lora-b1,sdxl-lora-b1 --steps 30 --rounds 3

Prints one JSON line per configuration and a table: samples/s, ms/step, peak GiB (CUDA) and
ratio = trainer ms / reference ms (below 1 is faster), and whether issue 9's H100 target is met.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import statistics
import sys
import time
import types
import typing
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.table import print_table  # noqa: E402
from trainer.config import LoraConfig  # noqa: E402  (the option schema: the bench's defaults are the trainer's)

DEFAULTS = LoraConfig()
MIN_ROUNDS = 3
# sd15-lora-b4-te is left out by default: the reference's text-encoder adapter needs peft >= 0.22 with
# transformers 5 (pass it with --only where that is installed)
DEFAULT_CONFIGS = ("sd15-lora-b1,sd15-lora-b4,sd15-lora-b4+te-each-step,sd15-lora-b8,sdxl-lora-b1,sdxl-lora-b1-gc,"
                   "sd15-full-b4-adamw8")
# a row of ours that differs from the reference config it is measured against: NAME+VARIANT
TE_EACH_STEP = "+te-each-step"  # the frozen text encoder runs every step (no memo of its outputs)


def load_reference():
    local = ROOT / "bench" / "_ref" / "ref_train_bench.py"
    shared = ROOT.parent / "shared" / "bench" / "ref_train_bench.py"
    if shared.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, local)
    if not local.is_file():
        raise SystemExit(f"reference benchmark not found: put ref_train_bench.py in {local.parent}")
    spec = importlib.util.spec_from_file_location("ref_train_bench", local)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedText(torch.nn.Module):
    """SDXL in the reference gets fixed conditioning tensors; a frozen text encoder in the trainer
    is likewise a lookup of remembered outputs (TextConditioner's memo), so both skip the encoders."""

    def __init__(self, hidden, pooled):
        super().__init__()
        self.hidden, self.pooled = hidden, pooled

    def forward(self, captions):
        return self.hidden, self.pooled


def build_trainer_step(ref, cfg, tiny: bool, device, opts: LoraConfig, channels_last: bool = False,
                       te_each_step: bool = False):
    """The trainer's own pieces on the reference's architecture: kohya LoRA (or the whole U-Net for the
    full fine-tune configs), Denoiser, the step function the trainer uses (captured or eager).

    opts: the trainer's options for this run (compile, cuda_graphs, gradient_checkpointing_mode, fp8_base,
    lr_scheduler, loss_type, max_grad_norm; see ours_options). te_each_step: the text encoder runs every
    step even when frozen (the memo of its outputs off), as the reference always does for SD1.5."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainer.networks import create_network
    from trainer.train.compile import compile_enabled, compile_unet
    from trainer.train.graphs import make_step_fn
    from trainer.train.loop import Denoiser, StepContext
    from trainer.train.optimizers import build_optimizer
    from trainer.train.precision import enable_gradient_checkpointing, set_attention
    from trainer.train.schedulers import build_scheduler
    from trainer.train.text import TextConditioner

    name, arch, mode, batch, res, cache, gckpt, optim, te_lora, precision = cfg
    res = 32 if tiny else res
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    xl = arch == "sdxl" and not tiny
    full = mode == "full"
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(ref.TINY_UNET if tiny else ref.SDXL_UNET if xl else ref.SD15_UNET))
        te = CLIPTextModel(CLIPTextConfig(**(ref.TINY_CLIP if tiny else ref.CLIP_L)))
    te.requires_grad_(False).to(dtype).eval()
    if full:  # fp32 master weights under autocast, as the reference and the DreamBooth/fine-tune kinds
        unet.requires_grad_(True)
        network = None
        groups = [{"params": list(unet.parameters()), "lr": 1e-4}]
    else:
        unet.requires_grad_(False).to(dtype)
        if opts.fp8_base:
            from trainer.models.fp8 import to_fp8

            to_fp8(unet, dtype)
        # the SDXL configs get fixed conditioning (FixedText), so no text encoder takes part there
        network = create_network(unet, [] if xl else [te], "sdxl" if xl else "sd1", network_dim=16,
                                 network_alpha=16, train_text_encoder=te_lora and not xl)
        network.apply_to()
        network.to(device)
        groups = network.prepare_optimizer_params(None, None, 1e-4)
    if gckpt:
        enable_gradient_checkpointing(unet, [te], False, mode=opts.gradient_checkpointing_mode)
    set_attention(unet, "sdpa", print)
    if channels_last:  # NHWC convolutions (tensor-core friendly in bf16)
        unet.to(memory_format=torch.channels_last)
    if compile_enabled(opts.compile, device, opts.cuda_graphs):  # the trainer's call, same code path
        compile_unet(unet, print)
    g = torch.Generator(device=device).manual_seed(1)
    lat_hw = res // 8
    latents = torch.randn(batch, 4, lat_hw, lat_hw, generator=g, device=device) / 0.18215
    if channels_last:
        latents = latents.contiguous(memory_format=torch.channels_last)
    captions = [f"caption {i}" for i in range(batch)]
    if xl and te_each_step:
        raise ValueError(f"{name}{TE_EACH_STEP}: the SDXL configs have no text encoder on either side")
    if xl:
        text = FixedText(torch.randn(batch, 77, 2048, device=device, dtype=dtype),
                         torch.randn(batch, 1280, device=device, dtype=dtype))
    else:
        ids = torch.randint(0, 1000, (batch, 77), generator=g, device=device)
        by_caption = {c: ids[i:i + 1] for i, c in enumerate(captions)}
        text = TextConditioner("sd1", [te], [None], memoize=not (te_lora or te_each_step), grad_enabled=lambda: te_lora,
                               tokenize=lambda caps: [torch.cat([by_caption[c] for c in caps])])
    optimizer = build_optimizer("AdamW8bit" if optim == "adamw8bit" else "AdamW", groups, 1e-4, "", device)
    scheduler = build_scheduler(opts, optimizer, 10**6)
    model, optimizer = accelerator.prepare(Denoiser(unet, text, network), optimizer)
    ctx = StepContext(accelerator, model, optimizer, scheduler, [p for gr in groups for p in gr["params"]],
                      DDPMScheduler(num_train_timesteps=1000), opts, max_grad_norm=opts.max_grad_norm, sdxl=xl)
    data = {"latents": latents, "captions": captions, "loss_weights": torch.ones(batch, device=device)}
    if xl:
        data.update(original_sizes_hw=torch.tensor([[res, res]] * batch), crop_top_lefts=torch.zeros(batch, 2),
                    target_sizes_hw=torch.tensor([[res, res]] * batch))
    trainable = sum(p.numel() for p in ctx.params)
    step_fn = make_step_fn(ctx, opts, lambda m: print(f"[{name}] {m}", file=sys.stderr))
    counter = iter(range(10**9))
    return (lambda: step_fn([data], next(counter))), trainable, network if network is not None else unet


def time_steps(step, steps: int, warmup: int, device) -> tuple[float, float | None]:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)  # one sync at the end, like the reference
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / steps * 1000
    return ms, *peaks(device)


def peaks(device) -> tuple[float | None, float | None]:
    """Peak GiB since the last reset: allocated (what the reference reports) and reserved by the caching
    allocator (what the card must hold; a captured graph's private pool shows here, not in allocated)."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def run_reference(ref, cfg, args, device):
    ns = types.SimpleNamespace(tiny=args.tiny, steps=args.steps, warmup=args.warmup, flops=False, compile=False)
    out = ref.run(cfg, ns, device)  # it resets the peak statistics before its timed steps
    return out["ms_step"], out["peak_gib"], peaks(device)[1], out["trainable_m"]


def bench_config(ref, cfg, args, device, te_each_step: bool = False) -> dict:
    name, batch = cfg[0] + (TE_EACH_STEP if te_each_step else ""), cfg[3]
    ref_ms, ours_ms, ref_peak, ours_peak, ref_res, ours_res = [], [], [], [], [], []
    trainable_ref = trainable_ours = None
    opts = ours_options(cfg, args)
    for _ in range(args.rounds):  # interleaved: ours, reference, ours, reference, …
        step, trainable_ours, _ = build_trainer_step(ref, cfg, args.tiny, device, opts, args.channels_last,
                                                     te_each_step)
        ms, peak, reserved = time_steps(step, args.steps, args.warmup, device)
        ours_ms.append(ms)
        ours_peak.append(peak)
        ours_res.append(reserved)
        del step
        _cleanup(device)
        if not args.no_ref:
            ms, peak, reserved, trainable_ref = run_reference(ref, cfg, args, device)
            ref_ms.append(ms)
            ref_peak.append(peak)
            ref_res.append(reserved)
            _cleanup(device)
    r = statistics.median(ref_ms) if ref_ms else None
    o = statistics.median(ours_ms)
    ours_reserved_gib = _max_gib(ours_res)
    return dict(name=name, batch=batch, ours=describe(opts, args.channels_last, te_each_step),
                target=target_verdict(name, batch, o, ours_reserved_gib),
                ref_ms=_round(r), ours_ms=round(o, 2), ratio=r and round(o / r, 3),
                ref_samples_s=r and round(batch * 1000 / r, 2), ours_samples_s=round(batch * 1000 / o, 2),
                ref_peak_gib=_max_gib(ref_peak),
                ours_peak_gib=_max_gib(ours_peak),
                ref_reserved_gib=_max_gib(ref_res),
                ours_reserved_gib=ours_reserved_gib,
                ref_trainable_m=trainable_ref, ours_trainable_m=round(trainable_ours / 1e6, 2),
                ref_ms_rounds=[round(x, 2) for x in ref_ms], ours_ms_rounds=[round(x, 2) for x in ours_ms])


# issue 9's targets on an H100 (samples/s, peak GiB); the savers config is measured against the
# reference's checkpointing + AdamW8bit run
TARGETS = {"sd15-lora-b1": (25, 3.0), "sd15-lora-b8": (150, 12.0), "sdxl-lora-b1": (4, 14.0),
           "sdxl-lora-b1-gc": (2, 6.0), "sd15-full-b4-adamw8": (50, 11.0)}


def ours_options(cfg, args) -> LoraConfig:
    """The trainer's options for this config: the schema's defaults, the flags' choices, the reference's
    recipe (constant LR, no warm-up, its precision); memory savers (fp8_base) go with the checkpointing
    configs."""
    gckpt, mode, precision = cfg[6], cfg[2], cfg[9]
    fp8 = args.fp8 == "on" or (args.fp8 == "auto" and gckpt and mode == "lora")
    return LoraConfig(compile=args.compile, cuda_graphs=args.cuda_graphs, gradient_checkpointing_mode=args.gc_mode,
                      fp8_base=bool(fp8), mixed_precision=precision, lr_scheduler="constant", lr_warmup=0)


def describe(opts: LoraConfig, channels_last: bool = False, te_each_step: bool = False) -> str:
    parts = [f"graphs {opts.cuda_graphs}", f"compile {opts.compile}"] + (["text encoder every step"]
                                                                          if te_each_step else [])
    extra = (["fp8_base"] if opts.fp8_base else []) + (["channels_last"] if channels_last else [])
    if torch.backends.cudnn.benchmark:
        extra.append("cudnn.benchmark")
    return ", ".join(parts + extra + [f"gc {opts.gradient_checkpointing_mode}"])


def target_verdict(name: str, batch: int, ms: float, reserved: float | None) -> str | None:
    """Against reserved memory: what the card must hold (a captured graph's pool is not in allocated)."""
    if name not in TARGETS or reserved is None:
        return None
    samples, gib = TARGETS[name]
    got = batch * 1000 / ms
    ok = got >= samples and reserved <= gib
    return f"{'met' if ok else 'missed'} (≥ {samples} samples/s at ≤ {gib} GiB reserved)"


def _round(x):
    return None if x is None else round(x, 2)


def _max_gib(rounds: list) -> float | None:
    """The largest of the rounds' peaks (None off CUDA, or when that side did not run)."""
    return _round(max(rounds)) if rounds and rounds[0] is not None else None


def _cleanup(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rounds(text: str) -> int:
    n = int(text)
    if n < MIN_ROUNDS:
        raise argparse.ArgumentTypeError(f"at least {MIN_ROUNDS} rounds: one round is noise (the same reference "
                                         "measured 237 and 190 ms in one GPU run)")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU run")
    ap.add_argument("--only", default=DEFAULT_CONFIGS, help="comma-separated config names of the reference; "
                    f"NAME{TE_EACH_STEP} runs our frozen text encoder every step too")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=_rounds, default=MIN_ROUNDS,
                    help=f"interleaved rounds (at least {MIN_ROUNDS}); the median is reported")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    for flag, option in (("--compile", "compile"), ("--cuda-graphs", "cuda_graphs"),
                         ("--gc-mode", "gradient_checkpointing_mode")):
        field = LoraConfig.model_fields[option]  # choices, default and help from the option schema
        ap.add_argument(flag, choices=typing.get_args(field.annotation), default=getattr(DEFAULTS, option),
                        help=f"the trainer's {option} (default {getattr(DEFAULTS, option)}): "
                             + (field.description or "").replace("%", "%%"))
    ap.add_argument("--fp8", choices=("auto", "on", "off"), default="auto",
                    help="fp8_base for LoRA configs (auto = with the checkpointing configs only)")
    ap.add_argument("--channels-last", action="store_true", help="U-Net weights and latents in NHWC")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference (a variant of an earlier run)")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    ref = load_reference()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(json.dumps(dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          threads=torch.get_num_threads(), torch=torch.__version__, tiny=args.tiny,
                          compile=args.compile, cuda_graphs=args.cuda_graphs, gc_mode=args.gc_mode,
                          fp8=args.fp8)), flush=True)
    wanted = [n for n in args.only.split(",") if n]
    rows = []
    by_name = {cfg[0]: cfg for cfg in ref.CONFIGS}
    unknown = [n for n in wanted if n.removesuffix(TE_EACH_STEP) not in by_name]
    if unknown:
        ap.error(f"unknown config(s) {', '.join(unknown)}; the reference has {', '.join(by_name)} "
                 f"(each may end in {TE_EACH_STEP})")
    for wanted_name in wanted:
        cfg = by_name[wanted_name.removesuffix(TE_EACH_STEP)]
        try:
            row = bench_config(ref, cfg, args, device, te_each_step=wanted_name.endswith(TE_EACH_STEP))
        except Exception as exc:  # one failing config must not lose the others
            row = dict(name=wanted_name, error=repr(exc)[:300])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print_table([("config", "name", "26"), ("ref ms", "ref_ms", ">8"), ("ours ms", "ours_ms", ">8"),
                 ("ratio", "ratio", ">6"), ("ref smp/s", "ref_samples_s", ">9"), ("our smp/s", "ours_samples_s", ">9"),
                 ("ref GiB", "ref_peak_gib", ">7"), ("our GiB", "ours_peak_gib", ">7"),
                 ("ref res", "ref_reserved_gib", ">7"), ("our res", "ours_reserved_gib", ">7"), ("target", "target", "")],
                rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
