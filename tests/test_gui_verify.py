"""Utilities ▸ Verify LoRA: the button runs `python -m trainer verify … --json` in a child process and the
page shows the verdict — ✔ with module counts, the list of problems, or why a file could not be read."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kohya_gui.context import AppContext
from kohya_gui.jobqueue import JobQueue
from kohya_gui.settings import PROJECT_ROOT, GuiSettings
from kohya_gui.tabs import verify as v
from test_train_support import trainer_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo folder (tiny SD1 model) made by the trainer's own command, plus a trained-looking SD1 LoRA."""
    from trainer.models.tiny import build_tiny_components
    from trainer.networks import create_network

    root = tmp_path_factory.mktemp("verify")
    assert trainer_cli("demo", str(root / "demo"), timeout=300).returncode == 0
    sd1 = build_tiny_components("sd1", seed=0)
    sd1["family"] = "sd1"
    net = create_network(sd1, network_dim=4, network_alpha=4)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.fill_(0.01)
    (root / "loras").mkdir()
    net.save_weights(root / "loras" / "mychar.safetensors")
    return root


def _verify(roots: list[Path], lora, base, family=""):
    return v.run_verify(sys.executable, roots, str(lora), str(base), family, cwd=str(PROJECT_ROOT))


def test_a_lora_that_fits_its_base_shows_ok_with_module_counts(demo):
    base = demo / "demo" / "models" / "tiny-sd1.safetensors"
    text = _verify([demo], demo / "loras" / "mychar.safetensors", base)
    assert text.startswith("### ✔ OK — `mychar.safetensors` fits the SD1.x base model"), text
    assert "text encoder: " in text and "U-Net: " in text
    assert "problem" not in text


def test_an_sdxl_lora_checked_against_an_sd1_base_lists_the_family_problem(demo, tmp_path):
    from trainer.models.tiny import write_tiny_model
    from trainer.models import load_base_model
    from trainer.networks import create_network

    xl = write_tiny_model("sdxl", tmp_path / "tiny-sdxl.safetensors")
    create_network(load_base_model(xl), network_dim=2).save_weights(tmp_path / "xl-style.safetensors")
    base = demo / "demo" / "models" / "tiny-sd1.safetensors"
    text = _verify([tmp_path, demo], tmp_path / "xl-style.safetensors", base)
    assert text.startswith("### ✖"), text
    assert "does not fit the SD1.x base model" in text
    assert "wrong base model" in text and "sdxl" in text
    assert "untrained" in text, "the all-zero lora_up warning is listed too"


def test_a_missing_or_unreadable_lora_shows_a_clear_error(demo, tmp_path):
    base = demo / "demo" / "models" / "tiny-sd1.safetensors"
    missing = _verify([demo], demo / "loras" / "nope.safetensors", base)
    assert missing.startswith("### ⛔ Not verified") and "nope.safetensors" in missing
    assert "does not exist" in missing
    assert "Choose a LoRA file" in _verify([demo], "", base)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    text = _verify([tmp_path, demo], broken, base)
    assert text.startswith("### ⛔ Not verified: the LoRA file or the base model could not be read"), text
    assert "(exit code 2)" in text.splitlines()[0]
    assert "broken.safetensors" in text.split("```")[1], "the trainer's error names the file"


def test_paths_outside_the_browsable_folders_are_refused(demo, tmp_path):
    text = _verify([tmp_path], demo / "loras" / "mychar.safetensors", "x")
    assert text.startswith("### ⛔ Not verified") and "outside the folders" in text


def test_the_lora_list_offers_models_lora_and_output_folders(tmp_path):
    project, ws = tmp_path / "project", tmp_path / "ws"
    (project / "models" / "lora").mkdir(parents=True)
    (project / "models" / "lora" / "style.safetensors").write_bytes(b"x")
    (project / "models" / "lora" / "notes.txt").write_text("not a LoRA")
    out = tmp_path / "trained"
    out.mkdir()
    (out / "toy-000001.safetensors").write_bytes(b"x")
    settings = GuiSettings(project_root=project, workspace=ws, defaults={"lora": {"output_dir": str(out)}})
    ctx = AppContext(settings, JobQueue(ws))
    names = [Path(p).name for p in v.lora_choices(ctx)]
    assert names == ["style.safetensors", "toy-000001.safetensors"]
    argv = v.verify_argv("py", "a.safetensors", "m.safetensors", "sdxl")
    assert argv[1:] == ["-m", "trainer", "verify", "a.safetensors", "--base", "m.safetensors", "--json",
                        "--family", "sdxl"]
