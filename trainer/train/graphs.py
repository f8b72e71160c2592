"""Training steps replayed as CUDA graphs: one graph per micro-batch shape, one for the update.

Why: a Stable Diffusion step launches thousands of small kernels, and at batch 1–8 the GPU mostly
waits for Python to launch them (the reference recipe's step time barely moves with the batch size;
the figures are in docs/benchmarks.md). A captured graph replays every kernel of the step with one launch.

Captured per key (latent shape, conditioning shape, samples in the step, text-encoder gradients on or
off): noising, the denoiser forward, the loss and its backward, which accumulates into the
parameters' `.grad` — so in this mode gradients are zeroed in place and never set to None. When the
optimizer can be captured (torch's fused AdamW/Adam without fp16 loss scaling), clipping, the update
and zero_grad form a second graph; the learning rate reaches it through device tensors refreshed
from the (host-side) scheduler before each replay.
Outside the graphs: data loading, VAE encoding, the frozen text encoders' memo lookups, and the
step's noise and timesteps (drawn by `step_noise` exactly as in eager steps, so a step's random
numbers do not depend on this option).

Each key runs eagerly `warmup` times (on a side stream, as CUDA capture requires) before it is
captured; its first replay is checked against an eager run of the same micro-batch from the same RNG
state (loss, and gradients when they are small enough to copy). A capture error or a mismatch turns
graphs off for the rest of the run, with the reason in the log; training continues eagerly. So does
running out of memory beside the graphs (their pool keeps a step's memory reserved): the graphs are
freed and the step is redone normally.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Callable

import torch

from trainer.models.text import encode_prompt
from trainer.config.defaults import option

from .diffusion import finish_noise
from .faults import is_out_of_memory
from .loop import (StepContext, add_noise, batch_latents, batch_mask, clip_gradients, latent_shape, micro_loss,
                   sdxl_time_ids, step_noise, train_step)

logger = logging.getLogger(__name__)

CHECK_GRAD_BYTES = 1 << 30   # gradients up to this size are copied for the first-replay check
LOSS_RTOL, GRAD_RTOL = 2e-2, 5e-2  # bf16 kernels with atomics are not bit-reproducible; a wrong graph is far off


def cuda_graphs_wanted(setting: str, device: torch.device) -> bool:
    """auto: on with CUDA (on CPU there is nothing to capture)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def capture_blocker(ctx: StepContext, config) -> str | None:
    """Why this run cannot capture its steps; None when it can."""
    if ctx.device.type != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if ctx.accelerator.num_processes > 1:
        return "several training processes (gradients are all-reduced between them outside any graph)"
    if option(config, "module_dropout"):
        return "module_dropout picks the skipped modules on the CPU at every step"
    if config.training_type == "lora":
        from trainer.networks.registry import network_type

        if network_type(config.LoRA_type).random_ranks:
            return f"{config.LoRA_type} picks the trained ranks on the CPU at every step"
    return None


def update_blocker(ctx: StepContext) -> str | None:
    """Why the optimizer update stays eager (the forward/backward graphs are used regardless)."""
    inner = getattr(ctx.optimizer, "optimizer", ctx.optimizer)
    if getattr(ctx.accelerator, "scaler", None) is not None:
        return "fp16 loss scaling checks for overflow on the CPU"
    if type(inner) not in (torch.optim.AdamW, torch.optim.Adam):
        return f"{type(inner).__name__} keeps its step count on the CPU"
    if not all(g.get("fused") for g in inner.param_groups):
        return "only the fused AdamW kernel is captured"
    return None


def fused_backward_wanted(config) -> bool:
    from trainer.config.options_train import FullTrainingOptions  # DreamBooth / fine-tuning have the option

    return isinstance(config, FullTrainingOptions) and config.fused_backward_pass


def make_step_fn(ctx: StepContext, config, warn, backend=None) -> Callable[[list[dict], int], torch.Tensor]:
    """`step(micro_batches, step) -> loss`: captured steps where the option and the run allow it."""
    setting = config.cuda_graphs
    if fused_backward_wanted(config):
        from .fused_backward import fused_step_fn

        if setting == "on":
            warn("CUDA graphs are off for this run: fused_backward_pass updates the weights inside the backward "
                 "pass; steps run normally.")
        return fused_step_fn(ctx)
    if backend is None and not cuda_graphs_wanted(setting, ctx.device):
        return partial(train_step, ctx)
    reason = None if backend is not None else capture_blocker(ctx, config)
    if reason:
        message = f"CUDA graphs are off for this run: {reason}; steps run normally."
        warn(message) if setting == "on" else logger.info(message)
        return partial(train_step, ctx)
    return CapturedSteps(ctx, warn, backend or CudaGraphs())


class Captured:
    def __init__(self, run: Callable[[], torch.Tensor | None]):
        self.run = run


class CudaGraphs:
    """torch.cuda.graph capture; every graph of the run shares one memory pool (replays never overlap)."""

    def __init__(self):
        self.stream = torch.cuda.Stream()
        self.pool = None

    @contextmanager
    def eager(self):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn) -> Captured:
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's pin-memory thread may allocate pinned memory meanwhile
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = fn()
        if self.pool is None:
            self.pool = graph.pool()

        def run():
            graph.replay()
            return out
        return Captured(run)

    def rng_state(self):
        return torch.get_rng_state(), torch.cuda.get_rng_state()

    def set_rng_state(self, state) -> None:
        torch.set_rng_state(state[0])
        torch.cuda.set_rng_state(state[1])

    def release(self) -> None:
        self.pool = None
        torch.cuda.empty_cache()


class Rerun:
    """Stand-in for CUDA graphs where there is no GPU (tests): 'replaying' calls the captured function
    again on the same static buffers, so everything around the capture is exercised as on a GPU."""

    def eager(self):
        return nullcontext()

    def capture(self, fn) -> Captured:
        return Captured(fn)

    def rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state) -> None:
        torch.set_rng_state(state)

    def release(self) -> None:
        pass


class CapturedSteps:
    def __init__(self, ctx: StepContext, warn, backend, warmup: int = 2, max_graphs: int = 16):
        self.ctx, self.warn, self.backend = ctx, warn, backend
        self.warmup, self.max_graphs = warmup, max_graphs
        self.denoiser = ctx.model
        self.text = ctx.model.text
        self.graphs: dict[tuple, tuple[Captured, dict]] = {}
        self.seen: Counter = Counter()
        self.off_reason: str | None = None
        self.inner = getattr(ctx.optimizer, "optimizer", ctx.optimizer)
        self.update_reason = update_blocker(ctx)
        if self.update_reason and not isinstance(backend, Rerun):
            logger.info("the optimizer update runs outside the CUDA graphs: %s", self.update_reason)
        self.update_graph: tuple[tuple, Captured] | None = None
        self.updates = 0
        self.lr_tensors: list[torch.Tensor] = []
        mp = getattr(ctx.accelerator, "mixed_precision", "no")
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp)
        self.captures = 0  # how many graphs were captured (the run logs it)

    # --- one optimizer step ------------------------------------------------------------------------

    def __call__(self, micro_batches: list[dict], step: int) -> torch.Tensor:
        if self.off_reason:
            return train_step(self.ctx, micro_batches, step)
        ctx = self.ctx
        shapes = [latent_shape(b, ctx.latent_channels) for b in micro_batches]
        n = sum(s[0] for s in shapes)
        timesteps, draws = step_noise(ctx, shapes, step)
        te_grad = self.text_grad()
        total = torch.zeros((), device=ctx.device)
        try:
            for batch, draw, t in zip(micro_batches, draws, timesteps):
                x = self.inputs(batch, draw, t)
                key = (tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(x.items())), n, te_grad)
                total += self.micro_step(key, x, n, te_grad)
        except Exception as exc:  # noqa: BLE001
            if not (is_out_of_memory(exc) and (self.graphs or self.update_graph)):
                raise
            # the graphs' pool leaves no room for a normal micro-batch (a new bucket's warm-up, a
            # graph's check): free the graphs and redo the whole step normally. Its gradients start
            # from zero again and train_step reseeds, so the step is the one eager training takes.
            ctx.optimizer.zero_grad(set_to_none=False)
            self.turn_off("the GPU has not enough memory for captured steps beside normal ones (the graphs "
                          "keep a step's memory reserved)")
            return train_step(ctx, micro_batches, step)
        self.update()
        return total

    def text_grad(self) -> bool:
        if getattr(self.text, "memoize", True):
            return False
        grad = getattr(self.text, "grad_enabled", None)
        return bool(grad()) if callable(grad) else True

    def inputs(self, batch: dict, draw: dict, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything a micro-batch graph reads, as device tensors (copied into its static buffers)."""
        ctx = self.ctx
        latents = batch_latents(ctx, batch)
        noise, input_noise = finish_noise(draw, latents, ctx.cfg)
        x = {"latents": latents, "noise": noise, "t": t,
             "weights": batch["loss_weights"].to(ctx.device, non_blocking=True)}
        if input_noise is not noise:  # ip_noise_gamma
            x["input_noise"] = input_noise
        if ctx.sdxl:
            x["time_ids"] = sdxl_time_ids(batch, ctx.device, latents.dtype)
        if batch.get("alpha_masks") is not None:
            x["mask"] = batch_mask(ctx, batch)
        if getattr(self.text, "memoize", True):  # frozen text encoders: remembered outputs
            with torch.no_grad():
                hidden, pooled = self.text(batch["captions"])
            x["hidden"] = hidden
            if pooled is not None:
                x["pooled"] = pooled
        else:  # the text encoders run (and may train) inside the graph: their token ids (and weights) are the input
            ids, weights = self.text.tokens(list(batch["captions"]))
            for i, tensor in enumerate(ids):
                x[f"ids{i}"] = tensor.to(ctx.device, non_blocking=True)
            for i, tensor in enumerate(weights or []):
                x[f"token_weights{i}"] = tensor.to(ctx.device, non_blocking=True)
        return x

    def forward_backward(self, x: dict, n: int, te_grad: bool, backward: bool = True) -> torch.Tensor:
        """The captured part: noising, denoiser, loss (and backward). Same functions as train_step."""
        ctx = self.ctx
        noisy = add_noise(ctx, x["latents"], x.get("input_noise", x["noise"]), x["t"])
        autocast = (torch.autocast(ctx.device.type, dtype=self.autocast_dtype, cache_enabled=False)
                    if self.autocast_dtype else nullcontext())
        with autocast:
            if "hidden" in x:
                hidden, pooled = x["hidden"], x.get("pooled")
            else:
                ids = [x[f"ids{i}"] for i in range(len(self.text.tokenizers))]
                weights = [x[f"token_weights{i}"] for i in range(len(ids))] if "token_weights0" in x else None
                with torch.set_grad_enabled(te_grad and torch.is_grad_enabled()):
                    hidden, pooled = encode_prompt(self.text, ids, self.text.clip_skip, token_weights=weights)
            pred = self.denoiser.denoise(noisy, x["t"], hidden, pooled, x.get("time_ids"))
        loss = micro_loss(ctx, pred.float(), x["latents"], x["noise"], x["t"], x["weights"], n, noisy, x.get("mask"))
        if backward:
            ctx.accelerator.backward(loss)
        return loss.detach()

    def micro_step(self, key: tuple, x: dict, n: int, te_grad: bool) -> torch.Tensor:
        entry = self.graphs.get(key)
        if entry is None:
            self.seen[key] += 1
            if self.seen[key] > self.warmup and len(self.graphs) < self.max_graphs:
                return self.capture_and_check(key, x, n, te_grad)
            return self.eager_micro(x, n, te_grad)
        graph, static = entry
        return self.replay(graph, static, x)

    @staticmethod
    def replay(graph: Captured, static: dict, x: dict) -> torch.Tensor:
        for name, value in x.items():
            static[name].copy_(value, non_blocking=True)
        return graph.run()

    # --- capture and the first-replay check ------------------------------------------------------

    def capture_and_check(self, key: tuple, x: dict, n: int, te_grad: bool) -> torch.Tensor:
        static = {k: v.clone() for k, v in x.items()}
        try:
            graph = self.backend.capture(lambda: self.forward_backward(static, n, te_grad))
        except Exception as exc:  # noqa: BLE001 — whatever cannot be captured runs eagerly
            self.turn_off(f"capturing a step failed ({type(exc).__name__}: {str(exc)[:200]})")
            return self.eager_micro(x, n, te_grad)
        self.graphs[key] = (graph, static)
        self.captures += 1
        logger.info("captured a CUDA graph for micro-batch shape %s", tuple(x["latents"].shape))
        return self.check_first_replay(graph, static, x, n, te_grad)

    def eager_micro(self, x: dict, n: int, te_grad: bool) -> torch.Tensor:
        """A warm-up (or uncaptured) micro-batch, on the side stream CUDA capture requires."""
        with self.backend.eager():
            return self.forward_backward(x, n, te_grad)

    def check_first_replay(self, graph: Captured, static: dict, x: dict, n: int, te_grad: bool) -> torch.Tensor:
        """Replay once against an eager run from the same RNG state; keep the replay's gradients."""
        params = [p for p in self.ctx.params if p.grad is not None]
        copy_grads = sum(p.grad.numel() * p.grad.element_size() for p in params) <= CHECK_GRAD_BYTES
        rng = self.backend.rng_state()
        before = [p.grad.clone() for p in params] if copy_grads else None
        with self.backend.eager():
            if copy_grads:
                eager_loss = self.forward_backward(x, n, te_grad)
                eager_grads = [p.grad - b for p, b in zip(params, before)]
                for p, b in zip(params, before):
                    p.grad.copy_(b)
            else:  # too large to copy: compare the loss of a forward only
                with torch.no_grad():
                    eager_loss = self.forward_backward(x, n, te_grad, backward=False)
        self.backend.set_rng_state(rng)
        loss = self.replay(graph, static, x).clone()
        problem = mismatch(eager_loss, loss)
        if problem is None and copy_grads:
            problem = grad_mismatch(eager_grads, [p.grad - b for p, b in zip(params, before)])
        if problem is None:
            return loss
        if copy_grads:  # keep the eager gradients: they are the step's true ones
            for p, b, g in zip(params, before, eager_grads):
                p.grad.copy_(b + g)
        self.turn_off(f"a captured step did not match the normal step ({problem})")
        return eager_loss

    def turn_off(self, reason: str) -> None:
        self.off_reason = reason
        self.graphs.clear()
        self.update_graph = None
        self.backend.release()
        self.warn(f"CUDA graphs are off for the rest of this run: {reason}. Training continues normally.")

    # --- the optimizer update ---------------------------------------------------------------------

    def update(self) -> None:
        ctx = self.ctx
        self.updates += 1
        done = False
        if self.update_reason is None and not self.off_reason:
            done = self.captured_update()
        if not done:
            clip_gradients(ctx)
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=False)  # the graphs accumulate into these very tensors
        ctx.lr_scheduler.step()

    def captured_update(self) -> bool:
        key = tuple(p.grad is not None for p in self.ctx.params)
        if self.update_graph is not None and self.update_graph[0] == key:
            self.refresh_lr()
            self.update_graph[1].run()
            return True
        if self.updates <= self.warmup:
            return False  # the optimizer state must exist first
        try:
            graph = self.capture_update()
        except Exception as exc:  # noqa: BLE001
            self.update_reason = f"capturing the optimizer update failed ({type(exc).__name__}: {str(exc)[:200]})"
            logger.warning("the optimizer update runs outside the CUDA graphs: %s", self.update_reason)
            return False
        self.update_graph = (key, graph)
        self.refresh_lr()
        graph.run()
        return True

    def capture_update(self) -> Captured:
        groups = self.inner.param_groups
        device = self.ctx.device
        self.lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device) for g in groups]

        def fn():
            # the kernels read the learning rate from these tensors; the scheduler keeps writing plain
            # floats into the groups, and refresh_lr copies them over before every replay
            saved = [(g["lr"], g.get("capturable", False)) for g in groups]
            for g, lr in zip(groups, self.lr_tensors):
                g["lr"], g["capturable"] = lr, device.type == "cuda" or g.get("capturable", False)
            try:
                clip_gradients(self.ctx)
                self.inner.step()
                self.inner.zero_grad(set_to_none=False)
            finally:
                for g, (lr, cap) in zip(groups, saved):
                    g["lr"], g["capturable"] = lr, cap
        return self.backend.capture(fn)

    def refresh_lr(self) -> None:
        for g, t in zip(self.inner.param_groups, self.lr_tensors):
            t.fill_(float(g["lr"]))


def mismatch(expected: torch.Tensor, got: torch.Tensor) -> str | None:
    a, b = float(expected), float(got)
    if not (math.isfinite(a) and math.isfinite(b)):
        return None if math.isnan(a) and math.isnan(b) else f"loss {b} vs {a}"
    if abs(a - b) > LOSS_RTOL * max(abs(a), 1e-8):
        return f"loss {b:.6g} vs {a:.6g}"
    return None


def grad_mismatch(expected: list[torch.Tensor], got: list[torch.Tensor]) -> str | None:
    if not expected:
        return None
    diff = torch.stack([(e.float() - g.float()).norm() for e, g in zip(expected, got)]).norm()
    ref = torch.stack([e.float().norm() for e in expected]).norm()
    if not torch.isfinite(ref):
        return None  # an fp16 overflow step (the scaler skips it): nothing to compare
    rel = float(diff / ref.clamp_min(1e-12))
    return None if rel <= GRAD_RTOL else f"gradients differ by {rel:.3g} (relative)"
