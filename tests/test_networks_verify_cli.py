"""`python -m trainer.networks.verify LORA --base MODEL`: the "Verify LoRA" check from a shell,
on a base model loaded through the real loader."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from trainer.models import load_base_model
from trainer.models.tiny import build_tiny_components, write_tiny_model
from trainer.networks import create_network
from trainer.networks.verify import main

ROOT = Path(__file__).resolve().parents[1]


def test_verify_cli_passes_a_good_lora_and_fails_one_for_another_base(tmp_path, capsys):
    base_path = write_tiny_model("sd1", tmp_path / "tiny-sd1.safetensors")
    base = load_base_model(base_path)  # a BaseModel works as well as the component dict
    net = create_network(base, network_dim=4, conv_dim=2)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.fill_(0.01)
    good = tmp_path / "good.safetensors"
    net.save_weights(good, "fp16")

    run = subprocess.run([sys.executable, "-m", "trainer.networks.verify", str(good), "--base", str(base_path),
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] and report["family"] == "sd1" and report["modules"] == len(net.loras)
    assert report["modules_by_part"]["te"] > 0

    sdxl = build_tiny_components("sdxl", seed=0)
    sdxl["family"] = "sdxl"
    wrong = tmp_path / "for-sdxl.safetensors"
    create_network(sdxl).save_weights(wrong)
    assert main([str(wrong), "--base", str(base_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("PROBLEMS") and "wrong base model" in out and "sdxl" in out

    assert main([str(tmp_path / "missing.safetensors"), "--base", str(base_path)]) == 2
    assert "not found" in capsys.readouterr().err
