"""A Kohya_ss user brings the configs kohya_ss itself ships (tests/data/kohya_presets/, copied from
bmaltais/kohya_ss presets/ and test/config/): each goes through `python -m trainer plan` without a
traceback, and is accepted unless sd-scripts refuses it too, or it is a model family / network type
this build does not train (then the message says so, on its field)."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import trainer.config as tc
from trainer.__main__ import main
from trainer.config.spec import _unwrap_optional
from tests.test_data_helpers import make_image

PRESETS = Path(__file__).parent / "data" / "kohya_presets"
FILES = sorted(PRESETS.glob("*.json"))
ALLOWED_REFUSALS = ("family not supported yet", "sd-scripts refuses it too", "sd-scripts' SDXL trainers refuse")


def _lora_types() -> tuple:
    return get_args(_unwrap_optional(tc.LoraConfig.model_fields["LoRA_type"].annotation)[0])


def _refusal_is_legitimate(path: Path, problems: list) -> bool:
    """Every problem must be one sd-scripts shares, a family refusal, or a network type this build
    does not offer yet (with the range of its rank, which that type's own module sets)."""
    data = json.loads(path.read_text())
    missing_type = data.get("LoRA_type") and data["LoRA_type"] not in _lora_types()
    for p in problems:
        if any(reason in p.message for reason in ALLOWED_REFUSALS):
            continue
        if missing_type and p.field in ("LoRA_type", "network_dim", "conv_dim"):
            continue
        return False
    return True


def test_there_is_a_representative_set_of_kohya_configs():
    names = " ".join(f.name for f in FILES)
    assert len(FILES) >= 15
    for kind in ("sdxl", "flux1", "sd3", "loha", "lokr", "ia3", "dylora", "diag_oft", "ti_", "finetune",
                 "dreambooth", "v21"):
        assert kind in names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_shipped_config_loads_or_is_refused_for_a_reason_sd_scripts_shares(path):
    try:
        loaded = tc.load_config_file(path)
    except tc.ConfigError as exc:
        assert _refusal_is_legitimate(path, exc.problems), str(exc)
        assert all("\n" not in p.message for p in exc.problems)  # one line per problem
        return
    assert loaded.source_format == "kohya-json"
    for line in loaded.ignored_keys:  # only keys whose value would change the run are listed
        assert not line.startswith(("model_list", "wandb_api_key", "LyCORIS_preset", "sdxl_checkbox"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_shipped_config_goes_through_plan_without_a_traceback(path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", str(path), "--json"])  # a crash would raise out of here
    assert code in (0, 1, 2)
    if code == 2:  # the config (or its dataset TOML) was refused: the reason is printed, not a traceback
        assert err.getvalue().startswith("error: ") and "Traceback" not in err.getvalue()


@pytest.mark.parametrize("name", ["lora_flux1d_adamw8bit_fp8.json", "test_locon_adamw8bit_toml.json",
                                  "test_ti_adamw8bit.json"])
def test_plan_in_a_real_subprocess_prints_a_reason_not_a_traceback(name):
    proc = subprocess.run([sys.executable, "-m", "trainer", "plan", str(PRESETS / name)], capture_output=True,
                          text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (1, 2)  # the shipped paths are someone else's D: drive
    assert proc.stderr.strip()


def test_the_shipped_dataset_toml_with_per_subset_settings_plans_like_the_trainer(tmp_path):
    """kohya_ss's test/config/dataset.toml: batch size, buckets and repeats come from the TOML."""
    toml_path = tmp_path / "config" / "dataset.toml"
    toml_path.parent.mkdir()
    shutil.copy(PRESETS / "test_dataset.toml", toml_path)
    concept = toml_path.parent / "test" / "img" / "10_darius kawasaki person"  # relative to the TOML here
    for i in range(6):
        make_image(concept / f"{i}.png", size=(64, 64), seed=i)
        (concept / f"{i}.txt").write_text("a painting")
    data = json.loads((PRESETS / "test_locon_adamw8bit_toml.json").read_text())
    data.update(dataset_config=str(toml_path), output_dir=str(tmp_path / "out"), num_processes=2)
    config_path = tmp_path / "kohya.json"
    config_path.write_text(json.dumps(data))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", str(config_path), "--json"]) == 0
    plan = json.loads(out.getvalue())
    # 6 images × 10 repeats = 60 samples, batch 4 (the TOML's) → 15 batches, 8 per process (2 processes)
    assert plan["train_samples"] == 60 and plan["batch_size"] == 4 and plan["steps_per_epoch"] == 8
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["preflight", str(config_path), "--json"])
    report = json.loads(out.getvalue())
    assert report["steps_per_epoch"] == plan["steps_per_epoch"] and report["total_steps"] == plan["total_steps"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_shipped_config_loads_into_the_page_or_says_why(path, tmp_path):
    """The page's Load: the form is filled (problems shown on their fields), or one status line says
    why the file cannot be trained here — never a traceback."""
    import gradio as gr

    from kohya_gui.context import AppContext
    from kohya_gui.forms import to_widget
    from kohya_gui.jobqueue import JobQueue
    from kohya_gui.settings import make_settings
    from kohya_gui.tabs.training import TrainingTab

    ttype = tc.detect_training_type(json.loads(path.read_text())) or "lora"
    settings = make_settings(workspace=str(tmp_path / "ws"), data_roots=[str(tmp_path)])
    queue = JobQueue(settings.workspace, cwd=settings.project_root)
    queue.pause()
    tab = TrainingTab(AppContext(settings, queue), ttype, ttype)
    with gr.Blocks():
        tab.render()
    initial = tab.form.initial_values()
    out = tab.load(str(path), *[to_widget(s, initial[s.name]) for s in tab.form.specs])
    status = out[-1]
    assert status.startswith(("Imported the Kohya_ss config", "⛔")), status
    if status.startswith("⛔"):
        assert "cannot be trained here" in status
