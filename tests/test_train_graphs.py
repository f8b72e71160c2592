"""Captured training steps (cuda_graphs): the same losses and weights as normal steps, and a safe way back.

There is no GPU here, so the capture backend is `Rerun`: "replaying" calls the captured function again
on the graph's static buffers. Everything around the capture — keys per bucket shape, warm-up counts,
copying each batch into static buffers, gradients accumulated in place, the learning rate reaching the
update through tensors, the first-replay check, falling back — runs exactly as it does on a GPU.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import pytest
import torch

from test_train_step import batch, build, weights
from trainer.config import config_for
from trainer.train.graphs import Captured, CapturedSteps, Rerun, capture_blocker, make_step_fn, update_blocker
from trainer.train.loop import train_step


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def decaying_lr(ctx):
    """A schedule that changes every step, so a learning rate baked into a graph would show."""
    inner = ctx.optimizer.optimizer
    ctx.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1.0 / (1 + s))
    return ctx


def bucket_schedule():
    """Two bucket shapes, single and accumulated (mixed-shape) steps, each shape seen often enough to capture."""
    g = torch.Generator().manual_seed(7)
    square = batch(torch.randn(1, 4, 8, 8, generator=g) * 4, ["toy, red circle"])
    wide = batch(torch.randn(2, 4, 8, 12, generator=g) * 4, ["toy, blue square", "toy, green"])
    return [[square], [wide], [square], [wide], [square, wide], [square], [wide], [square, wide],
            [square], [square, wide], [wide], [square]]


def assert_same_training(net_a, net_b, start):
    """The weights agree to within float rounding. The captured update reads an fp32 learning-rate
    tensor where the normal one reads a Python float; on this tiny, hard-trained model that last-bit
    difference grows with every step: to 0.5 % of the update in 12 steps on torch 2.13, 2.6 % on 2.14
    (an eager run given fp32-rounded rates drifts by the same amount). A stale rate (the decaying
    schedule baked in) or a lost micro-batch changes the update by tens of %, so 10 % still tells them apart."""
    a, b = weights(net_a), weights(net_b)
    update = torch.cat([(a[k] - start[k]).flatten() for k in a]).norm()
    difference = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert update > 0, "the run must train"
    assert difference <= 0.1 * update, (float(difference), float(update))


def assert_same_losses(losses, eager_losses):
    """The first step runs on identical weights: the same loss up to float noise. Later losses follow the
    weights, which drift by float rounding (see assert_same_training): measured up to 7e-4 relative on
    torch 2.14 (4e-6 on 2.13). A lost micro-batch or a stale learning rate moves them by > 1e-2."""
    assert losses[0] == pytest.approx(eager_losses[0], rel=1e-5)
    assert losses == pytest.approx(eager_losses, rel=2e-3)


def train(step_fn, schedule):
    return [float(step_fn(micro, i)) for i, micro in enumerate(schedule)]


def test_captured_steps_give_the_losses_and_weights_of_normal_steps():
    schedule = bucket_schedule()
    ctx_eager, net_eager = build(optimizer="AdamW", lr=1e-2)
    decaying_lr(ctx_eager)
    eager_losses = train(lambda m, s: train_step(ctx_eager, m, s), schedule)
    ctx, net = build(optimizer="AdamW", lr=1e-2)
    start = weights(net)
    decaying_lr(ctx)
    warnings = []
    steps = make_step_fn(ctx, config_for("lora", cuda_graphs="on"), warnings.append, backend=Rerun())
    assert isinstance(steps, CapturedSteps)
    losses = train(steps, schedule)

    assert warnings == [] and steps.off_reason is None
    assert steps.captures == 4, "one graph per key: square and wide alone, and each inside a 3-sample step"
    assert steps.update_graph is not None, "the fused AdamW update is captured once its state exists"
    assert_same_losses(losses, eager_losses)
    assert_same_training(net_eager, net, start)
    unet_lora = [p for name, p in net.named_parameters() if name.startswith("lora_unet")]
    assert unet_lora and all(p.grad is not None and not p.grad.any() for p in unet_lora), \
        "gradients are zeroed in place, never set to None (the graphs add into these tensors)"


def test_the_learning_rate_reaches_a_captured_update_every_step():
    """Replays read the learning rate from tensors the scheduler's floats are copied into: a stale
    rate would make the weights drift from the normal run's."""
    schedule = [[batch(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), ["toy"])]] * 8
    ctx_eager, net_eager = build(optimizer="AdamW", lr=5e-2)
    decaying_lr(ctx_eager)
    train(lambda m, s: train_step(ctx_eager, m, s), schedule)
    ctx, net = build(optimizer="AdamW", lr=5e-2)
    start = weights(net)
    decaying_lr(ctx)
    steps = CapturedSteps(ctx, print, Rerun())
    train(steps, schedule)
    assert steps.update_graph is not None
    # refreshed before the 8th update with that step's rate, 1/8 of the base; the scheduler has moved on to 1/9
    assert float(steps.lr_tensors[0]) == pytest.approx(ctx.optimizer.optimizer.param_groups[0]["lr"] * 9 / 8)
    assert_same_training(net_eager, net, start)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted-captions"])
def test_text_encoder_lora_training_is_captured_with_token_ids_as_the_input(weighted):
    """With weighted captions the token weights are graph inputs beside the ids."""
    from trainer.train.text import TextConditioner

    def te_build():
        ctx, net = build(optimizer="AdamW", lr=1e-2)
        old = ctx.model.text
        ctx.model.text = TextConditioner("sd1", list(old.encoders), old.tokenizers, memoize=False,
                                         grad_enabled=lambda: True, weighted=weighted)
        return ctx, net

    schedule = bucket_schedule()[:6]
    if weighted:  # the schedule repeats two batch dicts
        for b in {id(b): b for micro_batches in schedule for b in micro_batches}.values():
            b["captions"] = [c.replace("toy", "(toy:1.4)") for c in b["captions"]]
    ctx_eager, net_eager = te_build()
    train(lambda m, s: train_step(ctx_eager, m, s), schedule)
    ctx, net = te_build()
    start = weights(net)
    steps = CapturedSteps(ctx, print, Rerun())
    train(steps, schedule)
    assert steps.captures >= 1 and steps.off_reason is None
    te_ups = [k for k in weights(net) if k.startswith("lora_te") and "lora_up" in k]
    assert te_ups and any(weights(net)[k].abs().sum() > 0 for k in te_ups), "the text-encoder LoRA trains"
    assert_same_training(net_eager, net, start)


class FailingCapture(Rerun):
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


class StaleGraph(Rerun):
    """A graph that replays nothing: the first-replay check must catch it."""

    def capture(self, fn):
        return Captured(lambda: torch.zeros(()))


@pytest.mark.parametrize("backend,reason", [(FailingCapture(), "capturing a step failed"),
                                            (StaleGraph(), "did not match the normal step")])
def test_a_step_that_cannot_be_captured_runs_normally_and_the_log_says_why(backend, reason):
    schedule = bucket_schedule()[:7]
    ctx_eager, net_eager = build(optimizer="AdamW8bit", lr=1e-2)
    eager_losses = train(lambda m, s: train_step(ctx_eager, m, s), schedule)
    ctx, net = build(optimizer="AdamW8bit", lr=1e-2)
    start = weights(net)
    warnings = []
    steps = CapturedSteps(ctx, warnings.append, backend)
    losses = train(steps, schedule)
    assert len(warnings) == 1 and reason in warnings[0] and "continues normally" in warnings[0]
    assert steps.off_reason and not steps.graphs
    assert_same_losses(losses, eager_losses)
    assert_same_training(net_eager, net, start)


def test_auto_captures_only_on_a_single_cuda_gpu_and_says_why_not():
    ctx, _ = build()
    warnings = []
    step = make_step_fn(ctx, config_for("lora", cuda_graphs="auto"), warnings.append)
    assert not isinstance(step, CapturedSteps) and warnings == []
    step = make_step_fn(ctx, config_for("lora", cuda_graphs="on"), warnings.append)
    assert not isinstance(step, CapturedSteps)
    assert warnings and "need a CUDA GPU" in warnings[0]

    cuda = types.SimpleNamespace(device=torch.device("cuda"), accelerator=types.SimpleNamespace(num_processes=2))
    assert "several training processes" in capture_blocker(cuda, config_for("lora"))
    cuda.accelerator.num_processes = 1
    assert "module_dropout" in capture_blocker(cuda, config_for("lora", module_dropout=0.1))
    assert capture_blocker(cuda, config_for("lora", module_dropout=0)) is None


def test_the_update_is_captured_only_for_fused_adamw_without_loss_scaling():
    ctx, _ = build(optimizer="AdamW")
    assert update_blocker(ctx) is None
    ctx, _ = build(optimizer="AdamW8bit")
    assert "step count on the CPU" in update_blocker(ctx)
    fp16 = types.SimpleNamespace(optimizer=ctx.optimizer, accelerator=types.SimpleNamespace(scaler=object()))
    assert "loss scaling" in update_blocker(fp16)


def test_the_first_replay_check_tolerates_bf16_noise_but_not_a_wrong_graph():
    from trainer.train.graphs import grad_mismatch, mismatch

    g = [torch.randn(64, 8), torch.randn(8)]
    assert mismatch(torch.tensor(0.5), torch.tensor(0.5 * (1 + 1e-3))) is None
    assert "loss" in mismatch(torch.tensor(0.5), torch.tensor(0.0))
    assert grad_mismatch(g, [x * (1 + 1e-3) for x in g]) is None
    assert "gradients differ" in grad_mismatch(g, [x * 0.5 for x in g])
    overflow = [torch.full((64, 8), float("inf")), torch.zeros(8)]
    assert grad_mismatch(overflow, g) is None, "an fp16 overflow step is skipped by the scaler, not a mismatch"


class CheckFlag(Rerun):
    """Knows when the normal run that checks a freshly captured graph is under way (the check takes
    the RNG state just before it)."""

    def __init__(self):
        self.armed = self.checking = False

    def rng_state(self):
        self.armed = True
        return super().rng_state()

    @contextmanager
    def eager(self):
        self.checking, self.armed = self.armed, False
        try:
            yield
        finally:
            self.checking = False


def run_short_of_memory(break_step) -> tuple[list, list, CapturedSteps, dict, object]:
    """Captured training where `break_step(steps, backend)` patches in an out-of-memory."""
    schedule = bucket_schedule()[:9]
    ctx_eager, net_eager = build(optimizer="AdamW", lr=1e-2)
    eager_losses = train(lambda m, s: train_step(ctx_eager, m, s), schedule)
    ctx, net = build(optimizer="AdamW", lr=1e-2)
    start = weights(net)
    warnings, backend = [], CheckFlag()
    steps = CapturedSteps(ctx, warnings.append, backend)
    break_step(steps, backend)
    losses = train(steps, schedule)
    assert_same_losses(losses, eager_losses)
    assert_same_training(net_eager, net, start)
    return warnings, steps


def out_of_memory():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_card_too_small_to_check_a_graph_beside_a_normal_step_trains_on_normally():
    """The check's normal step runs out of memory after its backward added gradients: the step is
    redone normally from zeroed gradients, the graphs are freed, training goes on with the same result."""
    def break_step(steps, backend):
        real_backward = steps.ctx.accelerator.backward

        def backward(loss):
            real_backward(loss)
            if backend.checking:
                raise out_of_memory()
        steps.ctx.accelerator.backward = backward

    warnings, steps = run_short_of_memory(break_step)
    assert len(warnings) == 1 and "not enough memory for captured steps" in warnings[0]
    assert steps.off_reason and not steps.graphs and steps.captures == 1


def test_a_new_bucket_that_does_not_fit_beside_the_captured_graphs_trains_on_normally():
    """A later bucket shape's warm-up runs out of memory (the graphs hold theirs) after adding its
    gradients: the same recovery, not a crashed run."""
    def break_step(steps, backend):
        real_micro = steps.eager_micro

        def eager_micro(x, n, te_grad):
            loss = real_micro(x, n, te_grad)
            if steps.graphs and not steps.off_reason:
                raise out_of_memory()
            return loss
        steps.eager_micro = eager_micro

    warnings, steps = run_short_of_memory(break_step)
    assert len(warnings) == 1 and "not enough memory for captured steps" in warnings[0]
    assert steps.off_reason and steps.captures >= 1


def test_an_out_of_memory_before_any_graph_exists_is_a_normal_out_of_memory():
    ctx, _ = build(optimizer="AdamW", lr=1e-2)
    steps = CapturedSteps(ctx, print, Rerun())

    def eager_micro(x, n, te_grad):
        raise out_of_memory()
    steps.eager_micro = eager_micro
    with pytest.raises(torch.OutOfMemoryError):
        steps(bucket_schedule()[0], 0)


def test_a_whole_run_with_captured_steps_saves_the_lora_a_normal_run_saves(
        tmp_path, tiny_model_dir, monkeypatch):
    """The run loop around the step (saving, the scheduler, sample-free epochs, progress) with captured
    steps: the same LoRA file as a normal run of the same config, within float rounding."""
    import io

    from test_train_support import lora_config, lora_tensors, make_dataset
    from trainer.events import EventWriter
    from trainer.train import run as run_module
    from trainer.train.stop import StopSignal

    data = make_dataset(tmp_path / "data")

    def train_run(out, backend=None):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        made = []
        if backend is not None:
            def captured(ctx, config, warn, backend_=None):
                made.append(CapturedSteps(ctx, warn, backend))
                return made[-1]
            monkeypatch.setattr(run_module, "make_step_fn", captured)
        config = lora_config(tiny_model_dir("sd1"), data, out, epoch=2, learning_rate=1e-2)
        code = run_module.run_training(config, EventWriter(stream=io.StringIO()), StopSignal())
        assert code == 0
        return lora_tensors(out / "toy.safetensors"), made

    normal, _ = train_run(tmp_path / "normal")
    captured, made = train_run(tmp_path / "captured", Rerun())
    assert made and made[0].captures >= 1 and made[0].off_reason is None
    assert normal.keys() == captured.keys()
    ups = [k for k in normal if "lora_up" in k]
    update = torch.cat([normal[k].float().flatten() for k in ups]).norm()
    difference = torch.cat([(normal[k].float() - captured[k].float()).flatten() for k in ups]).norm()
    # the same float drift as assert_same_training, over a whole run: 6.1 % of the update on torch 2.14
    assert update > 0 and difference <= 0.1 * update, (float(difference), float(update))


def test_steps_with_input_perturbation_and_an_adaptive_offset_are_captured_exactly_like_normal_steps():
    """The noise that depends on the latents is finished outside the graph; the perturbed input is a graph input.
    The update stays eager here (SGD with Nesterov momentum), so captured micro-batches must match normal ones bit for bit."""
    noise = dict(ip_noise_gamma=0.1, noise_offset=0.1, adaptive_noise_scale=0.05)
    schedule = bucket_schedule()
    ctx_eager, net_eager = build(optimizer="SGDNesterov", lr=1e-1, **noise)
    eager_losses = train(lambda m, s: train_step(ctx_eager, m, s), schedule)
    ctx, net = build(optimizer="SGDNesterov", lr=1e-1, **noise)
    steps = make_step_fn(ctx, config_for("lora", cuda_graphs="on", **noise), [].append, backend=Rerun())
    losses = train(steps, schedule)
    assert steps.off_reason is None and steps.captures == 4 and steps.update_reason
    assert losses == eager_losses
    assert all(torch.equal(v, weights(net)[k]) for k, v in weights(net_eager).items())
