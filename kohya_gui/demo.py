"""The Demo of each training tab: a tiny generated model and a small synthetic dataset, trainable on a
CPU in well under a minute.

`python -m trainer demo DIR` (the trainer's command) writes the model, the dataset and
`demo_lora.json`; the GUI runs it once into `<workspace>/demo/`. The other tabs' demos are derived
from that config (same model and images, settings of their own) and written beside it as
`demo_<type>.json`, so every tab loads a real file the user can open and change.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from trainer.config import CONFIG_TYPES, atomic_write_text, config_to_dict, parse_config

DEMO_CONFIG = "demo_lora.json"
DEMO_TIMEOUT = 300
# what differs from the LoRA demo, per tab (everything else is carried over when the tab has it)
TYPE_SETTINGS = {
    "lora": {},
    "dreambooth": {"output_name": "toy_dreambooth", "learning_rate": 1e-4, "save_every_n_epochs": 0},
    "textual_inversion": {"output_name": "toytok", "token_string": "toytok", "init_word": "toy",
                          "num_vectors_per_token": 1, "learning_rate": 5e-3},
    "finetune": {"output_name": "toy_finetune", "learning_rate": 1e-4, "save_every_n_epochs": 0,
                 "dataset_repeats": 2, "caption_extension": ".txt"},
}


class DemoError(RuntimeError):
    pass


def demo_dir(workspace: Path) -> Path:
    return Path(workspace) / "demo"


def prepare_demo(python: str, workspace: Path, cwd: Path | None = None,
                 training_type: str = "lora") -> Path:
    """Create the demo files unless they are already there; return the tab's demo config path."""
    folder = demo_dir(workspace)
    config = folder / DEMO_CONFIG
    if not config.is_file():
        _run_trainer_demo(python, folder, cwd)
    if training_type == "lora":
        return config
    return write_type_demo(config, training_type)


def _run_trainer_demo(python: str, folder: Path, cwd: Path | None) -> None:
    try:
        proc = subprocess.run([python, "-m", "trainer", "demo", str(folder)], capture_output=True, text=True,
                              timeout=DEMO_TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"Creating the demo took longer than {DEMO_TIMEOUT} s.") from exc
    if proc.returncode != 0 or not (folder / DEMO_CONFIG).is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else "no output"
        raise DemoError(f"Creating the demo failed (exit code {proc.returncode}): {last}")


def type_demo_values(lora_values: dict, training_type: str) -> dict:
    """The LoRA demo's settings carried over to another tab, plus what that tab needs."""
    fields = CONFIG_TYPES[training_type].model_fields
    values = {k: v for k, v in lora_values.items() if k in fields and k not in ("config_version", "training_type")}
    values.update({k: v for k, v in TYPE_SETTINGS[training_type].items() if k in fields})
    if training_type == "finetune":     # fine-tuning reads the images directly, not <repeats>_<name> folders
        concepts = sorted(p for p in Path(values["train_data_dir"]).iterdir() if p.is_dir())
        if concepts:
            values["train_data_dir"] = str(concepts[0])
    return values


def write_type_demo(lora_config: Path, training_type: str) -> Path:
    path = lora_config.with_name(f"demo_{training_type}.json")
    if path.is_file():
        return path
    lora_values = json.loads(lora_config.read_text(encoding="utf-8"))
    try:
        config = parse_config(training_type, type_demo_values(lora_values, training_type), str(path))
    except ValueError as exc:
        raise DemoError(f"The {training_type} demo settings are not valid: {exc}") from exc
    atomic_write_text(path, json.dumps(config_to_dict(config), indent=2) + "\n")
    return path
