"""Validation: every problem at once, each naming the field and the fix.

`validate_values` is pure (no file system) so the GUI can run it while the user types;
`check_paths` (paths.py) looks at the disk.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Iterable

from pydantic import ValidationError

from trainer.problems import Problem

from .base_weights import base_weights_problems
from .defaults import option
from .spec import parse_face_crop_aug_range, parse_resolution
from .types import CONFIG_TYPES, BaseConfig


class ConfigError(ValueError):
    """Raised with the full list of problems when a config cannot be used."""

    def __init__(self, problems: list[Problem], source: str = ""):
        self.problems = problems
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in problems if p.level == "error")
        super().__init__(f"{head}{sum(p.level == 'error' for p in problems)} problem(s) in the config:\n{lines}")


def config_class(training_type: str) -> type[BaseConfig]:
    try:
        return CONFIG_TYPES[training_type]
    except KeyError:
        raise ConfigError([Problem.at("training_type", f"unknown training type {training_type!r}; choose one of "
                                      f"{', '.join(CONFIG_TYPES)}")]) from None


MAX_UNKNOWN_LISTED = 20  # beyond this a file is not a config with typos: one line counts the rest


def unknown_key_problems(cls: type[BaseConfig], values: dict) -> list[Problem]:
    known = list(cls.model_fields)
    unknown = [key for key in values if key not in cls.model_fields]
    problems = []
    for key in unknown[:MAX_UNKNOWN_LISTED]:
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}?" if near else "remove it (see docs/options.md for the valid names)"
        problems.append(Problem.at(key, f"unknown option {key!r}; {hint}"))
    if len(unknown) > MAX_UNKNOWN_LISTED:
        rest = unknown[MAX_UNKNOWN_LISTED:]
        problems.append(Problem.at("config", f"{len(rest)} more unknown options "
                                   f"({', '.join(map(str, rest[:3]))}, …); "
                                   f"only the first {MAX_UNKNOWN_LISTED} are listed — is this the right file?"))
    return problems


def _field_error_message(err: dict, cls: type[BaseConfig]) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    value = err.get("input")
    if kind == "literal_error":
        return f"{value!r} is not a valid choice; use one of {ctx.get('expected')}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        spec = cls.model_fields[err["loc"][0]].metadata
        lo = next((m.ge for m in spec if getattr(m, "ge", None) is not None), None)
        hi = next((m.le for m in spec if getattr(m, "le", None) is not None), None)
        rng = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}")
        return f"{value!r} is out of range; use a value {rng}"
    return f"{value!r}: {err['msg']}"


def validate_values(training_type: str, values: dict[str, Any]) -> tuple[BaseConfig | None, list[Problem]]:
    """Check option values (no disk access). Returns (config or None, every problem found)."""
    cls = config_class(training_type)
    values = {k: v for k, v in values.items() if k != "training_type"}
    problems = unknown_key_problems(cls, values)
    good = {k: v for k, v in values.items() if k in cls.model_fields}
    config = None
    try:
        config = cls(**good)
    except ValidationError as exc:
        bad = set()
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "config"
            bad.add(name)
            problems.append(Problem.at(name, _field_error_message(err, cls)))
        partial = _parsed_part(cls, {k: v for k, v in good.items() if k not in bad})
        # a rule about a field whose value was rejected would judge the default, not the user's value
        problems += [p for p in cross_field_problems(partial) if p.field not in bad]
        return None, problems
    problems += cross_field_problems(config)
    if any(p.level == "error" for p in problems):
        return None, problems
    return config, problems


def _parsed_part(cls: type[BaseConfig], good: dict[str, Any]) -> BaseConfig:
    """The defaults with every value that parses on its own, parsed (never a raw string such as
    "0.0001"), so the cross-field rules compare numbers with numbers."""
    partial = cls()
    for name, value in good.items():
        try:
            setattr(partial, name, value)  # validate_assignment parses it as the field's type
        except (ValidationError, ValueError, TypeError):
            pass
    return partial


def parse_config(training_type: str, values: dict[str, Any], source: str = "") -> BaseConfig:
    config, problems = validate_values(training_type, values)
    if config is None:
        raise ConfigError(problems, source)
    return config


# ---- cross-field rules: each takes the config and yields problems ----------------------------

RULES: list[Callable[[BaseConfig], Iterable[Problem]]] = []


def rule(fn):
    RULES.append(fn)
    return fn


def cross_field_problems(c: BaseConfig) -> list[Problem]:
    return [p for fn in RULES for p in fn(c)]


@rule
def _precision(c):
    if c.full_fp16 and c.full_bf16:
        yield Problem.at("full_bf16", "full_fp16 and full_bf16 cannot both be on; untick one of them")
    if c.full_fp16 and c.mixed_precision != "fp16":
        yield Problem.at("full_fp16", f"full_fp16 needs mixed_precision fp16 (it is {c.mixed_precision}); set "
                         "mixed_precision to fp16 or untick full_fp16")
    if c.full_bf16 and c.mixed_precision != "bf16":
        yield Problem.at("full_bf16", f"full_bf16 needs mixed_precision bf16 (it is {c.mixed_precision}); set "
                         "mixed_precision to bf16 or untick full_bf16")


@rule
def _memory_savers(c):
    """sd-scripts' rules for fused_backward_pass (get_optimizer) and cpu_offload_checkpointing (flux_train)."""
    from .options_train import FullTrainingOptions

    if isinstance(c, FullTrainingOptions) and c.fused_backward_pass:
        if c.optimizer != "Adafactor":
            yield Problem.at("fused_backward_pass", "fused_backward_pass works with the Adafactor optimizer only "
                             f"(it is {c.optimizer}); choose Adafactor or untick fused_backward_pass")
        if c.gradient_accumulation_steps != 1:
            yield Problem.at("fused_backward_pass", "fused_backward_pass updates the weights inside each backward "
                             f"pass, so gradients cannot be summed over {c.gradient_accumulation_steps} batches; "
                             "set gradient_accumulation_steps to 1 or untick fused_backward_pass")
        if c.mixed_precision == "fp16":
            yield Problem.at("fused_backward_pass", "fused_backward_pass cannot use fp16 loss scaling (the scaler must "
                             "see every gradient before any weight changes); set mixed_precision to bf16 (or no)")
        if c.num_processes > 1:
            yield Problem.at("fused_backward_pass", "fused_backward_pass updates each weight before the GPUs average "
                             "their gradients; set num_processes to 1 or untick fused_backward_pass")
    if c.cpu_offload_checkpointing:
        if not c.gradient_checkpointing:
            yield Problem.at("cpu_offload_checkpointing", "cpu_offload_checkpointing offloads what gradient "
                             "checkpointing keeps; tick gradient_checkpointing too")
        elif c.gradient_checkpointing_mode != "full":
            yield Problem.at("cpu_offload_checkpointing", "cpu_offload_checkpointing works with "
                             "gradient_checkpointing_mode full (selective keeps activations on the GPU)")
        if c.blocks_to_swap:
            yield Problem.at("cpu_offload_checkpointing", "cpu_offload_checkpointing cannot be used with "
                             "blocks_to_swap (as in sd-scripts); set blocks_to_swap to 0 or untick "
                             "cpu_offload_checkpointing")


@rule
def _block_lr(c):
    """sdxl_train.py's --block_lr: 23 rates ≥ 0; SDXL's U-Net only (train_db.py / fine_tune.py have no such option)."""
    from trainer.families import FAMILY_NAMES, chosen_family

    from .block_lr import parse_block_lr

    text = option(c, "block_lr")
    if not str(text).strip():
        return
    try:
        rates = parse_block_lr(text)
    except ValueError as exc:
        yield Problem.at("block_lr", str(exc))
        return
    family = chosen_family(c.model_dump(include={"flux1_checkbox", "sd3_checkbox", "sdxl", "v2"}), None)
    if family not in (None, "sdxl"):
        yield Problem.at("block_lr", f"block_lr splits the SDXL U-Net into its 23 blocks (sd-scripts has it in "
                         f"sdxl_train.py only); this config trains {FAMILY_NAMES[family]}: clear block_lr")
    if not any(rates) and not trains_text_encoder(c):
        yield Problem.at("block_lr", "every block_lr value is 0, so nothing would train; give the blocks to train "
                         "a rate above 0 (e.g. 1e-6) or clear block_lr")
    if c.optimizer == "Adafactor" and not re.search(r"relative_step=false", c.optimizer_args, re.IGNORECASE):
        yield Problem.at("block_lr", "Adafactor with relative_step (its default) finds its own step size and "
                         "ignores every group's learning rate, so block_lr only freezes the blocks set to 0; add "
                         "relative_step=False scale_parameter=False to optimizer_args to use the rates",
                         level="warning")


@rule
def _latent_cache(c):
    try:
        parse_face_crop_aug_range(c.face_crop_aug_range)
    except ValueError as exc:
        yield Problem.at("face_crop_aug_range", str(exc))
    if c.cache_latents or c.cache_latents_to_disk:
        for name in ("color_aug", "random_crop", "face_crop_aug_range"):
            if getattr(c, name):
                off = "clear " if name == "face_crop_aug_range" else "untick "
                yield Problem.at(name, f"{name} changes the image every step, so cached latents would be stale; "
                                 "untick cache_latents (and cache_latents_to_disk) or " + off + name)


def mask_source_fix(c) -> str:
    """The ways to give images masks, for the training types that have them (fine-tuning has no mask folders)."""
    folder = ("set conditioning_data_dir (a folder of mask images named like the training images: white learns, "
              "black is ignored), " if "conditioning_data_dir" in type(c).model_fields else "")
    return f"tick alpha_mask (use each image's transparency as the mask), {folder}or untick masked_loss"


@rule
def _masked_loss(c):
    """sd-scripts' --masked_loss needs masks: the images' alpha or a mask folder (a dataset TOML can set either per
    subset, which the scan checks)."""
    folder = option(c, "conditioning_data_dir")
    if c.masked_loss and not c.alpha_mask and not folder and not c.dataset_config:
        yield Problem.at("masked_loss", "masked_loss weighs the loss by a mask per image, but no image has one: "
                         + mask_source_fix(c))
    if folder and c.alpha_mask and not c.dataset_config:
        yield Problem.at("conditioning_data_dir", "alpha_mask and conditioning_data_dir are two sources of the same "
                         "loss mask; untick alpha_mask to use the mask folder, or clear conditioning_data_dir to use "
                         "the images' transparency")
    if folder and c.dataset_config:
        yield Problem.at("conditioning_data_dir", "conditioning_data_dir is for the concept folders of "
                         "train_data_dir and is not used with a dataset_config (as in sd-scripts); set "
                         "conditioning_data_dir in each [[datasets.subsets]] that has masks", level="warning")


@rule
def _text_encoder_cache(c):
    if not (c.cache_text_encoder_outputs or c.cache_text_encoder_outputs_to_disk):
        return
    if trains_text_encoder(c):
        fix = {"lora": "tick network_train_unet_only", "dreambooth": "set learning_rate_te to 0",
               "finetune": "untick train_text_encoder",
               "textual_inversion": "Textual Inversion trains text-encoder embeddings, so"}[c.training_type]
        yield Problem.at("cache_text_encoder_outputs", "caching text-encoder outputs needs frozen text encoders "
                         f"(UNet-only training); {fix} or untick cache_text_encoder_outputs")
    changing = [n for n in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                            "caption_dropout_every_n_epochs", "enable_wildcard", "token_warmup_step") if getattr(c, n)]
    if changing:
        yield Problem.at("cache_text_encoder_outputs", f"captions change every step with {', '.join(changing)}, "
                         "so cached text-encoder outputs would be wrong; turn those off or untick "
                         "cache_text_encoder_outputs")


@rule
def _weighted_captions(c):
    """sd-scripts reads weighted captions with the SD1/SD2/SDXL CLIP encoders only (FLUX.1 and SD3 refuse it)."""
    if not c.weighted_captions:
        return
    family = "FLUX.1" if c.flux1_checkbox else "SD3" if c.sd3_checkbox else None
    if family:
        yield Problem.at("weighted_captions", f"weighted_captions works with SD1.x, SD2.x and SDXL models only, not "
                         f"{family}; untick weighted_captions (and write the captions without (word:1.2) weights)")


@rule
def _token_padding(c):
    """sd-scripts' train_db.py (SD1/SD2) pads with `tokenizer(captions, padding=True, truncation=True)`: one
    77-token chunk, no weights; sdxl_train.py has no such option."""
    if not option(c, "no_token_padding"):
        return
    family = next((name for flag, name in (("sdxl", "SDXL"), ("flux1_checkbox", "FLUX.1"), ("sd3_checkbox", "SD3"))
                   if getattr(c, flag)), None)
    if family:
        yield Problem.at("no_token_padding", "no_token_padding is an option of sd-scripts' train_db.py for SD1.x/"
                         f"SD2.x; {family} reads every caption at its full token length: untick no_token_padding")
    if c.max_token_length != 75:
        yield Problem.at("no_token_padding", "no_token_padding pads a batch to its longest caption within one "
                         "75-token chunk (sd-scripts cuts longer captions there), so max_token_length "
                         f"{c.max_token_length} cannot apply: set max_token_length to 75 or untick no_token_padding")
    if c.weighted_captions:
        yield Problem.at("no_token_padding", "weighted_captions reads every caption at 77 tokens (sd-scripts then "
                         "ignores no_token_padding): untick one of them")


@rule
def _save_ratio(c):
    if c.save_n_epoch_ratio and c.save_every_n_epochs not in (0, 1):
        yield Problem.at("save_every_n_epochs", f"save_n_epoch_ratio {c.save_n_epoch_ratio} sets the epoch "
                         f"cadence, so save_every_n_epochs {c.save_every_n_epochs} is not used (as in sd-scripts); "
                         "clear one of them", level="warning")


@rule
def _train_t5xxl(c):
    """kohya: a T5-XXL LoRA needs T5's outputs at every step (no text cache) and text-encoder training."""
    if c.training_type != "lora" or not c.train_t5xxl:
        return
    if c.cache_text_encoder_outputs or c.cache_text_encoder_outputs_to_disk:
        yield Problem.at("train_t5xxl", "train_t5xxl trains T5-XXL, so its outputs change every step and cannot be "
                         "cached; untick cache_text_encoder_outputs (and cache_text_encoder_outputs_to_disk) or untick "
                         "train_t5xxl")
    elif c.network_train_unet_only:
        yield Problem.at("train_t5xxl", "train_t5xxl puts a LoRA on the T5-XXL text encoder, but "
                         "network_train_unet_only trains the transformer only; untick network_train_unet_only or "
                         "untick train_t5xxl")


def trains_text_encoder(c) -> bool:
    if c.training_type == "lora":
        te_lr = c.learning_rate if c.text_encoder_lr is None else c.text_encoder_lr
        return not c.network_train_unet_only and te_lr > 0
    if c.training_type == "dreambooth":
        return c.learning_rate_te > 0
    if c.training_type == "finetune":
        return c.train_text_encoder
    return c.training_type == "textual_inversion"  # its new embedding rows live in the text encoder


@rule
def _learning_rates(c):
    if c.training_type == "lora":
        unet = c.learning_rate if c.unet_lr is None else c.unet_lr
        te = c.learning_rate if c.text_encoder_lr is None else c.text_encoder_lr
        if c.network_train_unet_only and c.network_train_text_encoder_only:
            yield Problem.at("network_train_text_encoder_only", "network_train_unet_only and "
                             "network_train_text_encoder_only exclude each other; untick one")
        trained = (0 if c.network_train_text_encoder_only else unet) + (0 if c.network_train_unet_only else te)
        if trained <= 0:
            yield Problem.at("learning_rate", "no part would be trained: every learning rate that applies is 0; "
                             "set unet_lr (or learning_rate) above 0, e.g. 1e-4")
    elif c.learning_rate <= 0 and not (c.training_type == "dreambooth" and c.learning_rate_te > 0):
        yield Problem.at("learning_rate", "learning_rate must be above 0 (e.g. 1e-5 for a full fine-tune)")


MAX_RESOLUTION_SIDE = 8192  # = max_bucket_reso's limit; an 8192² image is 1024² latents, beyond any GPU's memory


@rule
def _resolution_and_buckets(c):
    try:
        w, h = parse_resolution(c.resolution)
    except ValueError as exc:
        yield Problem.at("resolution", str(exc))
        return
    if max(w, h) > MAX_RESOLUTION_SIDE:
        yield Problem.at("resolution", f"{c.resolution!r}: a side of at most {MAX_RESOLUTION_SIDE} (the largest "
                         "bucket side); SDXL trains at 1024, SD1.x at 512")
        return
    if w % 8 or h % 8 or w < 64 or h < 64:
        yield Problem.at("resolution", f"{c.resolution!r}: each side must be a multiple of 8 and at least 64, e.g. "
                         f'"{max(64, w // 8 * 8)},{max(64, h // 8 * 8)}"')
    if c.bucket_reso_steps % 8:
        yield Problem.at("bucket_reso_steps", f"{c.bucket_reso_steps} is not a multiple of 8; use 64 (or 32 for SDXL)")
    if c.enable_bucket:
        if c.min_bucket_reso > min(w, h):
            yield Problem.at("min_bucket_reso", f"min_bucket_reso {c.min_bucket_reso} is above the resolution's "
                             f"smaller side {min(w, h)}; lower it to {min(w, h)} or less")
        if c.max_bucket_reso < max(w, h):
            yield Problem.at("max_bucket_reso", f"max_bucket_reso {c.max_bucket_reso} is below the resolution's "
                             f"larger side {max(w, h)}; raise it to {max(w, h)} or more")
        for name in ("min_bucket_reso", "max_bucket_reso"):
            if getattr(c, name) % c.bucket_reso_steps:
                yield Problem.at(name, f"{getattr(c, name)} is not a multiple of bucket_reso_steps "
                                 f"({c.bucket_reso_steps})", level="warning")


UNSAFE_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


@rule
def _output_name(c):
    name = c.output_name
    if not name.strip():
        yield Problem.at("output_name", "output_name is empty; give the result a file name such as mychar"
                         + (" (or set token_string)" if c.training_type == "textual_inversion" else ""))
    elif UNSAFE_NAME.search(name) or name.strip() in (".", "..") or name != name.strip():
        yield Problem.at("output_name", f"{name!r} has characters that are unsafe in file names "
                         '(< > : " / \\ | ? * or leading/trailing spaces); use letters, digits, - and _')


def _scheduler_type(c):
    name = c.lr_scheduler_type.strip()
    if not name:
        return
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
        yield Problem.at("lr_scheduler_type", f"{name!r} is not a class name or dotted path; write e.g. "
                         "CosineAnnealingLR or mypackage.schedules.MySchedule")
    if c.lr_warmup > 0 or c.lr_warmup_steps > 0:
        yield Problem.at("lr_warmup", f"lr_scheduler_type {name} has no warm-up (sd-scripts refuses warm-up "
                         "steps with a custom scheduler too); set lr_warmup and lr_warmup_steps to 0, or clear "
                         "lr_scheduler_type and use a warm-up schedule such as cosine")


@rule
def _misc(c):
    if c.caption_extension and not c.caption_extension.startswith("."):
        yield Problem.at("caption_extension", f"{c.caption_extension!r} must start with a dot, e.g. "
                         f"'.{c.caption_extension}'")
    if c.lr_scheduler == "constant" and (c.lr_warmup > 0 or c.lr_warmup_steps > 0):
        yield Problem.at("lr_warmup", "the 'constant' scheduler has no warm-up; set lr_warmup and lr_warmup_steps "
                         "to 0 or choose constant_with_warmup", level="warning")
    yield from _scheduler_type(c)
    if c.min_timestep >= c.max_timestep:
        yield Problem.at("min_timestep", f"min_timestep {c.min_timestep} must be below max_timestep {c.max_timestep}")
    if c.optimizer_args and not re.fullmatch(r"\s*(\S+=\S+)(\s+\S+=\S+)*\s*", c.optimizer_args):
        yield Problem.at("optimizer_args", f"{c.optimizer_args!r} is not a list of key=value pairs separated by "
                         'spaces, e.g. "weight_decay=0.01 betas=0.9,0.999"')
    if c.lr_scheduler_args and not re.fullmatch(r"\s*(\S+=\S+)(\s+\S+=\S+)*\s*", c.lr_scheduler_args):
        yield Problem.at("lr_scheduler_args", f"{c.lr_scheduler_args!r} is not a list of key=value pairs separated "
                         'by spaces, e.g. "min_lr_rate=0.1"')
    if c.sdxl and c.v2:
        yield Problem.at("sdxl", "sdxl and v2 exclude each other; tick the one that matches the checkpoint")
    if option(c, "dim_from_weights") and not c.network_weights:
        yield Problem.at("dim_from_weights", "dim_from_weights needs network_weights (the LoRA to read the ranks "
                         "from); choose the file or untick dim_from_weights")
    if c.training_type == "textual_inversion":
        if not c.token_string.strip():
            yield Problem.at("token_string", "token_string is empty; choose the new token, e.g. mychar")
        elif re.search(r"[\s,]", c.token_string.strip()):
            yield Problem.at("token_string", "token_string must be one word without spaces or commas, e.g. mychar")
        if c.embedding_format == "a1111" and c.save_model_as != "pt":
            yield Problem.at("save_model_as", "the A1111 embedding format is a .pt file; set save_model_as to pt or "
                             "choose embedding_format kohya")
        if not c.init_word.strip():
            yield Problem.at("init_word", "init_word is empty; use a word close to the concept, e.g. woman or *")


@rule
def _noise_type(c):
    """Kohya_ss applies only the extra noise noise_offset_type names; the other one's value is unused."""
    if c.noise_offset_type == "Original" and c.multires_noise_iterations:
        yield Problem.at("multires_noise_iterations", "multires noise is not used with noise_offset_type Original; "
                         "choose Multires or set it to 0", level="warning")
    if c.noise_offset_type == "Multires" and c.noise_offset:
        yield Problem.at("noise_offset", "noise_offset is not used with noise_offset_type Multires; choose Original "
                         "or set it to 0", level="warning")
    if c.zero_terminal_snr and c.v_pred_like_loss:
        yield Problem.at("v_pred_like_loss", "v_pred_like_loss divides the loss by SNR/(SNR+1), which is 0 at the last "
                         "timestep with zero_terminal_snr; set v_pred_like_loss to 0 or untick zero_terminal_snr")
    if c.adaptive_noise_scale and c.noise_offset_type == "Original" and not c.noise_offset:
        yield Problem.at("adaptive_noise_scale", "adaptive_noise_scale adds to noise_offset, which is 0 (sd-scripts "
                         "stops with an error here); set noise_offset (0.05–0.1) or set adaptive_noise_scale to 0")


@rule
def _base_weights(c):
    yield from base_weights_problems(c)


@rule
def _network_options(c):
    """Block-wise strings and type-specific limits of the network options (trainer.networks.options)."""
    if c.training_type == "lora":
        from trainer.networks.options import network_option_problems

        for field, message in network_option_problems(c):
            yield Problem.at(field, message)


@rule
def _validation_split(c):
    split = float(option(c, "validation_split"))
    if split >= 1:
        yield Problem.at("validation_split", f"validation_split {split:g} would hold out every image, leaving none to "
                         "train on; use a fraction below 1 such as 0.1 (or 0 for no validation)")
    if split <= 0 and option(c, "validate_every_n_steps"):
        yield Problem.at("validate_every_n_steps", "validate_every_n_steps is set but validation_split is 0, so no "
                         "image is held out and nothing is validated; set validation_split (e.g. 0.1)", "warning")
