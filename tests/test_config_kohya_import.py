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
    # GUI-only keys (model_list), neutral values (LyCORIS_preset full) and other families' settings
    # (t5xxl_lr, flux1_checkbox false) stay quiet; noise_offset_type has a counterpart now
    assert loaded.ignored_keys == []
    assert c.noise_offset_type == "Original"
    assert c.LyCORIS_preset == "full"  # a network option now (LyCORIS types)
    assert any("max_train_steps=1600" in n and "epochs govern" in n for n in loaded.notes)


def test_only_keys_that_would_change_training_are_reported_as_ignored(tmp_path):
    data = json.load(open(KOHYA_JSON))
    data.update({"train_norm": True, "adaptive_noise_scale": 0, "model_list": "custom", "mem_eff_attn": True,
                 "huber_schedule": "snr", "loss_type": "l2", "wandb_api_key": "secret-123"})
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert loaded.ignored_keys == ["train_norm (value True is not used)"]
    text = " ".join(loaded.notes + loaded.ignored_keys)
    assert "wandb_api_key" in text and "secret-123" not in text  # the key is named, never shown


def test_kohya_quirks_are_translated(tmp_path):
    data = json.load(open(KOHYA_JSON))
    data.update({"xformers": True, "LoRA_type": "LyCORIS/LoCon", "unet_lr": 0, "max_train_epochs": 4,
                 "lr_warmup_steps": 0.05, "use_8bit_adam": True, "max_train_steps": 0})
    del data["optimizer"]
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    c = loaded.config
    assert c.xformers == "xformers" and c.LoRA_type in ("Kohya LoCon", "LyCORIS/LoCon")
    # unet_lr 0 with a text-encoder rate: kohya_ss trains the text encoder only
    assert c.unet_lr is None and c.network_train_text_encoder_only and c.text_encoder_lr == 5e-5
    assert c.epoch == 4 and c.lr_warmup == pytest.approx(5.0) and c.optimizer == "AdamW8bit"


def test_an_unknown_optimizer_is_an_error_on_its_field(tmp_path):
    data = json.load(open(KOHYA_JSON))
    data["optimizer"] = "NoSuchOptimizer"
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    with pytest.raises(tc.ConfigError, match="optimizer: 'NoSuchOptimizer' is not a valid choice"):
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


def _kohya(tmp_path, **changes):
    data = json.load(open(KOHYA_JSON))
    data.update(changes)
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    return tc.load_config_file(path)


def test_kohya_unset_values_mean_sd_scripts_defaults(tmp_path):
    """kohya_ss leaves "", None and 0 out of the sd-scripts command: the defaults apply."""
    c = _kohya(tmp_path, vae_batch_size=0, max_train_steps="", seed="", lr_scheduler_num_cycles="",
               lr_scheduler_power="", clip_skip=0, max_train_epochs="", epoch="3").config
    assert c.vae_batch_size == 1 and c.max_train_steps == 0 and c.seed == 0 and c.clip_skip == 1
    assert c.lr_scheduler_num_cycles == 1 and c.lr_scheduler_power == 1.0 and c.epoch == 3


def test_numbers_written_as_strings_and_quoted_optimizer_args(tmp_path):
    loaded = _kohya(tmp_path, learning_rate="0.0001", gradient_accumulation_steps=2.0, max_token_length="150",
                    optimizer="AdamW", optimizer_args='"weight_decay=0.01" "betas=0.9,0.99"',
                    bucket_reso_steps=64.0, shuffle_caption="True")
    c = loaded.config
    assert c.learning_rate == 1e-4 and c.gradient_accumulation_steps == 2 and c.max_token_length == 150
    assert c.optimizer_args == "weight_decay=0.01 betas=0.9,0.99" and c.bucket_reso_steps == 64
    assert c.shuffle_caption is True


def test_cross_field_rules_see_parsed_numbers_not_strings():
    """A failing field must not make the rules compare "0.0001" with 0 (it used to be a TypeError)."""
    _, problems = tc.validate_values("lora", {"LoRA_type": "Standard", "learning_rate": "0.0001",
                                              "vae_batch_size": 0})
    assert [p.field for p in problems] == ["vae_batch_size"]
    with pytest.raises(tc.ConfigError) as err:
        tc.config_from_dict({"LoRA_type": "Standard", "learning_rate": "0.0001", "network_dim": "many"})
    assert [p.field for p in err.value.problems] == ["network_dim"]
    assert str(err.value).count("\n") == 1  # one line per problem


@pytest.mark.parametrize("unet, te, expect", [
    (0, 0, (None, None, False, False)),            # both 0: both train at learning_rate
    (1e-4, 0, (1e-4, None, True, False)),         # text encoder 0: UNet only
    (0, 5e-5, (None, 5e-5, False, True)),         # UNet 0: text encoder only
    ("", "", (None, None, False, False)),
])
def test_the_lora_learning_rate_rules_of_kohya_ss(tmp_path, unet, te, expect):
    c = _kohya(tmp_path, unet_lr=unet, text_encoder_lr=te).config
    assert (c.unet_lr, c.text_encoder_lr, c.network_train_unet_only, c.network_train_text_encoder_only) == expect


def test_max_train_epochs_overrides_max_train_steps(tmp_path):
    loaded = _kohya(tmp_path, max_train_epochs=8, max_train_steps=1600, epoch=1)
    assert loaded.config.epoch == 8 and loaded.config.max_train_steps == 0
    assert any("overrides max_train_steps" in n for n in loaded.notes)


def test_sdxl_dreambooth_reads_learning_rate_te1_and_te2(tmp_path):
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"sdxl": True, "learning_rate": 1e-5, "learning_rate_te": 0,
                                "learning_rate_te1": 2e-6, "learning_rate_te2": 0.0, "no_token_padding": False}))
    c = tc.load_config_file(path).config
    assert c.training_type == "dreambooth" and c.learning_rate_te == 2e-6 and c.learning_rate_te2 == 0.0
    path.write_text(json.dumps({"sdxl": False, "learning_rate": 1e-5, "learning_rate_te": 3e-6,
                                "learning_rate_te1": 9e-6, "no_token_padding": False}))
    c = tc.load_config_file(path).config
    assert c.learning_rate_te == 3e-6 and c.learning_rate_te2 is None  # SD1: te1/te2 do not apply


def test_old_key_names_are_migrated_as_kohya_ss_does(tmp_path):
    path = tmp_path / "v21.json"
    path.write_text(json.dumps({"LoRA_type": "LoCon", "use_8bit_adam": True, "lora_network_weights": "",
                                "caption_extention": ".txt", "use_wandb": "True", "xformers": True,
                                "stop_text_encoder_training_pct": 0}))
    c = tc.load_config_file(path).config
    assert c.optimizer == "AdamW8bit" and c.log_with == "wandb" and c.xformers == "xformers"
    assert c.caption_extension == ".txt" and c.LoRA_type in ("Kohya LoCon", "LyCORIS/LoCon")


def test_additional_parameters_reach_their_options(tmp_path):
    loaded = _kohya(tmp_path, additional_parameters=' --network_train_unet_only --optimizer_args "weight_decay=0.01" '
                    '"d_coef=1" --no_such_flag 3')
    c = loaded.config
    assert c.network_train_unet_only and c.optimizer_args == "weight_decay=0.01 d_coef=1"
    assert loaded.ignored_keys == ["additional_parameters --no_such_flag"]


@pytest.mark.parametrize("data", [[], None, 3])
def test_a_json_that_is_not_an_object_is_refused(data):
    with pytest.raises(tc.ConfigError, match="not a config object"):
        tc.import_kohya_json(data, "lora")


def test_a_model_family_this_build_does_not_train_is_one_clear_refusal(tmp_path):
    with pytest.raises(tc.ConfigError) as err:
        _kohya(tmp_path, lumina_checkbox=True)
    assert [p.field for p in err.value.problems] == ["lumina_checkbox"]
    assert "Lumina family not supported yet" in str(err.value)
    # the list of what this build trains never names a family the import refuses
    trained = str(err.value).split("trains ")[1].split(" (kohya_ss")[0]
    from trainer.config import kohya_keys as K

    refused = set(K.UNSUPPORTED_FAMILIES.values()) | set(K.FAMILY_LORA_TYPES.values())
    assert "FLUX.1" in trained and not any(f in trained for f in refused)


def test_a_kohya_ss_flux1_oft_config_trains_flux1_oft_and_exports_to_oft_flux(tmp_path):
    """kohya_ss passes Flux1 OFT only enable_all_linear; its constraint is network_alpha, LyCORIS' constrain is not
    passed (left out with a note)."""
    from trainer.config.sd_scripts_export import sd_scripts_export

    loaded = _kohya(tmp_path, flux1_checkbox=True, LoRA_type="Flux1 OFT", enable_all_linear=True, constrain=0.5,
                    network_alpha=0.001)
    c = loaded.config
    assert (c.LoRA_type, c.enable_all_linear, c.constrain, c.network_alpha) == ("Flux1 OFT", True, 0.0, 0.001)
    assert any("constrain=0.5" in n and "network_alpha" in n for n in loaded.notes)
    export = sd_scripts_export(c)
    assert export.toml_data["network_module"] == "networks.oft_flux"
    assert export.toml_data["network_args"] == ["enable_all_linear=True"]


def test_a_kohya_ss_flux1_lora_config_is_a_flux_lora_here(tmp_path):
    loaded = _kohya(tmp_path, flux1_checkbox=True, LoRA_type="Flux1")
    assert loaded.config.flux1_checkbox and loaded.config.LoRA_type == "Standard"
    assert any("Flux1" in n for n in loaded.notes)


def test_the_unused_noise_of_noise_offset_type_is_a_warning():
    _, problems = tc.validate_values("lora", {"noise_offset_type": "Original", "multires_noise_iterations": 6})
    assert [(p.field, p.level) for p in problems] == [("multires_noise_iterations", "warning")]


def test_key_equals_value_parameters_and_a_side_off_the_8_pixel_grid(tmp_path):
    loaded = _kohya(tmp_path, additional_parameters="--log_prefix=xl-loha", max_resolution="512,650")
    assert loaded.config.log_prefix == "xl-loha"
    assert loaded.config.resolution == "512,648" and any("650" in n for n in loaded.notes)


@pytest.mark.parametrize("source", [KOHYA_JSON, "tests/data/kohya_presets/test_dreambooth_prodigy_sdxl.json",
                                    "tests/data/kohya_presets/finetune_lion.json"])
@pytest.mark.parametrize("junk", [[1], {"a": 1}, "x", -1, 1e30, True])
def test_any_value_of_any_key_is_a_clear_problem_never_a_traceback(junk, source):
    data = json.load(open(source))
    for key in list(data):
        changed = {**data, key: junk}
        try:
            tc.config_from_dict(changed)
        except tc.ConfigError as exc:
            assert exc.problems and all(p.field and "\n" not in p.message for p in exc.problems)


def test_sd1_dreambooth_learning_rate_te_0_trains_the_text_encoder_as_train_db_does(tmp_path):
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"learning_rate": "2e-6", "learning_rate_te": 0, "no_token_padding": False}))
    loaded = tc.load_config_file(path)
    assert loaded.config.learning_rate_te == 2e-6
    assert any("learning_rate_te 0" in n for n in loaded.notes)
