"""The `ss_*` training metadata written into every saved LoRA (sd-scripts §4.4), so A1111/ComfyUI
extensions show how a file was trained."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path


def training_metadata(config, *, base, plan: dict, seed: int, optimizer_desc: str, started_at: float,
                      mixed_precision: str, dataset_dirs: dict, tag_frequency: dict) -> dict[str, str]:
    c = config
    meta = {
        "ss_session_id": str(uuid.uuid4().int % 2**31),
        "ss_training_started_at": str(int(started_at)),
        "ss_output_name": c.output_name or "last",
        "ss_learning_rate": c.learning_rate,
        "ss_unet_lr": getattr(c, "unet_lr", None),
        "ss_text_encoder_lr": getattr(c, "text_encoder_lr", None),
        "ss_num_train_images": plan["repeats_total"],
        "ss_num_reg_images": plan["reg_images"],
        "ss_num_batches_per_epoch": plan["batches_per_epoch"],
        "ss_num_epochs": plan["epochs"],
        "ss_max_train_steps": plan["total_steps"],
        "ss_batch_size_per_device": c.train_batch_size,
        "ss_total_batch_size": c.train_batch_size * c.gradient_accumulation_steps * plan.get("num_processes", 1),
        "ss_gradient_accumulation_steps": c.gradient_accumulation_steps,
        "ss_gradient_checkpointing": c.gradient_checkpointing,
        "ss_mixed_precision": mixed_precision,
        "ss_full_fp16": getattr(c, "full_fp16", False),
        "ss_lr_scheduler": c.lr_scheduler,
        "ss_lr_warmup_steps": plan.get("warmup_steps", 0),
        "ss_optimizer": optimizer_desc,
        "ss_max_grad_norm": c.max_grad_norm,
        "ss_seed": seed,
        "ss_clip_skip": getattr(c, "clip_skip", 1),
        "ss_max_token_length": getattr(c, "max_token_length", 75),
        "ss_noise_offset": getattr(c, "noise_offset", 0),
        "ss_multires_noise_iterations": getattr(c, "multires_noise_iterations", 0),
        "ss_multires_noise_discount": getattr(c, "multires_noise_discount", 0.3),
        "ss_min_snr_gamma": getattr(c, "min_snr_gamma", 0),
        "ss_debiased_estimation": getattr(c, "debiased_estimation_loss", False),
        "ss_loss_type": getattr(c, "loss_type", "l2"),
        "ss_prior_loss_weight": getattr(c, "prior_loss_weight", 1.0),
        "ss_resolution": f"({getattr(c, 'resolution', '')})",
        "ss_cache_latents": getattr(c, "cache_latents", False),
        "ss_enable_bucket": getattr(c, "enable_bucket", False),
        "ss_min_bucket_reso": getattr(c, "min_bucket_reso", None),
        "ss_max_bucket_reso": getattr(c, "max_bucket_reso", None),
        "ss_bucket_no_upscale": getattr(c, "bucket_no_upscale", False),
        "ss_flip_aug": getattr(c, "flip_aug", False),
        "ss_color_aug": getattr(c, "color_aug", False),
        "ss_random_crop": getattr(c, "random_crop", False),
        "ss_shuffle_caption": getattr(c, "shuffle_caption", False),
        "ss_keep_tokens": getattr(c, "keep_tokens", 0),
        "ss_caption_dropout_rate": getattr(c, "caption_dropout_rate", 0),
        "ss_caption_dropout_every_n_epochs": getattr(c, "caption_dropout_every_n_epochs", 0),
        "ss_caption_tag_dropout_rate": getattr(c, "caption_tag_dropout_rate", 0),
        "ss_sd_model_name": Path(str(c.pretrained_model_name_or_path)).name,
        "ss_v2": base.family == "sd2",
        "ss_base_model_version": getattr(base, "base_model_version", base.family),
        "ss_vae_name": Path(c.vae).name if getattr(c, "vae", "") else "",
        "ss_dataset_dirs": json.dumps(dataset_dirs),
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_bucket_info": json.dumps({"buckets": plan["buckets"]}),
        "ss_training_comment": getattr(c, "training_comment", "") or "",
    }
    arch = getattr(base, "extra", {}).get("modelspec_architecture")
    if arch:  # DiT families: the variant (flux-1-dev / flux-1-schnell) the loader found
        meta["modelspec.architecture"] = arch + ("/lora" if getattr(c, "training_type", "lora") == "lora" else "")
    for key in ("title", "author", "description", "license", "tags"):
        value = getattr(c, f"metadata_{key}", "")
        if value:
            meta[f"modelspec.{key}"] = value
    return {k: _text(v) for k, v in meta.items()}


def at_save(meta: dict, epoch: int, step: int) -> dict[str, str]:
    return {**meta, "ss_epoch": str(epoch), "ss_steps": str(step),
            "ss_training_finished_at": str(int(time.time()))}


def _text(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else str(value)
    return str(value)
