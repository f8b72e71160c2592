"""The trainer as a process: Stop (SIGINT) and resume, a disk that fills up mid-run, two DDP processes."""
from __future__ import annotations

import resource
import signal
import subprocess

import torch
from test_train_support import (ROOT, LiveRun, env, lora_config, lora_tensors, make_dataset, parse_events,
                                run_trainer, write_config)


def test_sigint_stops_saves_a_usable_lora_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    model, data = tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=4, repeats=3)
    settings = dict(epoch=3, save_every_n_epochs=1, save_precision="float")

    whole = lora_config(model, data, tmp_path / "whole", **settings)
    rc, events, err = run_trainer(write_config(whole, tmp_path / "whole.json"))
    assert rc == 0, err[-3000:]
    assert events[-1]["type"] == "done"

    out = tmp_path / "stopped"
    live = LiveRun.trainer(write_config(lora_config(model, data, out, **settings), tmp_path / "stop.json"))
    live.wait_for(lambda e: e["type"] == "saved" and e["kind"] == "epoch")
    live.proc.send_signal(signal.SIGINT)
    rc, events, err = live.finish()
    assert rc == 0, err[-3000:]
    final = events[-1]
    assert final["type"] == "stopped" and final["outputs"][-1] == str(out / "toy-stopped.safetensors")
    assert 12 <= final["step"] < 36
    assert [e["type"] for e in events].count("stopped") == 1 and "failed" not in [e["type"] for e in events]
    assert {e["kind"] for e in events if e["type"] == "saved"} >= {"epoch", "stopped", "state"}
    assert (out / "toy-stopped-state" / "train_state.json").is_file()
    assert lora_tensors(out / "toy-stopped.safetensors")  # a complete, loadable LoRA
    assert not (out / "toy.safetensors").exists()

    resumed = lora_config(model, data, out, resume=str(out / "toy-stopped-state"), **settings)
    rc, events, err = run_trainer(write_config(resumed, tmp_path / "resume.json"))
    assert rc == 0, err[-3000:]
    assert events[-1]["type"] == "done"
    first_step = next(e for e in events if e["type"] == "step")["step"]
    assert first_step > final["step"], "a resumed run continues, it does not start over"
    expected, got = lora_tensors(tmp_path / "whole" / "toy.safetensors"), lora_tensors(out / "toy.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:  # bit-exact on CPU: every step is a function of (weights, batch, step number)
        assert torch.equal(expected[key], got[key]), key


def test_a_disk_that_fills_up_mid_run_fails_cleanly_and_keeps_earlier_checkpoints(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=4, repeats=10), out)
    live = LiveRun.trainer(write_config(config, tmp_path / "c.json"))
    first = live.wait_for(lambda e: e["type"] == "saved")
    # from now on the process may not write files larger than 4 KiB: the next save hits "disk full"
    resource.prlimit(live.proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
    rc, events, err = live.finish()
    assert rc == 1
    assert [e["type"] for e in events][-2:] == ["error", "failed"]
    assert "disk is full" in events[-1]["message"] and "intact" in events[-1]["hint"]
    assert str(out / "toy.safetensors") in events[-1]["message"] and "free on that disk" in events[-1]["message"]
    assert "Traceback" not in "".join(str(e) for e in events)
    assert first["path"] == str(out / "toy-000001.safetensors")
    assert lora_tensors(out / "toy-000001.safetensors")
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".json") == ["toy-000001.safetensors"]


def test_two_gloo_processes_end_with_identical_weights_and_one_writer(tmp_path, tiny_model_dir):
    from trainer.train.launch import build_launch_command

    out = tmp_path / "out"
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=4), out, epoch=2,
                         num_processes=2)
    argv = build_launch_command(config, write_config(config, tmp_path / "c.json"), cpu=True)
    assert "torch.distributed.run" in argv and argv[-2:] == ["run", str(tmp_path / "c.json")]
    proc = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = parse_events(proc.stdout)
    types = [e["type"] for e in events]
    assert types.count("plan") == 1 and types.count("done") == 1 and types[-1] == "done"
    plan = events[0]
    assert plan["num_processes"] == 2 and plan["steps_per_epoch"] == 2  # 4 batches shared by 2 ranks
    digests = {}
    for line in proc.stderr.splitlines():
        if "final network digest" in line:
            words = line.split()
            digests[words[words.index("digest") - 3]] = words[-1]
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], proc.stderr[-2000:]
    # rank 1 writing too would leave a second settings JSON (names never collide) or temp files
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".json") == ["toy-000001.safetensors",
                                                                           "toy.safetensors"]
    assert len(list(out.glob("toy_*.json"))) == 1


def test_a_disk_that_fills_up_while_saving_the_state_names_the_folder_and_the_free_space(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=4, repeats=10), out,
                         save_state=True, epoch=3)
    live = LiveRun.trainer(write_config(config, tmp_path / "c.json"))
    live.wait_for(lambda e: e["type"] == "saved" and e["kind"] == "epoch")
    resource.prlimit(live.proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))  # the next state's optimizer.pt fails
    rc, events, err = live.finish()
    assert rc == 1
    message = events[-1]["message"]  # torch.save's own error was "unexpected pos …": an "Unexpected error"
    assert "disk is full" in message and "toy-000002-state" in message and "free on that disk" in message
    assert "intact" in events[-1]["hint"] and "Traceback" not in "".join(str(e) for e in events)
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".json") == ["toy-000001-state",
                                                                           "toy-000001.safetensors"]
