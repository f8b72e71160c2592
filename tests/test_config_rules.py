"""Each validation rule reports the field and the fix; all problems come back at once."""
import os

import pytest

import trainer.config as tc
from trainer.config import check_paths, validate_values


def problems_for(values, ttype="lora"):
    _, problems = validate_values(ttype, values)
    found = {}
    for p in problems:
        found[p.field] = (found.get(p.field, "") + " | " + p.message).strip(" |")
    return found


CASES = [
    ({"network_dim": 0}, "network_dim", "between 1 and 100000"),
    # kohya_ss's iA3/LoKr presets carry dims like 1024 or 100000; a plain LoRA that wide is refused
    ({"network_dim": 4096}, "network_dim", "wider than any SD1/SD2/SDXL layer"),
    ({"optimizer": "Adam"}, "optimizer", "AdamW8bit"),
    ({"mixed_precision": "fp8"}, "mixed_precision", "not a valid choice"),
    ({"full_fp16": True, "full_bf16": True, "mixed_precision": "fp16"}, "full_bf16", "cannot both"),
    ({"full_fp16": True, "mixed_precision": "bf16"}, "full_fp16", "needs mixed_precision fp16"),
    ({"full_bf16": True, "mixed_precision": "fp16"}, "full_bf16", "needs mixed_precision bf16"),
    ({"cache_latents": True, "color_aug": True}, "color_aug", "untick cache_latents"),
    ({"cache_latents": True, "random_crop": True}, "random_crop", "untick cache_latents"),
    ({"cache_text_encoder_outputs": True}, "cache_text_encoder_outputs", "network_train_unet_only"),
    ({"cache_text_encoder_outputs": True, "network_train_unet_only": True, "shuffle_caption": True},
     "cache_text_encoder_outputs", "shuffle_caption"),
    ({"learning_rate": 0, "unet_lr": 0, "text_encoder_lr": 0}, "learning_rate", "set unet_lr"),
    ({"network_train_unet_only": True, "network_train_text_encoder_only": True},
     "network_train_text_encoder_only", "exclude each other"),
    ({"resolution": "512,500"}, "resolution", "multiple of 8"),
    ({"resolution": "big"}, "resolution", "width,height"),
    ({"bucket_reso_steps": 60}, "bucket_reso_steps", "multiple of 8"),
    ({"min_bucket_reso": 768}, "min_bucket_reso", "lower it to 512"),
    ({"resolution": "1024,1024", "max_bucket_reso": 768}, "max_bucket_reso", "raise it to 1024"),
    ({"output_name": "my:lora?"}, "output_name", "unsafe in file names"),
    ({"output_name": ""}, "output_name", "empty"),
    ({"caption_extension": "txt"}, "caption_extension", "'.txt'"),
    ({"optimizer_args": "weight_decay 0.1"}, "optimizer_args", "key=value"),
    ({"min_timestep": 500, "max_timestep": 400}, "min_timestep", "below max_timestep"),
    ({"dim_from_weights": True}, "dim_from_weights", "needs network_weights"),
    ({"sdxl": True, "v2": True}, "sdxl", "exclude each other"),
    ({"base_weights": "style.safetensors\nchar.safetensors", "base_weights_multiplier": "0.8"},
     "base_weights_multiplier", "1 strength for 2 base_weights files"),
    ({"base_weights": "style.safetensors", "base_weights_multiplier": "0.8 strong"}, "base_weights_multiplier",
     "'strong' is not a number"),
    ({"base_weights_multiplier": "0.8"}, "base_weights_multiplier", "base_weights names no file"),
]


@pytest.mark.parametrize("values,field,fragment", CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(CASES)])
def test_each_rule_names_the_field_and_the_fix(values, field, fragment):
    found = problems_for(values)
    assert field in found, found
    assert fragment in found[field]


def test_every_problem_is_reported_at_once():
    found = problems_for({"network_dim": 0, "optimizer": "Adam", "full_fp16": True, "full_bf16": True,
                          "output_name": "a/b", "resolution": "500"})
    assert {"network_dim", "optimizer", "full_bf16", "output_name", "resolution"} <= set(found)


def test_dreambooth_cache_te_rule_names_its_own_fix():
    found = problems_for({"cache_text_encoder_outputs": True}, "dreambooth")
    assert "learning_rate_te to 0" in found["cache_text_encoder_outputs"]


def test_textual_inversion_needs_a_one_word_token():
    assert "token_string is empty" in problems_for({}, "textual_inversion")["token_string"]
    assert "one word" in problems_for({"token_string": "my char"}, "textual_inversion")["token_string"]


def test_warmup_with_constant_scheduler_is_a_warning_not_an_error():
    config, problems = validate_values("lora", {"lr_scheduler": "constant", "lr_warmup": 10})
    assert config is not None
    assert [p.level for p in problems if p.field == "lr_warmup"] == ["warning"]


def _paths(tmp_path, **values):
    base = {"train_data_dir": str(tmp_path), "output_dir": str(tmp_path / "out"),
            "pretrained_model_name_or_path": "org/name"}
    return {p.field: p.message for p in check_paths(tc.LoraConfig(**{**base, **values}))}


def test_a_model_path_that_is_neither_a_file_nor_a_hub_id_is_rejected(tmp_path):
    found = _paths(tmp_path, pretrained_model_name_or_path=str(tmp_path / "missing.safetensors"))
    assert "neither an existing file/folder nor a Hugging Face id" in found["pretrained_model_name_or_path"]
    assert "pretrained_model_name_or_path" not in _paths(tmp_path)  # org/name is fine
    (tmp_path / "m.safetensors").write_bytes(b"x")
    assert "pretrained_model_name_or_path" not in _paths(
        tmp_path, pretrained_model_name_or_path=str(tmp_path / "m.safetensors"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_output_folder_is_rejected_as_user(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "not writable" in _paths(tmp_path, output_dir=str(locked / "out"))["output_dir"]


def test_an_output_folder_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in _paths(tmp_path, output_dir=str(tmp_path / "afile" / "out"))["output_dir"]


def test_missing_folders_and_files_are_named(tmp_path):
    (tmp_path / "style.safetensors").write_bytes(b"x")
    found = _paths(tmp_path, train_data_dir=str(tmp_path / "nope"), reg_data_dir=str(tmp_path / "reg"),
                   network_weights=str(tmp_path / "w.safetensors"), resume=str(tmp_path / "state"),
                   base_weights=f"{tmp_path / 'style.safetensors'}, {tmp_path / 'missing.safetensors'}")
    assert "dataset/images" in found["train_data_dir"]
    assert {"reg_data_dir", "network_weights", "resume", "base_weights"} <= set(found)
    missing = [p.message for p in check_paths(tc.LoraConfig(base_weights=f"{tmp_path / 'style.safetensors'}, "
                                                                         f"{tmp_path / 'missing.safetensors'}"))
               if p.field == "base_weights"]  # only the one of the two files that is missing
    assert len(missing) == 1 and "missing.safetensors' does not exist" in missing[0]


def test_a1111_embeddings_must_be_saved_as_pt():
    found = problems_for({"token_string": "mychar", "embedding_format": "a1111"}, "textual_inversion")
    assert "set save_model_as to pt" in found["save_model_as"]


def test_an_embedding_is_named_after_its_token_unless_named():
    assert tc.TextualInversionConfig(token_string="mychar").output_name == "mychar"
    assert tc.TextualInversionConfig(token_string="mychar", output_name="v2").output_name == "v2"


def test_textual_inversion_cannot_cache_text_encoder_outputs():
    found = problems_for({"token_string": "mychar", "cache_text_encoder_outputs": True}, "textual_inversion")
    assert "Textual Inversion trains text-encoder embeddings" in found["cache_text_encoder_outputs"]


def test_finetuning_has_no_regularization_options():
    assert "reg_data_dir" not in tc.FinetuneConfig.model_fields
    assert "unknown option 'reg_data_dir'" in problems_for({"reg_data_dir": "x"}, "finetune")["reg_data_dir"]


def test_a_rejected_value_is_not_judged_again_by_its_default():
    found = problems_for({"min_bucket_reso": 32, "resolution": "64"})
    assert found["min_bucket_reso"] == "32 is out of range; use a value between 64 and 4096"
