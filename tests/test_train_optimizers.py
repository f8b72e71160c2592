"""A Kohya_ss user picks any optimizer, scheduler or sample sampler of kohya_ss's dropdowns: each is
built by its own library and works; one whose library is missing names the extra to install."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from trainer.config import config_for
from trainer.config.options_train import OPTIMIZERS as SCHEMA_OPTIMIZERS
from trainer.config.options_train import SAMPLERS as SCHEMA_SAMPLERS
from trainer.config.options_train import SCHEDULERS as SCHEMA_SCHEDULERS
from trainer.train.faults import TrainingFault
from trainer.train.optimizers import (KOHYA_OPTIMIZERS, build_optimizer, evaluation_weights, find_spec,
                                      is_schedule_free, parse_optimizer_args)
from trainer.train.samples import SAMPLERS, build_sampler
from trainer.train.schedulers import SCHEDULERS, build_scheduler

# kohya_ss v26's optimizer dropdown, as its GUI lists it
KOHYA_SS_LIST = ("AdamW", "AdamWScheduleFree", "AdamW8bit", "Adafactor", "bitsandbytes.optim.AdEMAMix8bit",
                 "bitsandbytes.optim.PagedAdEMAMix8bit", "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam",
                 "DAdaptAdan", "DAdaptAdanIP", "DAdaptAdamPreprint", "DAdaptLion", "DAdaptSGD", "Lion", "Lion8bit",
                 "PagedAdamW8bit", "PagedAdamW32bit", "PagedLion8bit", "Prodigy",
                 "prodigyplus.ProdigyPlusScheduleFree", "pytorch_optimizer.CAME", "RAdamScheduleFree",
                 "SGDNesterov", "SGDNesterov8bit", "SGDScheduleFree")
# lr each family is meant to run at (Prodigy/DAdapt estimate the step size from 1.0)
LR = {"Prodigy": 1.0, "DAdapt": 1.0, "prodigyplus": 1.0, "SGD": 0.05, "Adafactor": 1e-2}


def _lr(name: str) -> float:
    return next((lr for prefix, lr in LR.items() if name.startswith(prefix)), 1e-2)


def test_the_schema_offers_exactly_what_the_trainer_builds():
    assert set(KOHYA_SS_LIST) <= set(SCHEMA_OPTIMIZERS)
    assert tuple(SCHEMA_OPTIMIZERS) == KOHYA_OPTIMIZERS
    assert tuple(SCHEMA_SCHEDULERS) == SCHEDULERS
    assert set(SCHEMA_SAMPLERS) == set(SAMPLERS)


@pytest.mark.parametrize("name", SCHEMA_OPTIMIZERS)
def test_each_optimizer_trains_a_tiny_model_on_cpu(name):
    """A small regression problem: 100 steps through the named library lower the loss (D-Adaptation's
    step-size search overshoots in its first few dozen steps, then converges)."""
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Linear(8, 1)
    optimizer = build_optimizer(name, [{"params": list(model.parameters()), "lr": _lr(name)}], _lr(name))
    assert type(optimizer).__module__.split(".")[0] == find_spec(name).module.split(".")[0]
    start = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        try:
            optimizer.step()
        except (RuntimeError, NotImplementedError) as exc:  # bitsandbytes builds before 0.45: CUDA kernels only
            if find_spec(name).module.startswith("bitsandbytes") and not torch.cuda.is_available():
                pytest.skip(f"{name}: this bitsandbytes build steps only on a CUDA GPU ({exc})")
            raise
        optimizer.zero_grad(set_to_none=True)
    with evaluation_weights(optimizer):  # schedule-free: the averaged weights are the result
        end = torch.nn.functional.mse_loss(model(x), y).item()
    assert end < start, f"{name}: loss {start:.4f} → {end:.4f}"


def test_schedule_free_optimizers_switch_to_their_averaged_weights_for_saving():
    model = torch.nn.Linear(4, 1)
    optimizer = build_optimizer("AdamWScheduleFree", [{"params": list(model.parameters()), "lr": 0.1}], 0.1)
    assert is_schedule_free(optimizer)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    training = model.weight.detach().clone()
    with evaluation_weights(optimizer):
        assert not torch.equal(model.weight, training)  # eval mode holds the average
    assert torch.equal(model.weight, training)  # and training resumes where it was


def test_a_missing_library_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt → ImportError
    with pytest.raises(TrainingFault) as err:
        build_optimizer("Prodigy", [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1.0}], 1.0)
    assert "prodigyopt" in err.value.message and "kohya-studio[prodigy]" in err.value.hint
    monkeypatch.setitem(sys.modules, "dadaptation", None)
    with pytest.raises(TrainingFault, match="dadaptation") as err:
        build_optimizer("DAdaptAdam", [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1.0}], 1.0)
    assert "kohya-studio[dadaptation]" in err.value.hint


def test_kohya_quoted_optimizer_args_are_shell_quoting():
    assert parse_optimizer_args('"decouple=True" "weight_decay=0.01" "betas=0.9,0.99"') == {
        "decouple": True, "weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert parse_optimizer_args("d_coef=1.0 safeguard_warmup=False") == {"d_coef": 1.0, "safeguard_warmup": False}


def _cfg(name, **extra):
    return config_for("lora", lr_scheduler=name, learning_rate=1e-2, lr_warmup=10, lr_scheduler_num_cycles=2,
                      lr_scheduler_power=2.0, **extra)


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "adafactor"])
def test_each_scheduler_shapes_the_learning_rate(name):
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer("AdamW", [{"params": list(model.parameters()), "lr": 1e-2}], 1e-2)
    args = {"piecewise_constant": "step_rules='1:10,0.1'", "warmup_stable_decay": "num_decay_steps=10",
            "cosine_with_min_lr": "min_lr_rate=0.1"}.get(name, "")
    scheduler = build_scheduler(_cfg(name, lr_scheduler_args=args), optimizer, 40)
    lrs = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert all(lr >= 0 for lr in lrs)
    if name not in ("constant", "constant_with_warmup"):
        assert len(set(round(lr, 8) for lr in lrs)) > 1, f"{name} never changed the learning rate"
    if name == "cosine_with_min_lr":
        assert min(lrs) == pytest.approx(1e-3, rel=1e-3)  # min_lr_rate 0.1 of 1e-2


def test_the_adafactor_scheduler_needs_the_adafactor_optimizer():
    model = torch.nn.Linear(2, 1)
    adafactor = build_optimizer("Adafactor", [{"params": list(model.parameters()), "lr": 1e-3}], 1e-3)
    assert type(build_scheduler(_cfg("adafactor"), adafactor, 10)).__name__ == "AdafactorSchedule"
    adamw = build_optimizer("AdamW", [{"params": list(model.parameters()), "lr": 1e-3}], 1e-3)
    with pytest.raises(TrainingFault, match="only works with the Adafactor optimizer"):
        build_scheduler(_cfg("adafactor"), adamw, 10)


@pytest.mark.parametrize("name", SCHEMA_SAMPLERS)
def test_each_sample_sampler_is_a_diffusers_scheduler_that_steps(name):
    from diffusers import DDPMScheduler

    sampler = build_sampler(name, DDPMScheduler(num_train_timesteps=1000))
    sampler.set_timesteps(6)
    latents = torch.randn(1, 4, 8, 8) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        model_input = sampler.scale_model_input(latents, t)
        latents = sampler.step(torch.zeros_like(model_input), t, latents).prev_sample
    assert torch.isfinite(latents).all()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, lr, scheduler", [("AdamWScheduleFree", 1e-3, "constant"),
                                                     ("DAdaptAdam", 1.0, "cosine_with_min_lr"),
                                                     ("PagedLion8bit", 1e-4, "warmup_stable_decay")])
def test_a_whole_lora_run_with_a_kohya_optimizer_and_scheduler(tmp_path, tiny_model_dir, optimizer, lr, scheduler):
    from tests.test_train_support import lora_config, lora_tensors, make_dataset, run_trainer, write_config

    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=2), tmp_path / "out",
                         epoch=1, optimizer=optimizer, learning_rate=lr, lr_scheduler=scheduler)
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 0, err[-3000:]
    # step events may carry several steps at once (loss reads are batched): the last one counts
    steps = [e for e in events if e["type"] == "step"]
    assert steps and steps[-1]["step"] == steps[-1]["total"] == 2 and events[-1]["type"] == "done"
    tensors = lora_tensors(tmp_path / "out" / "toy.safetensors")
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in tensors.items())


def test_noise_offset_type_applies_only_the_noise_it_names():
    from trainer.train.diffusion import sample_noise

    def noise(kind):
        torch.manual_seed(3)
        cfg = config_for("lora", noise_offset_type=kind, noise_offset=0.5, multires_noise_iterations=4,
                         multires_noise_discount=0.3)
        return sample_noise((4, 16, 16), "cpu", cfg)["noise"]

    torch.manual_seed(3)
    plain = torch.randn(4, 16, 16)
    torch.manual_seed(3)
    offset = plain + 0.5 * (torch.randn(4, 16, 16), torch.randn(4, 1, 1))[1]
    assert torch.allclose(noise("Original"), offset)  # the offset, and no pyramid
    multires = noise("Multires")
    assert not torch.allclose(multires, plain) and multires.std().item() == pytest.approx(1.0, abs=1e-4)


def test_log_with_wandb_without_the_package_names_the_extra(monkeypatch):
    from trainer.train.trackers import open_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = config_for("lora", log_with="wandb", output_name="toy")
    with pytest.raises(TrainingFault) as err:
        open_trackers(cfg, enabled=True)
    assert "kohya-studio[wandb]" in err.value.hint and "WANDB_API_KEY" in err.value.hint
    assert open_trackers(config_for("lora", log_with="tensorboard", output_name="t"), enabled=True) is None


def test_log_with_all_writes_tensorboard_and_wandb(tmp_path, monkeypatch):
    from trainer.train import trackers

    logged = []

    class FakeRun:  # stands in for wandb's run object: the fan-out is what is under test
        def log(self, data, step):
            logged.append((data, step))

        def finish(self):
            logged.append("finished")

    fake = types.SimpleNamespace(init=lambda **kw: FakeRun(), Image=lambda a: ("image", a.shape))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = config_for("lora", log_with="all", logging_dir=str(tmp_path / "logs"), output_name="toy")
    tracker = trackers.open_trackers(cfg, enabled=True)
    tracker.add_scalar("loss/current", 0.5, 1)
    tracker.flush()
    tracker.close()
    assert logged[0] == ({"loss/current": 0.5}, 1) and logged[-1] == "finished"
    assert list((tmp_path / "logs").rglob("events.out.tfevents*"))


def test_the_optional_optimizer_table_of_the_schema_matches_the_trainer():
    from trainer.config.options_train import OPTIONAL_OPTIMIZERS

    for name, (module, extra) in OPTIONAL_OPTIMIZERS.items():
        spec = find_spec(name)
        assert (spec.module.split(".")[0], spec.extra) == (module, extra)
    assert {s.name for s in map(find_spec, SCHEMA_OPTIMIZERS) if s.extra} == set(OPTIONAL_OPTIMIZERS)


def test_preflight_names_the_extra_of_a_missing_optimizer_library(monkeypatch):
    import importlib.util

    from trainer.data.preflight import _optimizer_library

    cfg = config_for("lora", optimizer="DAdaptAdam")
    assert _optimizer_library(cfg) == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "dadaptation" else real(m, *a))
    [problem] = _optimizer_library(cfg)
    assert problem.field == "optimizer" and "kohya-studio[dadaptation]" in problem.hint


def test_tensorboard_names_each_learning_rate_after_its_group_and_the_bar_shows_the_unets():
    """DreamBooth's groups are unet then text_encoder1; a LoRA's textencoder then unet: each rate is logged
    under its own name (not "the last group is the U-Net"), and the step event shows the U-Net's."""
    from trainer.train.progress import Progress

    class Recorder:
        def __init__(self):
            self.scalars, self.emitted = {}, []

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = value

        def emit(self, kind, **fields):
            self.emitted.append((kind, fields))

    for names, lrs in ((["unet", "text_encoder1"], [1e-4, 1e-5]), (["textencoder", "unet"], [1e-5, 1e-4]),
                       (["unet_IN0", "unet plus", ""], [1e-4, 2e-4, 3e-4])):
        rec = Recorder()
        progress = Progress(rec, total_steps=1, epochs=1, tracker=rec, enabled=False, lr_names=names)
        progress.record(1, 1, torch.tensor(0.5), lrs)
        progress.flush()
        expected = {f"lr/{n.replace(' ', '_') or f'group{i}'}": lr for i, (n, lr) in enumerate(zip(names, lrs))}
        assert {k: v for k, v in rec.scalars.items() if k.startswith("lr/")} == expected
        (step,) = [f for kind, f in rec.emitted if kind == "step"]
        assert step["lr"] == 1e-4
