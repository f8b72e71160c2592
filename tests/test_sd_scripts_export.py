"""The way back: a user exports a config to kohya's own sd-scripts (`python -m trainer
export-sd-scripts CONFIG`) and gets a --config_file TOML that uses only argument names sd-scripts
defines (tests/data/sd_scripts_args.txt, read from its argparse) and a command that runs it."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from trainer import tomlio as toml

import trainer.config as tc
from trainer.config.sd_scripts_export import sd_scripts_export, write_sd_scripts_files

DATA = Path(__file__).parent / "data"
SD_SCRIPTS_ARGS = {line.strip() for line in (DATA / "sd_scripts_args.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
PRESETS = sorted((DATA / "kohya_presets").glob("*.json"))


def _configs():
    yield tc.LoraConfig(output_dir="out", output_name="mychar", optimizer="Prodigy", learning_rate=1.0,
                        optimizer_args='"weight_decay=0.01" "betas=0.9,0.99"', sample_prompts="a cat --w 512",
                        sample_every_n_epochs=1, lr_scheduler="cosine_with_min_lr",
                        lr_scheduler_args="min_lr_rate=0.1", noise_offset_type="Multires",
                        multires_noise_iterations=6, loss_type="huber")
    yield tc.LoraConfig(sdxl=True, LoRA_type="Kohya LoCon", conv_dim=4, rank_dropout=0.1, xformers="xformers",
                        network_train_unet_only=True, cache_text_encoder_outputs=True, num_processes=2,
                        max_train_steps=500, text_encoder_lr=0.0, unet_lr=1e-4)
    yield tc.DreamboothConfig(sdxl=True, learning_rate_te=1e-6, learning_rate_te2=0.0, seed=3)
    yield tc.DreamboothConfig(learning_rate_te=0.0, reg_data_dir="reg")
    yield tc.FinetuneConfig(train_text_encoder=True, learning_rate_te=2e-6, in_json="meta.json")
    yield tc.TextualInversionConfig(token_string="mychar", init_word="woman", template="style template")
    for path in PRESETS:
        try:
            yield tc.load_config_file(path).config
        except tc.ConfigError:
            pass  # refused (another model family, or what sd-scripts refuses too)


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: f"{c.training_type}-{c.output_name}")
def test_every_exported_key_is_an_sd_scripts_argument(config):
    data = sd_scripts_export(config).toml_data
    unknown = sorted(set(data) - SD_SCRIPTS_ARGS)
    assert not unknown, f"not sd-scripts arguments: {unknown}"
    assert data["optimizer_type"] == config.optimizer
    assert ("max_train_steps" in data) != ("max_train_epochs" in data)  # epochs override steps there
    assert toml.loads(sd_scripts_export(config).toml_text()) == data


def test_a_lora_export_names_its_network_list_args_and_a_prompts_file(tmp_path):
    config = next(iter(_configs()))
    toml_path, command = write_sd_scripts_files(config, tmp_path)
    data = toml.loads(toml_path.read_text())
    assert data["network_module"] == "networks.lora" and data["max_train_epochs"] == config.epoch
    assert data["optimizer_args"] == ["weight_decay=0.01", "betas=0.9,0.99"]
    assert data["lr_scheduler_min_lr_ratio"] == 0.1 and "lr_scheduler_args" not in data  # sd-scripts passes it itself
    assert data["multires_noise_iterations"] == 6 and "noise_offset" not in data
    assert data["huber_schedule"] == "snr" and data["huber_c"] == 0.1 and data["huber_scale"] == 1.0
    assert Path(data["sample_prompts"]).read_text() == "a cat --w 512\n"
    argv = shlex.split(command)
    assert argv[:2] == ["accelerate", "launch"] and argv[-2:] == ["--config_file", str(toml_path)]
    assert "sd-scripts/train_network.py" in argv


def test_what_differs_between_the_trainers_is_spelled_out():
    sdxl_locon = list(_configs())[1]
    export = sd_scripts_export(sdxl_locon)
    data = export.toml_data
    assert export.script == "sdxl_train_network.py" and data["max_train_steps"] == 500
    assert data["network_args"] == ["conv_dim=4", "conv_alpha=1.0", "rank_dropout=0.1"]
    assert data["xformers"] is True and data["cache_text_encoder_outputs"] is True
    assert "--multi_gpu" in export.launch_args and "2" in export.launch_args
    db_frozen = sd_scripts_export(tc.DreamboothConfig(learning_rate_te=0.0)).toml_data
    assert db_frozen["stop_text_encoder_training"] == -1  # train_db.py trains the text encoder otherwise
    sdxl_db = sd_scripts_export(tc.DreamboothConfig(sdxl=True, learning_rate_te=1e-6, learning_rate_te2=0.0))
    assert sdxl_db.script == "sdxl_train.py" and sdxl_db.toml_data["train_text_encoder"] is True
    assert sdxl_db.toml_data["learning_rate_te2"] == 0.0
    assert sd_scripts_export(tc.LoraConfig(max_grad_norm=0.0)).toml_data["max_grad_norm"] == 0.0


def test_export_command_line_writes_files_and_never_overwrites(tmp_path):
    config_path = tc.save_config_json(tc.LoraConfig(output_dir=str(tmp_path / "out")), tmp_path / "c.json")
    outputs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "trainer", "export-sd-scripts", str(config_path), "--out",
                               str(tmp_path / "export"), "--sd-scripts", "/opt/kohya_ss/sd-scripts"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
        assert "accelerate launch" in proc.stdout and "/opt/kohya_ss/sd-scripts/train_network.py" in proc.stdout
    assert len(list((tmp_path / "export").glob("config_lora-*.toml"))) == 2


def test_a_lycoris_loha_with_lora_plus_exports_as_kohya_ss_launches_it():
    c = tc.LoraConfig(LoRA_type="LyCORIS/LoHa", network_dim=8, conv_dim=4, loraplus_lr_ratio=16)
    data = sd_scripts_export(c).toml_data
    assert data["network_module"] == "lycoris.kohya"
    assert "algo=loha" in data["network_args"] and "conv_dim=4" in data["network_args"]
    assert "loraplus_lr_ratio=16.0" in data["network_args"]
