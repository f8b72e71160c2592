"""A FLUX.1 / Chroma / SD3.5 user presses "Print training command": the sd-scripts side is kohya's family script
(flux_train_network.py, sd3_train.py …) with that family's own arguments, never SD's train_network.py."""
from __future__ import annotations

from pathlib import Path

import pytest

import trainer.config as tc
from trainer.config import config_for
from trainer.config.kohya_import import import_kohya_json
from trainer.config.sd_scripts_export import sd_scripts_export

PRESETS = Path(__file__).parent / "data" / "kohya_presets"


def test_kohya_flux_preset_exports_flux_train_network_with_its_flux_arguments():
    config = tc.load_config_file(PRESETS / "lora_flux1d_adamw8bit_fp8.json").config
    export = sd_scripts_export(config)
    data = export.toml_data
    assert export.script == "flux_train_network.py" and data["network_module"] == "networks.lora_flux"
    assert data["clip_l"].endswith("clip_l.safetensors") and data["t5xxl"].endswith("t5xxl_fp16.safetensors")
    assert data["ae"].endswith("ae.sft") and data["model_prediction_type"] == "raw"
    assert (data["guidance_scale"], data["discrete_flow_shift"], data["t5xxl_max_token_length"]) == (3.5, 1.0, 512)
    assert data["cache_text_encoder_outputs"] is True and data["fp8_base"] is True
    assert not {"v2", "clip_skip", "no_half_vae", "max_token_length"} & set(data)


def test_a_flux_model_file_is_recognised_without_the_checkbox(tmp_path):
    from trainer.models.tiny_dit import write_tiny_flux

    model = write_tiny_flux(tmp_path / "flux")["model"]
    export = sd_scripts_export(config_for("lora", pretrained_model_name_or_path=str(model), train_blocks="single",
                                          blocks_to_swap=8))
    assert export.script == "flux_train_network.py" and export.toml_data["blocks_to_swap"] == 8
    assert export.toml_data["network_args"] == ["train_blocks=single"]
    lycoris = sd_scripts_export(config_for("lora", pretrained_model_name_or_path=str(model),
                                           LoRA_type="LyCORIS/LoKr")).toml_data
    assert lycoris["network_module"] == "lycoris.kohya" and "algo=lokr" in lycoris["network_args"]
    fine_tune = sd_scripts_export(config_for("finetune", pretrained_model_name_or_path=str(model)))
    assert fine_tune.script == "flux_train.py" and "learning_rate_te" not in fine_tune.toml_data


def test_chroma_runs_on_the_flux_scripts_as_model_type_chroma(tmp_path):
    from trainer.models.tiny_chroma import write_tiny_chroma

    model = write_tiny_chroma(tmp_path / "chroma", layout="diffusers")["model"]  # a folder: its config tells
    data = sd_scripts_export(config_for("lora", pretrained_model_name_or_path=str(model),
                                        clip_l="clip_l.safetensors")).toml_data
    assert data["model_type"] == "chroma" and "clip_l" not in data and data["network_module"] == "networks.lora_flux"


@pytest.mark.parametrize("kind, script", [("lora", "sd3_train_network.py"), ("dreambooth", "sd3_train.py")])
def test_sd3_exports_its_scripts_with_training_shift(kind, script):
    export = sd_scripts_export(config_for(kind, sd3_checkbox=True, discrete_flow_shift=3.0, clip_g="clip_g.sft"))
    assert export.script == script and export.toml_data["training_shift"] == 3.0
    assert "discrete_flow_shift" not in export.toml_data and export.toml_data["clip_g"] == "clip_g.sft"
    if kind == "lora":
        assert export.toml_data["network_module"] == "networks.lora_sd3"


def test_an_sd3_kohya_config_trains_at_the_schedule_shift_sd_scripts_used():
    values, ignored, notes = import_kohya_json({"sd3_checkbox": True, "LoRA_type": "Standard",
                                                "discrete_flow_shift": 3.0}, "lora")
    assert values["discrete_flow_shift"] == 1.0 and not ignored
    assert any("--training_shift default 1.0" in n for n in notes)
    values, _, notes = import_kohya_json({"sd3_checkbox": True, "LoRA_type": "Standard", "training_shift": 3.0},
                                         "lora")
    assert values["discrete_flow_shift"] == 3.0 and not any("training_shift" in n for n in notes)


def test_an_sd_config_still_exports_the_sd_scripts():
    assert sd_scripts_export(config_for("lora")).script == "train_network.py"
    assert sd_scripts_export(config_for("lora", sdxl=True)).script == "sdxl_train_network.py"
