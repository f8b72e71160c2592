"""Import of Kohya_ss GUI JSON configs (flat keys, v21–v26 naming) into this project's options.

It reads a file the way kohya_ss does (its loader's migrations, numbers stored as strings, "" and 0
meaning "not given") and turns it into the run kohya_ss would have launched with sd-scripts. What
cannot be imported is one Problem per field; keys with no counterpart here are listed only when
their value would change the training (kohya_keys.py says which keys are GUI-only).
"""
from __future__ import annotations

import math
import shlex
from typing import Any, Literal, get_args, get_origin

from . import kohya_keys as K
from trainer.families import FAMILY_NAMES
from trainer.problems import Problem

from .defaults import schema_default
from .rules import ConfigError, validate_values
from .spec import _unwrap_optional, parse_resolution
from .kohya_import_dit import SUPPORTED_FAMILY_FLAGS, prepare_dit_keys
from .types import CONFIG_TYPES

UNSET = object()  # kohya's "not given": our default (= sd-scripts' default) applies


def detect_training_type(data: dict[str, Any]) -> str | None:
    """Which tab a Kohya_ss JSON came from, when its keys tell."""
    if not isinstance(data, dict):
        return None
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
    return v not in (None, "", False, 0, 0.0, [], {}, "0")


# ---- values -------------------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    """kohya's float(x) with its fallbacks: "" / None / junk → None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)):
        return _number(value[0]) if value else None
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _coerce(field, value: Any) -> Any:
    """Kohya's value in the type of our field; unparseable values are returned as they are (validation
    then names the field)."""
    annotation, _ = _unwrap_optional(field.annotation)
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        if all(isinstance(c, int) for c in choices) and _number(value) is not None:
            return int(_number(value))
        return value if isinstance(value, str) else str(value)
    if annotation is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return value
    if annotation in (int, float):
        number = _number(value)
        if number is None:
            return value
        if annotation is int:
            return int(number) if number.is_integer() else value
        return number
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


def _is_unset(name: str, value: Any) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return name not in K.EMPTY_KEPT
    return False


# ---- the file's own conventions, before mapping ---------------------------------------------------

def _upgrade(data: dict, notes: list[str]) -> dict:
    """kohya_ss's `update_my_data` migrations of older files, and the one-off spellings."""
    data = dict(data)
    if "use_8bit_adam" in data:
        flag = data.pop("use_8bit_adam")
        if not data.get("optimizer"):
            data["optimizer"] = "AdamW8bit" if str(flag).lower() == "true" else "AdamW"
    if data.get("LoRA_type") == "LoCon":
        data["LoRA_type"] = "LyCORIS/LoCon"
    # kohya_ss's LoKr panel writes its Tucker switch as use_cp (LyCORIS's old name for use_tucker).
    if "LoKr" in str(data.get("LoRA_type", "")) and str(data.pop("use_cp", "")).lower() == "true":
        data["use_tucker"] = True
    if "use_wandb" in data:
        if str(data.pop("use_wandb")).lower() == "true" and not data.get("log_with"):
            data["log_with"] = "wandb"
    if isinstance(data.get("xformers"), bool) or data.get("xformers") in ("True", "False"):
        data["xformers"] = "xformers" if str(data["xformers"]) == "True" else "none"
    if "stop_text_encoder_training_pct" in data:
        data.setdefault("stop_text_encoder_training", data.pop("stop_text_encoder_training_pct"))
    backend = str(data.get("dynamo_backend") or "no").strip().lower()
    if backend != "no" and "compile" not in data:  # kohya_ss passes it to accelerate launch: torch.compile
        data["compile"] = "on"
        notes.append(f"dynamo_backend {backend!r}: accelerate compiled the model with torch.compile, so compile is "
                     "on" + ("" if backend == "inductor" else " (with torch's default inductor backend)"))
    if data.get("wandb_api_key"):
        notes.append("wandb_api_key is in the file but is not copied (a secret stays out of configs and logs); "
                     "set WANDB_API_KEY in the environment or run `wandb login`")
    return data


def _additional_parameters(text: str, fields, values: dict, ignored: list[str]) -> None:
    """The free-text "Additional parameters" kohya_ss appends to the sd-scripts command."""
    try:
        tokens = shlex.split(text.replace("\\", "/"))
    except ValueError:
        tokens = text.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            continue
        key, eq, inline = token[2:].partition("=")  # --key=value or --key value …
        key = key.replace("-", "_")
        args = [inline] if eq else []
        while i < len(tokens) and not tokens[i].startswith("--"):
            args.append(tokens[i])
            i += 1
        if key in K.SD_SCRIPTS_SCHEDULE_ARGS and "lr_scheduler_args" in fields and args:
            if _schedule_arg(key, args[0], values):
                continue
        target = K.SD_SCRIPTS_RENAMED.get(key, key)
        if target not in fields:
            ignored.append(f"additional_parameters {token}")
            continue
        annotation, _ = _unwrap_optional(fields[target].annotation)
        if not args:
            values[target] = {"sdpa": "sdpa", "torch_compile": "on"}.get(key, True)
        elif target in ("optimizer_args", "lr_scheduler_args"):
            values[target] = " ".join(args)
        elif target in K.LIST_ARGS:  # nargs lists: the option's own text (base_weights one path per line)
            values[target] = K.LIST_ARGS[target].join(args)
        else:
            values[target] = _coerce(fields[target], " ".join(args))


def _schedule_arg(key: str, value: str, values: dict) -> bool:
    """--lr_scheduler_min_lr_ratio 0.1 → lr_scheduler_args min_lr_rate=0.1 (the name the chosen schedule
    takes); False when the schedule does not read it (sd-scripts then ignored it too)."""
    scheduler = values.get("lr_scheduler", schema_default("lr_scheduler"))
    name = K.SD_SCRIPTS_SCHEDULE_ARGS[key].get(scheduler)
    if name is None:
        return False
    value = value.strip()
    if value.endswith("%"):  # sd-scripts reads lr_decay_steps "10%" as a ratio of the run
        value = str(float(value[:-1]) / 100) if _number(value[:-1]) is not None else value
    if _number(value) is None:
        return False
    existing = [a for a in str(values.get("lr_scheduler_args", "")).split() if not a.startswith(f"{name}=")]
    values["lr_scheduler_args"] = " ".join([*existing, f"{name}={value}"])
    return True


def unsupported_family(data: dict) -> Problem | None:
    """The refusal for a model family this build does not train (one place, easy to lift)."""
    for key, family in K.UNSUPPORTED_FAMILIES.items():
        if str(data.get(key, "")).lower() == "true":
            return _family_problem(key, family)
    lora_type = data.get("LoRA_type")
    family = K.FAMILY_LORA_TYPES.get(lora_type) if isinstance(lora_type, str) else None
    return _family_problem("LoRA_type", family) if family else None


def _family_problem(field: str, family: str) -> Problem:
    trained = ", ".join(FAMILY_NAMES.values())  # the families this build has (trainer.families)
    return Problem.at(field, f"{family} family not supported yet: kohya-studio trains {trained} (kohya_ss runs "
                      f"this config with sd-scripts' {K.SD_SCRIPTS_OF_FAMILY[family]})")


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))


def _unused(key: str, value: Any, data: dict) -> str | None:
    """A report line for a key with no counterpart, or None when it would not change the training."""
    if key in K.GUI_ONLY or key.startswith(K.FAMILY_KEY_PREFIXES) or key in K.FAMILY_KEYS:
        return None
    if key in K.RELEVANT_IF:
        other, wanted = K.RELEVANT_IF[key]
        if not _hashable(data.get(other)) or data.get(other) not in wanted:
            return None
    if not _has_value(value) or (_hashable(value) and value in K.NEUTRAL.get(key, ())):
        return None
    return f"{key} (value {value!r} is not used)" if isinstance(value, (int, float, bool)) else \
        f"{key} (has a value that is not used)"


# ---- the mapping --------------------------------------------------------------------------------

def import_kohya_json(data: dict[str, Any], training_type: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """Map a Kohya_ss GUI JSON. Returns (values for our schema, ignored keys, notes for the user);
    raises ConfigError (every problem, one line each) when kohya_ss's run cannot be reproduced."""
    if not isinstance(data, dict):
        raise ConfigError([Problem.at("config", f"the file holds a {type(data).__name__}, not a config object "
                                   "({...} with option names)")])
    fields = CONFIG_TYPES[training_type].model_fields
    notes: list[str] = []
    ignored: list[str] = []
    problems: list[Problem] = []
    data = prepare_dit_keys(_upgrade(data, notes), notes)
    family = unsupported_family(data)
    if family:
        problems.append(family)
    values: dict[str, Any] = {}
    special = {"additional_parameters", "max_train_epochs", "text_encoder_lr", "unet_lr", "learning_rate_te",
               "learning_rate_te1", "learning_rate_te2", "stop_text_encoder_training"}
    for key, raw in data.items():
        if key in special:
            continue
        target = K.RENAMED.get(key, key)
        if target not in fields or target in ("config_version", "training_type"):
            line = _unused(key, raw, data)
            if line:
                ignored.append(line)
            continue
        if _is_unset(target, raw):
            continue
        value = _coerce(fields[target], raw)
        if target in K.ZERO_MEANS and isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            value = K.ZERO_MEANS[target]
            if value is None:
                continue
            if target == "max_grad_norm":
                notes.append("max_grad_norm 0: kohya_ss leaves zeros out of the command, so sd-scripts clipped "
                             "at its default 1.0; 1.0 is used — set 0 here to turn clipping off")
        values[target] = value
    if data.get("additional_parameters"):
        _additional_parameters(str(data["additional_parameters"]), fields, values, ignored)
    _run_length(data, values, notes)
    _learning_rates(data, values, training_type, notes)
    problems += _choices(values, fields, notes)
    _finish(data, values, training_type, notes)
    if problems:
        _, rest = validate_values(training_type, values)
        named = {p.field for p in problems}
        raise ConfigError(problems + [p for p in rest if p.level == "error" and p.field not in named])
    return values, ignored, notes


def _run_length(data: dict, values: dict, notes: list[str]) -> None:
    """sd-scripts: max_train_epochs, when given, overrides max_train_steps."""
    epochs = _number(data.get("max_train_epochs"))
    if epochs and epochs > 0:
        values["epoch"] = int(epochs)
        if values.pop("max_train_steps", 0):
            notes.append(f"max_train_epochs={int(epochs)} overrides max_train_steps={data.get('max_train_steps')}, "
                         "as in sd-scripts: the run lasts that many epochs")
        return
    steps = values.get("max_train_steps", schema_default("max_train_steps"))
    if steps:
        epoch = values.get("epoch", schema_default("epoch"))
        notes.append(f"max_train_steps={steps} is kept, so the run stops at {steps} steps whatever epoch "
                     f"({epoch}) says, as in Kohya_ss; set it to 0 to let epochs govern")


def _learning_rates(data: dict, values: dict, training_type: str, notes: list[str]) -> None:
    if training_type == "lora":
        te, unet = _number(data.get("text_encoder_lr")) or 0.0, _number(data.get("unet_lr")) or 0.0
        # kohya_ss: both 0 → both at learning_rate; one 0 → only the other part trains
        values["unet_lr"] = unet or None
        values["text_encoder_lr"] = te or None
        if te == 0 and unet > 0 and not values.get("network_train_text_encoder_only"):
            values["network_train_unet_only"] = True
        elif unet == 0 and te > 0 and not values.get("network_train_unet_only"):
            values["network_train_text_encoder_only"] = True
        if data.get("stop_text_encoder_training") not in (None, "", 0, "0"):
            notes.append("stop_text_encoder_training is not supported for LoRA by kohya_ss either; it was ignored")
        return
    if training_type not in ("dreambooth", "finetune"):
        return
    if any(str(data.get(flag, "")).lower() == "true" for flag in SUPPORTED_FAMILY_FLAGS):
        # FLUX.1 / SD3 full training here fine-tunes the transformer only (trainer/kinds/dreambooth.py)
        if "learning_rate_te" in CONFIG_TYPES[training_type].model_fields:
            values["learning_rate_te"] = 0.0
        if any(_number(data.get(k)) for k in ("learning_rate_te", "learning_rate_te1", "learning_rate_te2")):
            notes.append("the text-encoder learning rates are not used: FLUX.1/SD3 fine-tuning here trains the "
                         "transformer only, with the text encoders frozen")
        return
    sdxl = bool(values.get("sdxl"))
    if sdxl:  # sd-scripts' SDXL trainers: learning_rate_te1/te2, None = learning_rate, 0 = frozen
        for key, target in (("learning_rate_te1", "learning_rate_te"), ("learning_rate_te2", "learning_rate_te2")):
            rate = _number(data.get(key))
            if rate is not None:
                values[target] = rate
            elif key in data and training_type == "dreambooth":
                values[target] = values.get("learning_rate", CONFIG_TYPES[training_type]().learning_rate)
        return
    rate = _number(data.get("learning_rate_te"))
    if training_type == "dreambooth" and "learning_rate_te" in data and not rate:
        # kohya_ss leaves 0 out; train_db.py then trains the text encoder at learning_rate
        values["learning_rate_te"] = values.get("learning_rate", CONFIG_TYPES[training_type]().learning_rate)
        notes.append("learning_rate_te 0: kohya_ss leaves it out, so sd-scripts trained the text encoder at "
                     f"learning_rate ({values['learning_rate_te']}); set learning_rate_te 0 here to keep it frozen")
    elif rate is not None:
        values["learning_rate_te"] = rate
    pct = _number(data.get("stop_text_encoder_training"))
    if training_type == "dreambooth" and pct:
        notes.append(f"stop_text_encoder_training was {pct:g} % of the steps in Kohya_ss; here it is a step "
                     "count, so it was left at 0 — set it from the plan")


def _choices(values: dict, fields, notes: list[str]) -> list[Problem]:
    """Values outside our choices that kohya_ss offers: the nearest equivalent, or a clear refusal."""
    problems = []
    lora_type = values.get("LoRA_type")
    if isinstance(lora_type, str) and "LoRA_type" in fields:
        allowed = get_args(_unwrap_optional(fields["LoRA_type"].annotation)[0])
        if lora_type not in allowed and lora_type in K.LOCON_TYPES and "Kohya LoCon" in allowed:
            notes.append(f"LoRA_type {lora_type!r} is trained as 'Kohya LoCon' (same file keys)")
            values["LoRA_type"] = "Kohya LoCon"
        elif lora_type not in allowed and lora_type not in K.FAMILY_LORA_TYPES:
            problems.append(Problem.at("LoRA_type", f"{lora_type!r} is not available in this build; choose one of "
                                    f"{', '.join(map(repr, allowed))}"))
            values.pop("LoRA_type")
        elif lora_type in K.FAMILY_LORA_TYPES:
            values.pop("LoRA_type")
    if values.get("mixed_precision") == "fp8":
        problems.append(Problem.at("mixed_precision", "fp8 (accelerate's FP8 compute via Transformer Engine) is not "
                                "supported; use bf16 and tick fp8_base to keep the base model in 8 bits"))
        values.pop("mixed_precision")
    if values.get("sdxl") and values.get("v2"):
        problems.append(Problem.at("sdxl", "sdxl and v2 are both ticked; sd-scripts' SDXL trainers refuse v2 too; "
                                "untick v2 (and v_parameterization) for an SDXL checkpoint"))
    steps = values.get("bucket_reso_steps")
    if isinstance(steps, int) and steps % 8:
        if values.get("enable_bucket", schema_default("enable_bucket")):
            problems.append(Problem.at("bucket_reso_steps", f"{steps} is not a multiple of 8, so buckets would not "
                                    "fit the VAE's 8-pixel grid; sd-scripts refuses it too (kohya_ss's own test "
                                    "config carries it); use 64, or 32 for SDXL"))
        values.pop("bucket_reso_steps")
    return problems


def _resolution(values: dict, notes: list[str]) -> None:
    """A side that is not a multiple of 8 (kohya_ss's "512,650" preset): the VAE makes 8-pixel latent
    cells, so 650 px give the 81 latent rows of 648 px; the side is rounded down to that."""
    try:
        w, h = parse_resolution(values.get("resolution", schema_default("resolution")))
    except ValueError:
        return  # validation names the field
    if (w % 8 or h % 8) and min(w, h) >= 64:
        rounded = f"{w // 8 * 8},{h // 8 * 8}"
        notes.append(f"resolution {values['resolution']} becomes {rounded}: the VAE turns 8 pixels into one latent "
                     "cell, so sd-scripts trained on the same latent size")
        values["resolution"] = rounded


def _finish(data: dict, values: dict, training_type: str, notes: list[str]) -> None:
    if "optimizer_args" in values:  # kohya writes '"weight_decay=0.01" "betas=0.9,0.99"': shell quoting
        try:
            values["optimizer_args"] = " ".join(shlex.split(str(values["optimizer_args"])))
        except ValueError:
            pass
    if data.get("caption_extension") == "" or data.get("caption_extention") == "":
        values["caption_extension"] = ".caption"
        notes.append("caption_extension was empty; sd-scripts then reads .caption files, so .caption is used")
    if training_type in ("lora", "textual_inversion") and values.get("save_model_as") not in (
            None, "safetensors", "ckpt", "pt"):
        notes.append(f"save_model_as {values['save_model_as']!r} is not a LoRA/embedding format; safetensors "
                     "is used")
        values["save_model_as"] = "safetensors"
    _resolution(values, notes)
    _block_lr(data, values, notes)
    warmup = _number(data.get("lr_warmup_steps"))
    if warmup is not None and 0 < warmup < 1:  # a ratio of the run, as sd-scripts reads it
        values["lr_warmup"] = warmup * 100
        values["lr_warmup_steps"] = 0


def _block_lr(data: dict, values: dict, notes: list[str]) -> None:
    """kohya_ss puts block_lr in every fine-tune TOML, but only sdxl_train.py reads it: fine_tune.py (and the
    FLUX.1 / SD3 trainers) ran without it, and so does the import."""
    if values.get("block_lr") and not values.get("sdxl"):
        notes.append("block_lr is not used: it is an option of sdxl_train.py (SDXL) only, and this file trains "
                     "another model family, whose sd-scripts trainer ignored it")
        values.pop("block_lr")
