"""Building a LoRA run: accelerator, base model, dataset (+ latent cache), network, optimizer, schedule.

Everything here happens once before the first step; `trainer.train.run` drives the loop.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import torch

from trainer.kinds.base import cast_module
from trainer.models.dit import family_denoise, family_forced_by
from trainer.plan import MAX_TRAIN_STEPS, run_length
from trainer.config.defaults import option

from .batches import StepBatches
from .compile import compile_enabled, compile_unet
from .faults import TrainingFault
from .flow_matching import objective_for
from .loop import Denoiser, StepContext
from .optimizers import build_optimizer
from .precision import (allow_fp16_gradients, effective_mixed_precision, enable_gradient_checkpointing,
                        network_dtype, set_attention, vae_dtype, weight_dtype)  # noqa: F401 (re-exported)
from .schedulers import build_scheduler, warmup_steps
from .text import TextConditioner

logger = logging.getLogger(__name__)


def resolve_seed(config) -> int:
    seed = int(config.seed)
    return seed if seed > 0 else random.SystemRandom().randint(1, 2**31 - 1)


def with_values(config, **values):
    """A copy of the config with some values replaced (pydantic model or plain namespace)."""
    if hasattr(config, "model_copy"):
        return config.model_copy(update=values)
    import copy

    clone = copy.copy(config)
    for k, v in values.items():
        setattr(clone, k, v)
    return clone


def make_accelerator(config, warn):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    mp = effective_mixed_precision(config.mixed_precision, torch.device("cuda" if cuda else "cpu"), warn)
    # module_dropout skips whole modules, so some LoRA weights get no gradient in a step
    ddp = DistributedDataParallelKwargs(find_unused_parameters=bool(option(config, "module_dropout")))
    accelerator = Accelerator(mixed_precision=mp, cpu=not cuda, kwargs_handlers=[ddp])
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, int(config.num_cpu_threads_per_process)))
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator, mp


def load_base(config, accelerator, mp: str):
    from trainer.models.loader import load_base_model

    family = family_forced_by(config) or (
        "sdxl" if config.sdxl else ("sd2" if config.v2 else None))
    files = {k: getattr(config, k) or None for k in ("clip_l", "clip_g", "t5xxl")}
    base = load_base_model(config.pretrained_model_name_or_path, family=family,
                           v_parameterization=True if config.v_parameterization else None,
                           vae=config.ae or config.vae or None,
                           text_encoder_files={k: v for k, v in files.items() if v} or None)
    bake_base_weights(config, base)  # in fp32, before any cast, fp8 or network touches the layers
    device, dtype = accelerator.device, weight_dtype(mp)
    n_swap = int(config.blocks_to_swap)
    if n_swap and config.training_type != "lora":
        raise TrainingFault("blocks_to_swap works with LoRA training only (the swapped blocks' weights are frozen).",
                            "Set blocks_to_swap to 0 for DreamBooth / fine-tuning.")
    # with block swap the transformer stays in host memory until its swapped blocks are set aside
    cast_module(base.unet, dtype, None if n_swap else device).requires_grad_(False).eval()
    for te in base.text_encoders:
        cast_module(te, dtype, device).requires_grad_(False).eval()
    cast_module(base.vae, vae_dtype(config, mp), device).requires_grad_(False).eval()
    modules = fp8_modules(config, base)
    if modules:  # before any network wraps the base layers' forwards
        from trainer.models.fp8 import Fp8Report, to_fp8

        report = sum((to_fp8(m, dtype) for m in modules), Fp8Report())
        logger.info("fp8_base: %d frozen base layers stored in 8-bit floats, %.2f → %.2f GiB (%.2f GiB saved)%s",
                    report.layers, report.bytes_before / 2**30, report.bytes_after / 2**30,
                    report.saved_bytes / 2**30, "" if len(modules) > 1 else " (the U-Net / transformer only)")
    if n_swap:  # after fp8; before any network wraps the base layers' forwards
        from .block_swap import install_block_swap

        base.extra["block_swap"] = install_block_swap(base, n_swap, device, logger.warning,
                                                      bool(config.gradient_checkpointing))
        cast_module(base.unet, dtype, device)  # the other blocks; the swapped ones stay in host memory
    return base


def bake_base_weights(config, base) -> None:
    """sd-scripts' base_weights: LoRA files merged into the base model, each at its multiplier, before training."""
    from trainer.config.base_weights import base_weight_files

    files = base_weight_files(config)
    if not files:
        return
    from trainer.networks.base_weights import merge_base_weights
    from trainer.networks.files import LoRAFileError

    try:
        lines = merge_base_weights(base, files)
    except LoRAFileError as exc:
        raise TrainingFault(f"base_weights: {exc}", "Choose LoRA files made for this base model (its family and "
                            "layout), or remove the file from base_weights.") from exc
    for line in lines:
        logger.info("base_weights: %s", line)


def fp8_modules(config, base) -> list:
    """What fp8_base stores in 8 bits: the denoiser, and the text encoders unless fp8_base_unet keeps them wide
    (sd-scripts: fp8_base_unet implies fp8_base for the U-Net / DiT)."""
    if option(config, "fp8_base_unet"):
        return [base.unet]
    return [base.unet, *base.text_encoders] if option(config, "fp8_base") else []


def plan_event(config, dataset, steps: StepBatches, base, accelerator) -> dict:
    train_samples, reg_samples = dataset.samples_per_epoch()
    per_epoch = steps.steps_per_epoch()
    if per_epoch == 0:
        raise TrainingFault("The dataset gives no training batches.", "Add images to the concept folders.")
    epochs, total = run_length(per_epoch, int(config.epoch), int(config.max_train_steps))
    if total > MAX_TRAIN_STEPS:
        raise TrainingFault(f"The run would take {total:,} steps ({per_epoch:,} per epoch × {epochs:,} epochs), more "
                            f"than the {MAX_TRAIN_STEPS:,} any run can finish.",
                            "Lower epoch or the repeats in the folder names (10_name = 10 repeats), or set "
                            "max_train_steps.")
    images = sum(1 for it in dataset.scan.items if not it.is_reg)
    held = dataset.scan.validation
    return {
        "images": images, "validation_images": len(held.items) if held else 0, "repeats_total": train_samples, "reg_images": reg_samples,
        "buckets": {f"{w}x{h}": n for (w, h), n in dataset.bucket_counts().items()},
        "batches_per_epoch": dataset.batches_per_epoch(), "steps_per_epoch": per_epoch, "epochs": epochs,
        "total_steps": total, "batch_size": int(config.train_batch_size),
        "gradient_accumulation_steps": int(config.gradient_accumulation_steps),
        "num_processes": accelerator.num_processes, "family": base.family,
    }


def build_data(config, base, accelerator, events, scan=None):
    """Scan → dataset (the plan needs it) → latent cache with `cache` progress events."""
    from trainer.data.dataset import TrainDataset, needs_flip_cache
    from trainer.data.latent_cache import LatentCache
    from trainer.data.loader import check_cache_compatible, loader_workers
    from trainer.data.scan import scan_dataset

    scan = scan if scan is not None else scan_dataset(config)
    for problem in scan.of("skipped") + scan.of("warning"):
        events.warning(str(problem))
    latents = None
    to_disk = bool(config.cache_latents_to_disk)
    if config.cache_latents or to_disk:
        check_cache_compatible(scan)
        latents = LatentCache(base.vae, to_disk=to_disk, cache_dir=config.latent_cache_dir,
                              batch_size=int(config.vae_batch_size),
                              on_progress=lambda done, total: events.emit("cache", what="latents", done=done,
                                                                          total=total))
    dataset = TrainDataset(scan, config, latents)
    steps = StepBatches(dataset, accelerator.process_index, accelerator.num_processes,
                        int(config.gradient_accumulation_steps), num_workers=loader_workers(dataset, config),
                        pin_memory=accelerator.device.type == "cuda",
                        persistent_workers=bool(config.persistent_data_loader_workers))
    return scan, latents, dataset, steps, needs_flip_cache(dataset)


def cache_latents(latents, scan, need_flip, accelerator) -> None:
    from trainer.data.dataset import needs_mask_cache

    # the main process writes disk caches first; the others then find them valid and only read
    with accelerator.main_process_first():
        latents.prepare(scan.items, need_flip, needs_mask_cache(scan))


def build_step_context(config, base, kind, groups, accelerator, mp, seed, warn, total_steps, cached: bool,
                       dataset=None, events=None):
    train_te = bool(kind.text_encoder_trains)
    if config.gradient_checkpointing:
        dropout = any(option(config, k) for k in ("network_dropout", "rank_dropout", "module_dropout"))
        if config.training_type == "lora":  # DyLoRA draws its ranks inside the forward too
            from trainer.networks.registry import network_type

            dropout = dropout or network_type(config.LoRA_type).random_ranks
        enable_gradient_checkpointing(base.unet, base.text_encoders, train_te,
                                      mode=config.gradient_checkpointing_mode,
                                      random_inside=dropout, cpu_offload=config.cpu_offload_checkpointing)
    set_attention(base.unet, config.xformers, warn)
    if compile_enabled(config.compile, accelerator.device, config.cuda_graphs):
        compile_unet(base.unet, warn)
    text = build_text(config, base, kind, accelerator, dataset, events)
    model = Denoiser(base.unet, text, getattr(kind, "network", None), call=family_denoise(base, config))
    optimizer = build_optimizer(config.optimizer, groups, config.learning_rate,
                                config.optimizer_args, accelerator.device)
    lr_scheduler = build_scheduler(config, optimizer, total_steps, warn)
    model, optimizer = accelerator.prepare(model, optimizer)
    if network_dtype(config, mp) == torch.float16:
        allow_fp16_gradients(accelerator.scaler)
    vae_cfg = base.vae.config
    return StepContext(
        accelerator=accelerator, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
        params=kind.trainable_parameters(), cfg=config,
        noise_scheduler=training_noise_scheduler(base, config, warn),
        v_prediction=base.v_prediction, vae=None if cached else base.vae,
        vae_scale=float(vae_cfg.scaling_factor), vae_shift=float(getattr(vae_cfg, "shift_factor", None) or 0.0),
        sdxl=base.family == "sdxl", objective=objective_for(base, config),
        latent_channels=int(getattr(vae_cfg, "latent_channels", 4) or 4), max_grad_norm=float(config.max_grad_norm),
        seed=seed,
        rank=accelerator.process_index)


def training_noise_scheduler(base, config, warn):
    """The base's DDPM schedule, rescaled to zero terminal SNR when asked (arXiv 2305.08891, sd-scripts'
    --zero_terminal_snr: the last timestep is pure noise). Samples keep the base's schedule, as in sd-scripts."""
    if not option(config, "zero_terminal_snr") or not hasattr(base.noise_scheduler, "alphas_cumprod"):
        return base.noise_scheduler  # (the flow-matching families have no ᾱ schedule to rescale)
    if not base.v_prediction:
        warn("zero_terminal_snr with an ε-prediction model: at the last timestep the input is pure noise and "
             "the model only learns to copy it; this option is meant for v-prediction models "
             "(tick v_parameterization if the model is one).")
    return type(base.noise_scheduler).from_config(base.noise_scheduler.config, rescale_betas_zero_snr=True)


TEXT_BATCH_SIZE = 16  # captions per text-encoder call while caching
AUTO_TEXT_CACHE_BYTES = 4 * 2**30  # the automatic cache gives way (to the lazy memo) beyond this


def build_text(config, base, kind, accelerator, dataset=None, events=None) -> TextConditioner:
    """Captions → conditioning. Frozen text encoders run once per distinct caption: with fixed captions
    all of them before the first step (then the encoders leave the GPU), else each when first seen."""
    from trainer.data.errors import DatasetError
    from trainer.data.te_cache import fixed_captions
    from trainer.models.text import family_tokenize

    frozen = not kind.text_encoder_trains
    weighted = bool(option(config, "weighted_captions"))
    if weighted and family_tokenize(base, config) is not None:  # a DiT family detected from the weights
        raise TrainingFault(f"weighted_captions works with SD1.x, SD2.x and SDXL models only, not this "
                            f"{base.family} model.", "Untick weighted_captions.")
    pad_to_batch = bool(option(config, "no_token_padding"))
    if pad_to_batch and (len(base.tokenizers) != 1 or family_tokenize(base, config) is not None):
        raise TrainingFault(f"no_token_padding works with SD1.x and SD2.x models only (sd-scripts' train_db.py), not "
                            f"this {base.family} model.", "Untick no_token_padding.")
    text = TextConditioner(base.family, base.text_encoders, base.tokenizers, clip_skip=config.clip_skip,
                           max_token_length=config.max_token_length,
                           memoize=frozen, grad_enabled=kind.text_encoder_grad,
                           tokenize=family_tokenize(base, config), weighted=weighted, pad_to_batch=pad_to_batch)
    wanted = bool(config.cache_text_encoder_outputs)
    if not frozen:
        if wanted:
            raise TrainingFault("cache_text_encoder_outputs needs frozen text encoders, but they train in this run.",
                                "Train the U-Net only (network_train_unet_only; learning_rate_te 0 or "
                                "train_text_encoder off for full training) or untick cache_text_encoder_outputs.")
        return text
    if dataset is None:
        return text
    try:
        captions = fixed_captions(dataset)
    except DatasetError as exc:
        if wanted:
            raise TrainingFault("; ".join(p.message for p in exc.problems), exc.hint) from exc
        return text  # captions change per step: the lazy memo, encoders stay on the device
    progress = None if events is None else (
        lambda done, total: events.emit("cache", what="text", done=done, total=total))
    cached = text.cache_outputs(captions, TEXT_BATCH_SIZE, progress,
                                limit_bytes=None if wanted else AUTO_TEXT_CACHE_BYTES,
                                disk_dir=text_cache_dir(config) if config.cache_text_encoder_outputs_to_disk else None)
    if cached and accelerator.device.type == "cuda":
        text.offload("cpu")  # sampling brings them back (TrainingRun.sample)
        torch.cuda.empty_cache()  # hand their memory back, not only to this process's allocator
    return text


def text_cache_dir(config) -> Path:
    """Where cache_text_encoder_outputs_to_disk keeps its files: beside the latent caches when they have a folder,
    else in the image folder (a dot folder: never read as a concept), else the output folder."""
    if config.latent_cache_dir:
        return Path(config.latent_cache_dir) / "text_encoder_outputs"
    return Path(config.train_data_dir or config.output_dir) / ".text_encoder_cache"


def describe_optimizer(optimizer, config) -> str:
    from .metadata import optimizer_description
    from .optimizers import parse_optimizer_args

    inner = getattr(optimizer, "optimizer", optimizer)
    return optimizer_description(type(inner), parse_optimizer_args(config.optimizer_args))


def warmup_for_plan(config, total: int) -> int:
    return min(warmup_steps(config, total), total)
