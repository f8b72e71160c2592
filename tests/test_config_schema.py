"""The option schema: one declaration per option, validated all at once, saved and loaded losslessly."""
import json

import pytest

import trainer.config as tc
from trainer.config import CONFIG_TYPES, SECTIONS, field_specs, validate_values

SECTION_KEYS = {key for key, _ in SECTIONS}


@pytest.mark.parametrize("ttype", list(CONFIG_TYPES))
def test_every_option_has_help_a_section_and_a_level(ttype):
    specs = field_specs(CONFIG_TYPES[ttype])
    assert len(specs) > 80
    for spec in specs:
        assert len(spec.help) > 10, f"{spec.name} has no help text"
        assert spec.section in SECTION_KEYS, spec.name
        assert spec.level in ("basic", "advanced"), spec.name
        if spec.kind == "choice":
            assert spec.default in spec.choices, spec.name


def test_first_run_defaults_follow_the_seed_guide():
    c = tc.LoraConfig()
    assert (c.output_name, c.save_model_as, c.mixed_precision, c.train_batch_size, c.epoch) == (
        "last", "safetensors", "fp16", 1, 10)
    assert (c.network_dim, c.network_alpha, c.learning_rate, c.resolution, c.caption_extension, c.optimizer) == (
        8, 1.0, 1e-4, "512,512", ".txt", "AdamW8bit")
    assert c.max_train_steps == 0, "epochs govern unless steps are set (Kohya's 1600 trap)"


def test_kohya_option_names_cover_the_lora_tab():
    names = {s.name for s in field_specs(tc.LoraConfig)}
    kohya = json.load(open("tests/data/kohya_lora_v26.json"))
    expected_same_name = {
        "bucket_no_upscale", "bucket_reso_steps", "cache_latents", "cache_latents_to_disk", "caption_extension",
        "clip_skip", "color_aug", "conv_alpha", "conv_dim", "enable_bucket", "epoch", "flip_aug", "full_bf16",
        "full_fp16", "gradient_accumulation_steps", "gradient_checkpointing", "keep_tokens", "learning_rate",
        "logging_dir", "lr_scheduler", "lr_warmup", "max_bucket_reso", "max_grad_norm", "max_token_length",
        "max_train_steps", "min_bucket_reso", "min_snr_gamma", "mixed_precision", "network_alpha",
        "network_dim", "network_dropout", "network_weights", "noise_offset", "optimizer", "optimizer_args",
        "output_dir", "output_name", "pretrained_model_name_or_path", "prior_loss_weight", "reg_data_dir",
        "resume", "sample_every_n_epochs", "sample_prompts", "sample_sampler", "save_every_n_epochs",
        "save_model_as", "save_precision", "save_state", "sdxl", "seed", "shuffle_caption", "text_encoder_lr",
        "train_batch_size", "train_data_dir", "unet_lr", "v2", "v_parameterization", "vae", "xformers"}
    assert expected_same_name <= names
    assert expected_same_name <= set(kohya)


@pytest.mark.parametrize("ttype", list(CONFIG_TYPES))
def test_a_saved_json_config_loads_back_identical(tmp_path, ttype):
    cls = CONFIG_TYPES[ttype]
    extra = {"token_string": "mychar"} if ttype == "textual_inversion" else {}
    config = cls(output_dir=str(tmp_path / "out"), train_data_dir="dataset/images 日本", seed=7,
                 sample_prompts="a photo --w 512\nsecond line", **extra)
    path = tc.save_config_json(config, tmp_path / "cfg.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["config_version"] == tc.CONFIG_VERSION and data["training_type"] == ttype
    loaded = tc.load_config_file(path)
    assert loaded.config == config and loaded.source_format == "project-json"
    toml_path = tmp_path / "cfg.toml"
    toml_path.write_text(tc.to_trainer_toml(config), encoding="utf-8")
    assert tc.load_config_file(toml_path).config == config


def test_saving_is_atomic_and_leaves_no_temp_files(tmp_path):
    tc.save_config_json(tc.LoraConfig(), tmp_path / "a.json")
    tc.save_config_json(tc.LoraConfig(epoch=3), tmp_path / "a.json")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text())["epoch"] == 3


def test_unknown_keys_are_errors_that_suggest_the_nearest_name(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"config_version": 1, "training_type": "lora", "netwrok_dim": 16,
                                "completely_unrelated": 1}))
    with pytest.raises(tc.ConfigError) as err:
        tc.load_config_file(path)
    text = str(err.value)
    assert "netwrok_dim" in text and "did you mean 'network_dim'" in text
    assert "completely_unrelated" in text


def test_a_config_from_a_newer_version_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"config_version": 99, "training_type": "lora"}))
    with pytest.raises(tc.ConfigError, match="newer .* update kohya-studio"):
        tc.load_config_file(path)


def test_an_unversioned_draft_is_migrated(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"training_type": "lora", "max_resolution": "768,768"}))
    assert tc.load_config_file(path).config.resolution == "768,768"


def test_a_broken_json_file_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(tc.ConfigError, match="broken.json is not valid JSON"):
        tc.load_config_file(path)


def test_value_checks_do_not_touch_the_disk():
    config, problems = validate_values("lora", {"train_data_dir": "/does/not/exist", "output_dir": "/nope"})
    assert config is not None and problems == []


def test_the_options_doc_is_generated_from_the_schema():
    from trainer.config.docs import options_markdown
    with open("docs/options.md", encoding="utf-8") as fh:
        assert fh.read() == options_markdown(), "run: python -m trainer.config.docs > docs/options.md"
