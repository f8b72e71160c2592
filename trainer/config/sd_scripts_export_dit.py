"""The sd-scripts export of a FLUX.1 / Chroma / SD3.5 config: kohya's family scripts (flux_train_network.py,
flux_train.py, sd3_train_network.py, sd3_train.py) with their own arguments (library/flux_train_utils.py
add_flux_train_arguments, sd3_train_utils.add_sd3_training_arguments, train_util.add_dit_training_arguments)."""
from __future__ import annotations

from typing import Any

from .defaults import option

# (family, training type) → the sd-scripts script; Chroma is trained by the FLUX.1 scripts (--model_type chroma)
DIT_SCRIPTS = {
    ("flux", "lora"): "flux_train_network.py", ("flux", "dreambooth"): "flux_train.py",
    ("flux", "finetune"): "flux_train.py", ("sd3", "lora"): "sd3_train_network.py",
    ("sd3", "dreambooth"): "sd3_train.py", ("sd3", "finetune"): "sd3_train.py",
}
SCRIPT_FAMILY = {"flux": "flux", "chroma": "flux", "sd3": "sd3"}
# our option → the same-named argument of the family's scripts, written when it has a value
FAMILY_ARGS = {
    "flux": ("clip_l", "t5xxl", "ae", "apply_t5_attn_mask", "guidance_scale", "timestep_sampling", "sigmoid_scale",
             "model_prediction_type", "discrete_flow_shift"),
    "sd3": ("clip_l", "clip_g", "t5xxl", "apply_t5_attn_mask"),
}
DIT_ARGS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "blocks_to_swap", "cpu_offload_checkpointing",
            "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk")
# SD-family arguments the DiT scripts do not define (sd-scripts would refuse the TOML key)
SD_ONLY = ("v2", "v_parameterization", "clip_skip", "max_token_length", "scale_v_pred_loss_like_noise_pred",
           "v_pred_like_loss", "zero_terminal_snr", "weighted_captions", "no_half_vae", "block_lr")


def dit_script(family: str | None, training_type: str) -> str | None:
    """The family's sd-scripts script, or None for the SD families (and a type kohya has no DiT script for)."""
    return DIT_SCRIPTS.get((SCRIPT_FAMILY.get(family or ""), training_type))


def dit_export(c, family: str, data: dict[str, Any]) -> None:
    """Add the family's arguments to `data` (the SD export's keys, already filled) and drop the SD-only ones."""
    script_family = SCRIPT_FAMILY[family]
    for name in SD_ONLY:
        data.pop(name, None)
    for name in FAMILY_ARGS[script_family] + DIT_ARGS:
        value = option(c, name)
        if value not in (None, "", False) and not (name == "blocks_to_swap" and not value):
            data[name] = value
    if option(c, "t5xxl_max_token_length"):
        data["t5xxl_max_token_length"] = option(c, "t5xxl_max_token_length")
    if family == "chroma":
        data["model_type"] = "chroma"
        data.pop("clip_l", None)
    if script_family == "sd3":
        # sd3_train*.py shift the training schedule with --training_shift (discrete_flow_shift is FLUX.1's)
        data["training_shift"] = option(c, "discrete_flow_shift")
    if c.training_type == "lora":
        _network_args(c, script_family, data)
    elif c.training_type in ("dreambooth", "finetune"):
        for name in ("learning_rate_te1", "learning_rate_te2", "learning_rate_te", "train_text_encoder",
                     "stop_text_encoder_training"):
            data.pop(name, None)  # the text encoders stay frozen here, as in kohya's flux_train.py


def _network_args(c, script_family: str, data: dict[str, Any]) -> None:
    args = [a for a in data.get("network_args", []) if not a.startswith(("down_lr_weight", "mid_lr_weight",
                                                                         "up_lr_weight", "block_"))]
    if script_family == "flux" and option(c, "train_blocks") != "all":
        args.append(f"train_blocks={c.train_blocks}")
    if option(c, "train_t5xxl"):
        args.append("train_t5xxl=True")
    if args:
        data["network_args"] = args
    else:
        data.pop("network_args", None)
