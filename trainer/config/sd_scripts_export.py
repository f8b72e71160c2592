"""The way back to kohya's own scripts: a config as the sd-scripts `--config_file` TOML and the
`accelerate launch` command that runs it (what kohya_ss's "Print training command" shows).

Every key written is an sd-scripts argument name (optimizer_type, max_train_epochs, network_module,
list-valued optimizer_args, a prompts file …). Like kohya_ss, empty and off values are left out so
sd-scripts' own defaults apply; values whose zero means something else here are written explicitly.
Pure Python (no torch), so the GUI can call it.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import tomlio as toml

from trainer.atomic import atomic_write_text
from trainer.families import FAMILY_FLAGS, chosen_family, local_family
from trainer.networks.options import sd_scripts_network

from .base_weights import base_weight_files
from .block_lr import block_lr_text, parse_block_lr
from .kohya_keys import SD_SCRIPTS_SCHEDULE_ARGS
from .defaults import option
from .options_train import HUBER_LOSSES
from .sd_scripts_export_dit import dit_export, dit_script
from .spec import parse_resolution

# (training type, SDXL?) → the sd-scripts script
SCRIPTS = {
    ("lora", False): "train_network.py", ("lora", True): "sdxl_train_network.py",
    ("dreambooth", False): "train_db.py", ("dreambooth", True): "sdxl_train.py",
    ("finetune", False): "fine_tune.py", ("finetune", True): "sdxl_train.py",
    ("textual_inversion", False): "train_textual_inversion.py",
    ("textual_inversion", True): "sdxl_train_textual_inversion.py",
}
# our option → its sd-scripts name, copied when it has a value
SAME_NAME = (
    "pretrained_model_name_or_path", "v2", "v_parameterization", "vae", "no_half_vae", "save_precision",
    "train_data_dir", "output_dir", "output_name", "logging_dir", "dataset_config", "caption_extension",
    "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale",
    "shuffle_caption", "keep_tokens", "keep_tokens_separator", "secondary_separator", "caption_prefix",
    "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "enable_wildcard", "flip_aug", "color_aug", "random_crop", "cache_latents", "cache_latents_to_disk", "vae_batch_size",
    "persistent_data_loader_workers", "train_batch_size", "gradient_accumulation_steps", "mixed_precision",
    "full_fp16", "full_bf16", "gradient_checkpointing", "min_snr_gamma", "min_timestep", "loss_type",
    "debiased_estimation_loss", "scale_v_pred_loss_like_noise_pred", "fp8_base", "fp8_base_unet",
    "ip_noise_gamma", "v_pred_like_loss", "zero_terminal_snr",
    "learning_rate", "lr_scheduler", "lr_scheduler_num_cycles", "lr_scheduler_power", "save_every_n_epochs",
    "save_n_epoch_ratio", "save_every_n_steps", "save_last_n_epochs", "save_last_n_steps", "save_last_n_epochs_state",
    "save_last_n_steps_state", "save_state", "save_state_on_train_end",
    "resume", "training_comment", "sample_every_n_epochs", "sample_every_n_steps", "sample_at_first",
    "log_prefix", "log_tracker_name", "wandb_run_name", "metadata_title", "metadata_author", "metadata_description",
    "metadata_license", "metadata_tags", "reg_data_dir", "prior_loss_weight", "in_json", "dataset_repeats",
    "train_text_encoder", "network_weights", "dim_from_weights", "network_dropout", "network_train_unet_only",
    "network_train_text_encoder_only", "network_alpha", "network_dim", "token_string", "init_word",
    "num_vectors_per_token", "weights", "stop_text_encoder_training", "scale_weight_norms", "fused_backward_pass",
    "masked_loss", "alpha_mask", "conditioning_data_dir", "token_warmup_step", "face_crop_aug_range",
    "resize_interpolation",
    # LoRA only (train_network.py); 0 here is sd-scripts' None (not given), so 0 is left out
    "validation_split", "validation_seed", "validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps",
)
# written even when 0 / False: sd-scripts' default is not what 0 means here
ALWAYS = {"max_grad_norm", "max_data_loader_n_workers", "caption_extension"}


@dataclass
class Export:
    toml_data: dict[str, Any]
    script: str
    launch_args: list[str]  # accelerate launch flags
    prompts: str = ""  # sample prompts, one per line (written to a file the TOML names)
    notes: list[str] = field(default_factory=list)

    def command(self, toml_path: str | Path, sd_scripts: str = "sd-scripts") -> str:
        argv = ["accelerate", "launch", *self.launch_args, str(Path(sd_scripts) / self.script),
                "--config_file", str(toml_path)]
        return " ".join(shlex.quote(a) for a in argv)

    def toml_text(self) -> str:
        return toml.dumps(dict(sorted(self.toml_data.items())))


def _has(value: Any) -> bool:
    return value not in (None, "", False) and not (isinstance(value, (int, float)) and value == 0)


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError:
        return (text or "").split()


def sd_scripts_export(config, family: str | None = None) -> Export:
    """The sd-scripts TOML (argument names as keys) and accelerate flags for `config` on `family` (default: a
    ticked family checkbox, else the family the base model's header or folder tells)."""
    c = config
    kind = c.training_type
    family = chosen_family({flag: option(c, flag) for flag, _ in FAMILY_FLAGS},
                           family or local_family(c.pretrained_model_name_or_path))
    sdxl = family == "sdxl" or bool(c.sdxl)
    dit = dit_script(family, kind)
    script = dit or SCRIPTS[(kind, sdxl)]
    notes: list[str] = []
    data: dict[str, Any] = {}
    for name in SAME_NAME:
        if hasattr(c, name) and (_has(getattr(c, name)) or name in ALWAYS):
            data[name] = getattr(c, name)
    for name in ALWAYS:
        if hasattr(c, name):
            data[name] = getattr(c, name)
    data["resolution"] = ",".join(str(v) for v in parse_resolution(c.resolution))
    data["save_model_as"] = c.save_model_as
    if c.clip_skip > 1 and not sdxl:
        data["clip_skip"] = c.clip_skip
    if c.max_token_length != 75:
        data["max_token_length"] = c.max_token_length
    if c.max_timestep != 1000:
        data["max_timestep"] = c.max_timestep
    if c.seed:
        data["seed"] = c.seed
    if c.token_warmup_step:  # 0 would be left out, and sd-scripts' default is 1
        data["token_warmup_min"] = c.token_warmup_min
    if c.xformers in ("xformers", "sdpa"):
        data[c.xformers] = True
    if c.compile == "on":  # sd-scripts' own torch.compile switch (its dynamo_backend defaults to inductor)
        data["torch_compile"] = True
    if c.cache_text_encoder_outputs and sdxl:
        data["cache_text_encoder_outputs"] = True
    # sd-scripts: max_train_epochs overrides max_train_steps (whose default is 1600)
    if c.max_train_steps:
        data["max_train_steps"] = c.max_train_steps
    else:
        data["max_train_epochs"] = c.epoch
    _noise(c, data)
    _optimizer(c, data)
    if c.log_with:
        data["log_with"] = c.log_with
    data["sample_sampler"] = c.sample_sampler
    if c.cpu_offload_checkpointing:  # sd-scripts reads it in train_network.py (and flux_/sd3_train.py) only
        if kind == "lora" or dit:
            data["cpu_offload_checkpointing"] = True
        else:
            notes.append(f"cpu_offload_checkpointing is left out: {script} has no such option")
    if data.pop("fp8_base_unet", None) and kind != "lora":  # an argument of train_network.py only
        data["fp8_base"] = True
        notes.append(f"fp8_base_unet becomes fp8_base: {script} has only that, which stores the "
                     "text encoders in 8 bits too")
    _weighted_captions(c, data, notes, sdxl)
    _mask_folder(c, data, notes)
    if kind == "lora":
        _network(c, data, notes, family)
    elif kind in ("dreambooth", "finetune"):
        _full_model_rates(c, data, sdxl)
        _block_lr(c, data, notes, sdxl)
        if option(c, "no_token_padding"):  # train_db.py's flag (the config rules refuse it with sdxl)
            data["no_token_padding"] = True
    elif kind == "textual_inversion":
        if c.template != "caption":
            data["use_object_template" if c.template == "object template" else "use_style_template"] = True
    if dit:
        dit_export(c, family, data)
    return Export(data, script, _launch_args(c), prompts=c.sample_prompts, notes=notes)


def _mask_folder(c, data: dict, notes: list[str]) -> None:
    """A mask folder trains masked here; sd-scripts needs --masked_loss to read one (and to accept the subset key)."""
    if not data.get("conditioning_data_dir"):
        return
    if c.dataset_config:  # sd-scripts ignores it then, as this trainer does
        del data["conditioning_data_dir"]
        return
    data["masked_loss"] = True
    notes.append("conditioning_data_dir: sd-scripts' training scripts read mask folders from a dataset config's "
                 "[[datasets.subsets]] only, not for train_data_dir's concept folders; to train masked with them "
                 "write a dataset TOML whose subsets name image_dir and conditioning_data_dir")


def _noise(c, data: dict) -> None:
    data.pop("multires_noise_discount", None)
    if c.noise_offset_type == "Original" and c.noise_offset:
        data["noise_offset"] = c.noise_offset
        if c.noise_offset_random_strength:
            data["noise_offset_random_strength"] = True
        if c.adaptive_noise_scale:
            data["adaptive_noise_scale"] = c.adaptive_noise_scale
    if c.ip_noise_gamma and c.ip_noise_gamma_random_strength:
        data["ip_noise_gamma_random_strength"] = True
    if c.noise_offset_type == "Multires" and c.multires_noise_iterations:
        data["multires_noise_iterations"] = c.multires_noise_iterations
        data["multires_noise_discount"] = c.multires_noise_discount
    if c.loss_type in HUBER_LOSSES:
        data.update(huber_c=c.huber_c, huber_schedule=c.huber_schedule, huber_scale=c.huber_scale)


def _weighted_captions(c, data: dict, notes: list[str], sdxl: bool) -> None:
    if not option(c, "weighted_captions"):
        return
    script = SCRIPTS[(c.training_type, sdxl)]
    if c.training_type == "textual_inversion":  # add_custom_train_arguments(parser, False) there
        notes.append(f"weighted_captions is left out: {script} has no such option (captions are read as plain text)")
        return
    data["weighted_captions"] = True
    if sdxl and c.training_type != "lora" and data.get("cache_text_encoder_outputs"):
        notes.append(f"{script} refuses weighted_captions with cache_text_encoder_outputs (this trainer caches the "
                     "weighted outputs); untick one of them there")


def _optimizer(c, data: dict) -> None:
    data["optimizer_type"] = c.optimizer
    if c.optimizer_args:
        data["optimizer_args"] = _split(c.optimizer_args)
    _schedule(c, data)
    if c.lr_warmup_steps:
        data["lr_warmup_steps"] = c.lr_warmup_steps
    elif c.lr_warmup and c.lr_scheduler != "constant":
        data["lr_warmup_steps"] = round(c.lr_warmup / 100.0, 6)  # a ratio of the run, as kohya_ss writes it


def _schedule(c, data: dict) -> None:
    """sd-scripts passes the schedule's shape as its own arguments (min_lr_rate=lr_scheduler_min_lr_ratio …)
    and lr_scheduler_args on top: the same key in both is a TypeError there, so those keys move out."""
    args = _split(c.lr_scheduler_args) if c.lr_scheduler_args else []
    if c.lr_scheduler_type:
        data["lr_scheduler_type"] = c.lr_scheduler_type
    else:
        own = {name: arg for arg, names in SD_SCRIPTS_SCHEDULE_ARGS.items()
               for scheduler, name in names.items() if scheduler == c.lr_scheduler}
        for item in list(args):
            key, _, value = item.partition("=")
            if key in own:
                args.remove(item)
                data[own[key]] = float(value) if own[key] != "lr_decay_steps" or "." in value else int(value)
        has_min_lr = any(a.startswith("min_lr=") for a in args)
        if c.lr_scheduler == "cosine_with_min_lr" and not has_min_lr:  # sd-scripts has no default for it
            data.setdefault("lr_scheduler_min_lr_ratio", 0.0)
    if args:
        data["lr_scheduler_args"] = args


def _network(c, data: dict, notes: list[str], family: str | None) -> None:
    # the network package's own answer (the same one ss_network_args records), plus the LoRA+ ratios
    # that sd-scripts also reads from network_args
    data["network_module"], args = sd_scripts_network(c, family)
    for name in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if getattr(c, name):
            args.append(f"{name}={getattr(c, name)}")
    if args:
        data["network_args"] = args
    for name in ("unet_lr", "text_encoder_lr"):
        if getattr(c, name) is not None:
            data[name] = getattr(c, name)
    files = base_weight_files(c)  # train_network.py's nargs lists; no multipliers = its 1.0 each
    if files:
        data["base_weights"] = [path for path, _ in files]
        if c.base_weights_multiplier.strip():
            data["base_weights_multiplier"] = [m for _, m in files]


def _full_model_rates(c, data: dict, sdxl: bool) -> None:
    te = option(c, "learning_rate_te")
    if sdxl:
        te2 = option(c, "learning_rate_te2")
        rates = {"learning_rate_te1": te, "learning_rate_te2": te if te2 is None else te2}
        if any(rates.values()):
            data["train_text_encoder"] = True
            data.update(rates)
    elif c.training_type == "dreambooth":
        if te > 0:
            data["learning_rate_te"] = te
        else:
            data["stop_text_encoder_training"] = -1  # train_db.py: a negative step count freezes it
    elif te > 0:
        data["learning_rate_te"] = te


def _block_lr(c, data: dict, notes: list[str], sdxl: bool) -> None:
    """sdxl_train.py reads --block_lr as one string of 23 comma-separated rates."""
    rates = parse_block_lr(c.block_lr)
    if rates is None:
        return
    if sdxl:
        data["block_lr"] = block_lr_text(rates)
    else:
        notes.append(f"block_lr is left out: {SCRIPTS[(c.training_type, sdxl)]} has no such option (tick sdxl for an "
                     "SDXL model, which sdxl_train.py trains)")


def _launch_args(c) -> list[str]:
    args = ["--num_cpu_threads_per_process", str(c.num_cpu_threads_per_process)]
    if c.num_processes > 1:
        args += ["--multi_gpu", "--num_processes", str(c.num_processes), "--num_machines", "1"]
    if c.gpu_ids:
        args += ["--gpu_ids", c.gpu_ids]
    if c.main_process_port:
        args += ["--main_process_port", str(c.main_process_port)]
    return args + ["--mixed_precision", c.mixed_precision]


def write_sd_scripts_files(config, folder: str | Path, sd_scripts: str = "sd-scripts") -> tuple[Path, str]:
    """Write config_<type>-<time>.toml (and its prompt file) into `folder`; return (TOML path, command).
    A new time-stamped name each call, so nothing earlier is overwritten."""
    export = sd_scripts_export(config)
    folder = Path(folder).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    toml_path = folder / f"config_{config.training_type}-{stamp}.toml"
    n = 1
    while toml_path.exists():
        toml_path = folder / f"config_{config.training_type}-{stamp}-{n}.toml"
        n += 1
    if export.prompts.strip():
        prompts_path = toml_path.with_name(toml_path.stem + "_prompts.txt")
        atomic_write_text(prompts_path, export.prompts.strip() + "\n")
        export.toml_data["sample_prompts"] = str(prompts_path)
    atomic_write_text(toml_path, export.toml_text())
    return toml_path, export.command(toml_path, sd_scripts)
