"""A Kohya_ss user brings a GUI JSON config: it is mapped, and what is ignored is reported."""
import json

import pytest

import trainer.config as tc

KOHYA_JSON = "tests/data/kohya_lora_v26.json"


def test_a_kohya_lora_json_imports_with_ignored_keys_reported():
    loaded = tc.load_config_file(KOHYA_JSON)
    c = loaded.config
    assert loaded.source_format == "kohya-json" and c.training_type == "lora"
    assert c.resolution == "512,512"  # from max_resolution
    assert c.clip_skip == 2 and c.keep_tokens == 1  # "1" string coerced as Kohya does
    assert c.unet_lr == 1e-4 and c.text_encoder_lr == 5e-5 and c.min_snr_gamma == 5
    assert c.xformers == "xformers" and c.seed == 1234 and c.output_name == "mychar"
    ignored = " ".join(loaded.ignored_keys)
    for key in ("LyCORIS_preset", "model_list", "dynamo_backend", "t5xxl_lr", "noise_offset_type"):
        assert key in ignored
    assert "metadata_author" not in ignored  # it has a counterpart
    assert any("max_train_steps=1600" in n and "epochs govern" in n for n in loaded.notes)


def test_kohya_quirks_are_translated(tmp_path):
    data = json.load(open(KOHYA_JSON))
    data.update({"xformers": True, "LoRA_type": "LyCORIS/LoCon", "unet_lr": 0, "max_train_epochs": 4,
                 "lr_warmup_steps": 0.05, "use_8bit_adam": True, "max_train_steps": 0})
    del data["optimizer"]
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    c = loaded.config
    assert c.xformers == "xformers" and c.LoRA_type == "Kohya LoCon" and c.unet_lr is None
    assert c.epoch == 4 and c.lr_warmup == pytest.approx(5.0) and c.optimizer == "AdamW8bit"


def test_an_unsupported_kohya_choice_is_an_error_on_its_field(tmp_path):
    data = json.load(open(KOHYA_JSON))
    data["optimizer"] = "DAdaptAdam"
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    with pytest.raises(tc.ConfigError, match="optimizer: 'DAdaptAdam' is not a valid choice"):
        tc.load_config_file(path)


def test_the_training_type_comes_from_the_keys_or_from_type(tmp_path):
    path = tmp_path / "ti.json"
    path.write_text(json.dumps({"token_string": "mychar", "init_word": "woman", "num_vectors_per_token": 4}))
    assert tc.load_config_file(path).config.training_type == "textual_inversion"
    path.write_text(json.dumps({"learning_rate": 1e-5}))
    with pytest.raises(tc.ConfigError, match="--type"):
        tc.load_config_file(path)
    assert tc.load_config_file(path, "dreambooth").config.learning_rate == 1e-5


def test_a_project_file_opened_as_another_type_is_refused(tmp_path):
    path = tc.save_config_json(tc.LoraConfig(), tmp_path / "lora.json")
    with pytest.raises(tc.ConfigError, match="is a lora config but dreambooth"):
        tc.load_config_file(path, "dreambooth")
