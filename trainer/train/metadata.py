"""The `ss_*` training metadata written into every saved LoRA (sd-scripts §4.4), so A1111/ComfyUI
extensions show how a file was trained. Same keys and value formats as sd-scripts' train_network.py
(the list is kept in tests/data/sd_scripts_metadata_keys.txt): every value is Python's str() of the
setting — None → "None", tuples "(512, 512)" — and the structured ones are JSON."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from trainer.config.spec import parse_face_crop_aug_range, parse_resolution
from trainer.config.defaults import option

# what the studio records in ss_sd_scripts_commit_hash (sd-scripts puts its git revision there)
STUDIO_REVISION = "kohya-studio"

# sd-scripts options this trainer does not have: the keys carry the value that matches what it does
NOT_OPTIONS_HERE = {
    "ss_lowram": False,
}


def training_metadata(config, *, base, plan: dict, seed: int, optimizer_desc: str, started_at: float,
                      mixed_precision: str, dataset_dirs: dict, tag_frequency: dict,
                      reg_dataset_dirs: dict | None = None, bucket_info: dict | None = None,
                      masked: bool | None = None) -> dict[str, str]:
    """`masked`: whether the loss was masked (some subset had alpha masks); None = as the options say."""
    c = config
    width, height = parse_resolution(c.resolution)
    meta = {
        "ss_session_id": str(uuid.uuid4().int % 2**31),
        "ss_training_started_at": str(started_at),
        "ss_output_name": c.output_name or "last",
        "ss_learning_rate": c.learning_rate,
        "ss_unet_lr": option(c, "unet_lr"),
        "ss_text_encoder_lr": option(c, "text_encoder_lr"),
        "ss_num_train_images": plan["repeats_total"],
        "ss_num_validation_images": plan.get("validation_images", 0),
        # sd-scripts writes its None (not given) where 0 means "not given" here
        "ss_validation_seed": option(c, "validation_seed") or None,
        "ss_validation_split": float(option(c, "validation_split")),
        "ss_max_validation_steps": option(c, "max_validation_steps") or None,
        "ss_validate_every_n_epochs": option(c, "validate_every_n_epochs") or None,
        "ss_validate_every_n_steps": option(c, "validate_every_n_steps") or None,
        "ss_num_reg_images": plan["reg_images"],
        "ss_num_batches_per_epoch": plan["batches_per_epoch"],
        "ss_num_epochs": plan["epochs"],
        "ss_max_train_steps": plan["total_steps"],
        "ss_batch_size_per_device": c.train_batch_size,
        "ss_total_batch_size": c.train_batch_size * c.gradient_accumulation_steps * plan.get("num_processes", 1),
        "ss_gradient_accumulation_steps": c.gradient_accumulation_steps,
        "ss_gradient_checkpointing": bool(c.gradient_checkpointing),
        "ss_mixed_precision": mixed_precision,
        "ss_full_fp16": bool(c.full_fp16),
        "ss_fp8_base": bool(option(c, "fp8_base") or option(c, "fp8_base_unet")),  # sd-scripts sets both
        "ss_fp8_base_unet": bool(option(c, "fp8_base_unet")),
        "ss_lr_scheduler": c.lr_scheduler,
        "ss_lr_warmup_steps": plan.get("warmup_steps", 0),
        "ss_optimizer": optimizer_desc,
        "ss_max_grad_norm": c.max_grad_norm,
        "ss_seed": seed,
        "ss_clip_skip": c.clip_skip,
        "ss_max_token_length": c.max_token_length,
        "ss_noise_offset": c.noise_offset,
        "ss_multires_noise_iterations": c.multires_noise_iterations,
        "ss_multires_noise_discount": c.multires_noise_discount,
        "ss_noise_offset_random_strength": bool(c.noise_offset_random_strength),
        "ss_adaptive_noise_scale": c.adaptive_noise_scale or None,
        "ss_ip_noise_gamma": c.ip_noise_gamma or None,
        "ss_ip_noise_gamma_random_strength": bool(c.ip_noise_gamma_random_strength),
        "ss_zero_terminal_snr": bool(c.zero_terminal_snr),
        "ss_min_snr_gamma": c.min_snr_gamma,
        "ss_scale_weight_norms": option(c, "scale_weight_norms"),
        "ss_debiased_estimation": bool(c.debiased_estimation_loss),
        "ss_loss_type": c.loss_type,
        "ss_huber_c": c.huber_c,
        "ss_huber_schedule": c.huber_schedule,
        "ss_huber_scale": c.huber_scale,
        # not written by sd-scripts' train_network.py, but shown by LoRA metadata viewers when present
        "ss_masked_loss": bool(c.masked_loss or c.alpha_mask) if masked is None else bool(masked),
        "ss_prior_loss_weight": option(c, "prior_loss_weight"),
        "ss_resolution": (width, height),
        "ss_cache_latents": bool(c.cache_latents),
        "ss_enable_bucket": bool(c.enable_bucket),
        "ss_min_bucket_reso": c.min_bucket_reso,
        "ss_max_bucket_reso": c.max_bucket_reso,
        "ss_bucket_no_upscale": bool(c.bucket_no_upscale),
        "ss_flip_aug": bool(c.flip_aug),
        "ss_color_aug": bool(c.color_aug),
        "ss_random_crop": bool(c.random_crop),
        "ss_shuffle_caption": bool(c.shuffle_caption),
        "ss_keep_tokens": c.keep_tokens,
        "ss_caption_dropout_rate": c.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": c.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": c.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": parse_face_crop_aug_range(c.face_crop_aug_range),  # "(2.0, 4.0)" or "None"
        "ss_resize_interpolation": option(c, "resize_interpolation") or None,
        "ss_v2": base.family == "sd2",
        "ss_base_model_version": getattr(base, "base_model_version", base.family),
        "ss_dataset_dirs": json.dumps(dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dataset_dirs or {}),
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_bucket_info": json.dumps(bucket_info if bucket_info is not None else bucket_info_from_plan(plan)),
        "ss_training_comment": c.training_comment or None,
        "ss_sd_scripts_commit_hash": STUDIO_REVISION,
        "modelspec.resolution": f"{width}x{height}",
        **NOT_OPTIONS_HERE,
    }
    meta.update(model_names_and_hashes(c.pretrained_model_name_or_path, c.vae))
    arch = getattr(base, "extra", {}).get("modelspec_architecture")
    if arch:  # DiT families: the variant (flux-1-dev / flux-1-schnell) the loader found
        meta["modelspec.architecture"] = arch + ("/lora" if c.training_type == "lora" else "")
    for key in ("title", "author", "description", "license", "tags"):
        value = getattr(c, f"metadata_{key}")
        if value:
            meta[f"modelspec.{key}"] = value
    return {k: _text(v) for k, v in meta.items()}


def bucket_info(counts: dict[tuple[int, int], int], ar_errors: list[float]) -> dict:
    """sd-scripts' `ss_bucket_info`: {"buckets": {"0": {"resolution": [w, h], "count": n}, ...},
    "mean_img_ar_error": mean |aspect-ratio error| of the images} (A1111's LoRA card reads it)."""
    buckets = {str(i): {"resolution": [int(w), int(h)], "count": int(n)}
               for i, ((w, h), n) in enumerate(sorted(counts.items()))}
    mean = sum(abs(e) for e in ar_errors) / len(ar_errors) if ar_errors else 0.0
    return {"buckets": buckets, "mean_img_ar_error": mean}


def bucket_info_from_plan(plan: dict) -> dict:
    """The same structure from the plan's {"WxH": count} (when the dataset is not at hand)."""
    counts = {tuple(int(x) for x in k.split("x")): n for k, n in (plan.get("buckets") or {}).items()}
    return bucket_info(counts, [])


def model_names_and_hashes(model: str, vae: str = "") -> dict[str, str]:
    """ss_sd_model_name (+ ss_sd_model_hash / ss_new_sd_model_hash for a local file), same for the VAE,
    as sd-scripts: the old A1111 8-hex hash and the full sha256 (read once, at the start)."""
    from trainer.models.hashing import file_sha256, legacy_file_hash

    out = {}
    for prefix, value in (("sd_model", model), ("vae", vae)):
        if not value:
            continue
        path = Path(str(value))
        if path.is_file():
            out[f"ss_{prefix}_hash"] = legacy_file_hash(path)
            out[f"ss_new_{prefix}_hash"] = file_sha256(path)
        out[f"ss_{prefix}_name"] = path.name if path.exists() else str(value)
    return out


def optimizer_description(optimizer_class: type, args: dict) -> str:
    """sd-scripts' ss_optimizer: `module.Class`, with `(k=v,k=v)` when optimizer args were given."""
    name = f"{optimizer_class.__module__}.{optimizer_class.__name__}"
    return name + (f"({','.join(f'{k}={v}' for k, v in args.items())})" if args else "")


def at_save(meta: dict, epoch: int, step: int) -> dict[str, str]:
    return {**meta, "ss_epoch": str(epoch), "ss_steps": str(step),
            "ss_training_finished_at": str(time.time())}


def _text(value) -> str:
    """str() as sd-scripts writes it (None → "None", True → "True", (512, 512) → "(512, 512)")."""
    return str(value)
