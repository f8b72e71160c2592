"""Faults and the pieces around a run: NaN loss, file names and retention, the launch command,
sample prompts, the event writer."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from test_train_support import lora_config, lora_tensors, make_dataset


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_a_nan_loss_stops_the_run_with_likely_causes_and_keeps_the_last_good_file(
        tmp_path, tiny_model_dir, monkeypatch, fresh_accelerator_state):
    from trainer.events import EventWriter
    from trainer.train import run as run_module
    from trainer.train.stop import StopSignal

    real_make_step_fn = run_module.make_step_fn

    def poisoned_step_fn(*args, **kwargs):  # the loss goes NaN in epoch 2 (steps 4+ of 4 per epoch)
        real_step = real_make_step_fn(*args, **kwargs)
        return lambda micro, step: real_step(micro, step) * (float("nan") if step >= 5 else 1.0)

    monkeypatch.setattr(run_module, "make_step_fn", poisoned_step_fn)
    out = tmp_path / "out"
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), out, epoch=3)
    stream = io.StringIO()
    code = run_module.run_training(config, EventWriter(stream=stream), StopSignal())
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 1
    assert [e["type"] for e in events][-2:] == ["error", "failed"]
    failed = events[-1]
    assert "NaN" in failed["message"] and "step 6" in failed["message"]
    assert "toy-000001.safetensors" in failed["message"]
    assert "fp16" in failed["hint"] and "learning rate" in failed["hint"]
    assert all(e["loss"] is not None for e in events if e["type"] == "step"), "no NaN step is reported as a loss"
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".json") == ["toy-000001.safetensors"]
    assert all(torch.isfinite(t).all() for t in lora_tensors(out / "toy-000001.safetensors").values())


def test_a_sample_image_that_runs_out_of_gpu_memory_is_skipped_and_the_run_finishes(
        tmp_path, tiny_model_dir, monkeypatch, fresh_accelerator_state):
    """Samples are a preview: an out-of-memory while making them costs the preview, never the run."""
    from trainer.events import EventWriter
    from trainer.train import run as run_module
    from trainer.train.stop import StopSignal

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setattr(run_module, "generate_samples", no_room)
    out = tmp_path / "out"
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), out, epoch=2,
                         sample_every_n_epochs=1, sample_prompts="toy, red circle --w 64 --h 64 --s 2")
    stream = io.StringIO()
    code = run_module.run_training(config, EventWriter(stream=stream), StopSignal())
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 0 and events[-1]["type"] == "done"
    skipped = [e for e in events if e["type"] == "warning" and "Sample images" in e["message"]]
    assert len(skipped) == 2 and "ran out of memory" in skipped[0]["message"]
    assert "cuda_graphs off" in skipped[0]["message"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["toy-000001.safetensors", "toy.safetensors"]


def test_checkpoint_names_and_cadence_follow_kohya(tmp_path):
    from trainer.train.saving import SavePolicy

    p = SavePolicy(tmp_path, "mylora", every_n_epochs=2, every_n_steps=500)
    assert p.path("epoch", epoch=4).name == "mylora-000004.safetensors"
    assert p.path("step", step=500).name == "mylora-step00000500.safetensors"
    assert p.path("final").name == "mylora.safetensors"
    assert p.path("stopped").name == "mylora-stopped.safetensors"
    assert p.state_dir(p.path("epoch", epoch=4)).name == "mylora-000004-state"
    assert [e for e in range(1, 7) if p.epoch_due(e, 6)] == [2, 4]  # the last epoch is the final file
    assert [s for s in range(1, 1501) if p.step_due(s, 1500)] == [500, 1000]


def test_save_last_n_epochs_removes_only_files_this_run_wrote(tmp_path):
    from trainer.train.saving import Retention, SavePolicy

    policy = SavePolicy(tmp_path, "toy", every_n_epochs=1, last_n_epochs=2)
    retention = Retention(policy)
    foreign = policy.path("epoch", epoch=1)
    foreign.write_bytes(b"from another run")
    for epoch in range(2, 6):
        path = policy.path("epoch", epoch=epoch)
        path.write_bytes(b"x")
        retention.record(path)
        retention.prune_epochs(epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-000001.safetensors", "toy-000004.safetensors",
                                                          "toy-000005.safetensors"]


def test_state_folders_keep_their_own_count_as_in_kohya(tmp_path):
    """save_last_n_epochs_state: states are gigabytes, model files megabytes — keep every LoRA, the last state."""
    from trainer.train.saving import Retention, SavePolicy

    policy = SavePolicy(tmp_path, "toy", every_n_epochs=1, last_n_epochs=0, last_n_epochs_state=1,
                        every_n_steps=2, last_n_steps=4, save_state=True)
    retention = Retention(policy)
    for epoch in range(1, 4):
        for path in (policy.path("epoch", epoch=epoch), policy.state_dir(policy.path("epoch", epoch=epoch))):
            path.mkdir() if path.suffix != ".safetensors" else path.write_bytes(b"x")
            retention.record(path)
        retention.prune_epochs(epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "toy-000001.safetensors", "toy-000002.safetensors", "toy-000003-state", "toy-000003.safetensors"]
    for step in (2, 4, 6, 8):  # no state count for steps: the states follow save_last_n_steps
        for path in (policy.path("step", step=step), policy.state_dir(policy.path("step", step=step))):
            path.mkdir() if path.suffix != ".safetensors" else path.write_bytes(b"x")
            retention.record(path)
        retention.prune_steps(step)
    assert sorted(p.name for p in tmp_path.iterdir() if "step" in p.name) == [  # the last 4 steps: 6 and 8
        "toy-step00000006-state", "toy-step00000006.safetensors", "toy-step00000008-state",
        "toy-step00000008.safetensors"]


def test_launch_command_for_one_process_and_for_several_gpus():
    from trainer.config import config_for
    from trainer.train.launch import build_launch_command

    one = config_for("lora")
    assert build_launch_command(one, "run.toml", events_file="ev.jsonl") == [
        sys.executable, "-m", "trainer", "run", "run.toml", "--events", "ev.jsonl"]
    two = config_for("lora", num_processes=2, mixed_precision="bf16", gpu_ids="0,1", main_process_port=29555)
    cmd = build_launch_command(two, Path("run.toml"), training_type="lora")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--gpu_ids") + 1] == "0,1" and cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    assert cmd[-6:] == ["-m", "trainer", "run", "run.toml", "--type", "lora"]


def test_sample_prompt_lines_in_kohya_syntax(tmp_path):
    from trainer.train.samples import load_prompts, parse_prompt_line

    p = parse_prompt_line("masterpiece, mychar, smiling --n lowres, bad hands --w 515 --h 768 --s 28 --l 7 --d 1234")
    assert (p.prompt, p.negative, p.width, p.height, p.steps, p.scale, p.seed) == (
        "masterpiece, mychar, smiling", "lowres, bad hands", 512, 768, 28, 7.0, 1234)
    assert parse_prompt_line("a cat --ss ddim --s 5000").steps == 1000
    file = tmp_path / "prompts.txt"
    file.write_text("# a comment\na dog --d 3\n\na cat\n", encoding="utf-8")
    assert [x.prompt for x in load_prompts(str(file))] == ["a dog", "a cat"]
    assert [x.prompt for x in load_prompts("one\ntwo --w 64")] == ["one", "two"]


def test_event_writer_keeps_strict_json_and_a_single_final_event(tmp_path):
    from trainer.events import EventWriter

    stream = io.StringIO()
    w = EventWriter(stream=stream, path=tmp_path / "ev.jsonl")
    w.emit("step", step=1, loss=float("nan"), path=tmp_path)
    w.done(outputs=[tmp_path / "a.safetensors"])
    w.failed("late", "ignored")
    w.close()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [e["type"] for e in lines] == ["step", "done"]
    assert lines[0]["loss"] is None and lines[0]["path"] == str(tmp_path)
    assert (tmp_path / "ev.jsonl").read_text() == stream.getvalue()
    silent = io.StringIO()
    EventWriter(stream=silent, enabled=False).emit("plan", images=1)
    assert silent.getvalue() == ""
