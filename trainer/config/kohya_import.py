"""Import of Kohya_ss GUI JSON configs (flat keys, v21–v26 naming) into this project's options."""
from __future__ import annotations

from typing import Any

from .kohya_import_dit import prepare_dit_keys
from .types import CONFIG_TYPES

# Kohya_ss GUI key → our option, where the names differ.
RENAMED = {
    "max_resolution": "resolution",
    "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs",
    "sdxl_no_half_vae": "no_half_vae",
    "lora_network_weights": "network_weights",
    "image_folder": "train_data_dir",
    "learning_rate_te1": "learning_rate_te",
    "caption_extention": "caption_extension",
}
LOCON_TYPES = {"Kohya LoCon", "LoCon", "LyCORIS/LoCon"}
INT_KEYS = {"clip_skip", "epoch", "gradient_accumulation_steps", "keep_tokens", "max_data_loader_n_workers",
            "save_every_n_epochs", "seed", "lr_scheduler_num_cycles", "max_train_steps", "max_token_length",
            "caption_dropout_every_n_epochs", "network_dim", "conv_dim", "train_batch_size", "num_processes",
            "lr_warmup_steps", "save_every_n_steps", "save_last_n_epochs", "save_last_n_steps", "vae_batch_size",
            "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "sample_every_n_epochs",
            "sample_every_n_steps", "min_timestep", "max_timestep", "multires_noise_iterations",
            "num_vectors_per_token", "dataset_repeats", "stop_text_encoder_training", "main_process_port",
            "num_cpu_threads_per_process"}


def detect_training_type(data: dict[str, Any]) -> str | None:
    """Which tab a Kohya_ss JSON came from, when its keys tell."""
    if "LoRA_type" in data or "network_dim" in data:
        return "lora"
    if "token_string" in data or "init_word" in data:
        return "textual_inversion"
    if "dataset_repeats" in data or "train_text_encoder" in data or "image_folder" in data:
        return "finetune"
    if "learning_rate_te" in data or "no_token_padding" in data:
        return "dreambooth"
    return None


def _has_value(v: Any) -> bool:
    return v not in (None, "", False, 0, 0.0, [], {})


def _coerce(key: str, value: Any) -> Any:
    if isinstance(value, str) and key in INT_KEYS:
        try:
            return int(float(value))
        except ValueError:
            return value  # validation will name it
    return value


def import_kohya_json(data: dict[str, Any], training_type: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """Map a Kohya_ss GUI JSON. Returns (values for our schema, ignored keys, notes for the user)."""
    fields = CONFIG_TYPES[training_type].model_fields
    values: dict[str, Any] = {}
    ignored: list[str] = []
    notes: list[str] = []
    data = prepare_dit_keys(data, notes)
    for key, value in data.items():
        if value is None:
            continue
        target = RENAMED.get(key, key)
        if key == "use_8bit_adam":
            if value and "optimizer" not in data:
                values["optimizer"] = "AdamW8bit"
            continue
        if key == "stop_text_encoder_training" and _has_value(value):
            notes.append(f"stop_text_encoder_training was {value} % of the steps in Kohya_ss; here it is a step "
                         "count, so it was left at 0 — set it from the plan")
            continue
        if key == "use_wandb":
            ignored.append(key)
            continue
        if target not in fields or target in ("config_version", "training_type"):
            ignored.append(key + (" (has a value that will not be used)" if _has_value(value) else ""))
            continue
        values[target] = _coerce(target, value)

    if "max_train_epochs" in data and _has_value(data["max_train_epochs"]):
        values["epoch"] = _coerce("epoch", data["max_train_epochs"])
        notes.append(f"max_train_epochs={data['max_train_epochs']} became epoch (Kohya lets it override steps)")
    if isinstance(values.get("xformers"), bool):
        values["xformers"] = "xformers" if values["xformers"] else "none"
    if values.get("LoRA_type") in LOCON_TYPES:
        if values["LoRA_type"] != "Kohya LoCon":
            notes.append(f"LoRA_type {values['LoRA_type']!r} is trained as 'Kohya LoCon' (same file keys)")
        values["LoRA_type"] = "Kohya LoCon"
    if values.get("unet_lr") in (0, 0.0, "") and training_type == "lora":
        values["unet_lr"] = None  # Kohya_ss: an empty/0 UNet LR falls back to learning_rate
    if values.get("text_encoder_lr") == "":
        values["text_encoder_lr"] = None
    if isinstance(values.get("text_encoder_lr"), list):
        values["text_encoder_lr"] = values["text_encoder_lr"][0] if values["text_encoder_lr"] else None
    if values.get("caption_extension") == "":
        values["caption_extension"] = ".caption"
        notes.append("caption_extension was empty; sd-scripts then reads .caption files, so .caption is used")
    if training_type in ("lora", "textual_inversion") and values.get("save_model_as") not in (
            None, "safetensors", "ckpt", "pt"):
        notes.append(f"save_model_as {values['save_model_as']!r} is not a LoRA/embedding format; safetensors "
                     "is used")
        values["save_model_as"] = "safetensors"
    if values.get("save_precision") == "float":
        pass
    warmup = data.get("lr_warmup_steps")
    if isinstance(warmup, float) and 0 < warmup < 1:
        values["lr_warmup"] = warmup * 100
        values["lr_warmup_steps"] = 0
    steps, epochs = values.get("max_train_steps", 0), values.get("epoch", 1)
    if steps:
        notes.append(f"max_train_steps={steps} is kept, so the run stops at {steps} steps whatever epoch "
                     f"({epochs}) says, as in Kohya_ss; set it to 0 to let epochs govern")
    return values, ignored, notes
