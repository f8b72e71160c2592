"""A user runs the trainer as a subprocess and reads its event stream (docs/events.md)."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from test_train_support import PYTHON, ROOT, env, lora_config, make_dataset, run_trainer, write_config


def test_demo_folder_trains_two_epochs_into_files_diffusers_loads(tmp_path):
    """`python -m trainer demo DIR` then `run DIR/demo_lora.json`: epoch file, final file, events in order."""
    demo = tmp_path / "demo"
    made = subprocess.run([PYTHON, "-m", "trainer", "demo", str(demo)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    rc, events, err = run_trainer(demo / "demo_lora.json", "--events", str(tmp_path / "events.jsonl"), fresh=True)
    assert rc == 0, err[-3000:]

    types = [e["type"] for e in events]
    assert types[0] == "plan" and types[-1] == "done"
    assert all(e["v"] == 1 and isinstance(e["time"], float) for e in events)
    plan = events[0]
    assert (plan["images"], plan["repeats_total"], plan["epochs"], plan["family"]) == (4, 40, 2, "sd1")
    assert plan["total_steps"] == plan["steps_per_epoch"] * 2 == 40
    assert "cache" in types and types.index("cache") < types.index("step")
    steps = [e for e in events if e["type"] == "step"]
    assert steps[-1]["step"] == 40 and steps[-1]["total"] == 40 and steps[-1]["epoch"] == 2
    saved = [e for e in events if e["type"] == "saved"]
    out = demo / "outputs"
    assert [(e["kind"], e["path"]) for e in saved] == [("epoch", str(out / "toy-000001.safetensors")),
                                                       ("final", str(out / "toy.safetensors"))]
    assert all(e["verified"] and e["size"] > 0 for e in saved)
    assert events[-1]["outputs"] == [e["path"] for e in saved]
    assert [e["epoch"] for e in events if e["type"] == "sample"] == [1, 2]
    assert len(list((out / "sample").glob("toy_e00000*_00_*.png"))) == 2
    # the same lines went to --events, and the settings JSON beside the outputs loads again
    assert [json.loads(x)["type"] for x in (tmp_path / "events.jsonl").read_text().splitlines()] == types
    from trainer.config import load_config_file

    (settings,) = out.glob("toy_*.json")
    assert load_config_file(settings).config.seed == 1234

    from diffusers import StableDiffusionPipeline

    from trainer.models.loader import load_base_model

    base = load_base_model(demo / "models" / "tiny-sd1.safetensors")
    pipe = StableDiffusionPipeline(**base.components(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, base.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(sample, 500, hidden).sample
        for name in ("toy-000001", "toy"):
            pipe.load_lora_weights(str(out / f"{name}.safetensors"), adapter_name=name.replace("-", "_"))
        pipe.set_adapters(["toy"])
        after = pipe.unet(sample, 500, hidden).sample
    assert not torch.allclose(before, after), "the trained LoRA should change the U-Net output"


def test_a_config_that_cannot_load_ends_in_failed_not_a_traceback(tmp_path):
    rc, events, err = run_trainer(tmp_path / "missing.json")
    assert rc == 1
    assert [e["type"] for e in events] == ["error", "failed"]
    assert "missing.json" in events[-1]["message"] and events[-1]["exit_code"] == 1


def test_an_unwritable_output_folder_fails_before_training(tmp_path, tiny_model_dir):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), blocker / "out")
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 1
    assert [e["type"] for e in events] == ["error", "failed"]
    assert "output_dir" in events[-1]["message"] and "output_dir" in events[-1]["hint"]


def test_outputs_of_an_earlier_run_are_never_overwritten(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "toy.safetensors").write_bytes(b"someone's earlier LoRA")
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), out, epoch=1)
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 1 and events[-1]["type"] == "failed"
    assert "toy.safetensors" in events[-1]["message"] and "output_name" in events[-1]["hint"]
    assert (out / "toy.safetensors").read_bytes() == b"someone's earlier LoRA"
    assert "step" not in [e["type"] for e in events]


@pytest.mark.parametrize("command", ["plan", "preflight"])
def test_plan_and_preflight_commands_read_the_same_config(tmp_path, tiny_model_dir, command):
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=3, repeats=5),
                         tmp_path / "out", train_batch_size=1, epoch=4)
    proc = subprocess.run([PYTHON, "-m", "trainer", command, str(write_config(config, tmp_path / "c.json")),
                           "--json"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["total_steps"] == 3 * 5 * 4


def test_an_expected_error_is_one_line_without_a_traceback(tmp_path):
    """A corrupt model file is the user's problem, well described: no traceback on the terminal or the page."""
    model = tmp_path / "broken.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    config = lora_config(model, make_dataset(tmp_path / "data"), tmp_path / "out", epoch=1)
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 1 and events[-1]["type"] == "failed" and "broken.safetensors" in events[-1]["message"]
    assert "Traceback" not in err, err[-2000:]
