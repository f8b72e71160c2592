"""What each key of a Kohya_ss GUI JSON (v21 … v26) means here: the tables kohya_import reads.

kohya_ss builds the sd-scripts command from its form and leaves out every value that is "", False,
None or 0 (its `value not in ["", False, None]` filter, where 0 == False). So in its files 0 and ""
usually mean "not given": sd-scripts then uses its own default. `ZERO_MEANS` lists the options where
that default is not what 0 means here, with the value the run really got.
"""
from __future__ import annotations

# Kohya_ss GUI key (any version) → our option, where the names differ.
RENAMED = {
    "max_resolution": "resolution",
    "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs",
    "sdxl_no_half_vae": "no_half_vae",
    "lora_network_weights": "network_weights",
    "image_folder": "train_data_dir",
    "caption_extention": "caption_extension",  # v21's spelling
    "sdxl_checkbox": "sdxl",  # v21–v22 fine-tune tab
}

# sd-scripts argument → our option, for `additional_parameters` ("--optimizer_type Lion" …).
SD_SCRIPTS_RENAMED = {"optimizer_type": "optimizer", "sdpa": "xformers", "no_half_vae": "no_half_vae",
                      "max_train_epochs": "epoch", "torch_compile": "compile"}

# sd-scripts' schedule-shape arguments → the key of lr_scheduler_args that carries it here, per lr_scheduler
# (sd-scripts passes them to the transformers schedule under these names).
SD_SCRIPTS_SCHEDULE_ARGS = {
    "lr_scheduler_min_lr_ratio": {"cosine_with_min_lr": "min_lr_rate", "warmup_stable_decay": "min_lr_ratio"},
    "lr_decay_steps": {"warmup_stable_decay": "num_decay_steps"},
    "lr_scheduler_timescale": {"inverse_sqrt": "timescale"},
}

# sd-scripts' list arguments (nargs) in `additional_parameters` → the separator of our option's text.
LIST_ARGS = {"base_weights": "\n", "base_weights_multiplier": ", "}

# kohya's 0 / "" (not passed) → what sd-scripts then used, where that is not our 0 or our default.
ZERO_MEANS = {
    "vae_batch_size": 1, "clip_skip": 1, "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0,
    "max_grad_norm": 1.0, "network_alpha": 1.0, "network_dim": 4, "gradient_accumulation_steps": 1,
    "train_batch_size": 1, "num_processes": 1, "num_cpu_threads_per_process": 2, "min_bucket_reso": 256,
    "max_bucket_reso": 1024, "bucket_reso_steps": 64, "max_timestep": 1000, "huber_c": 0.1,
    "multires_noise_discount": 0.3, "max_token_length": 75, "prior_loss_weight": 1.0, "epoch": 1,
    "dataset_repeats": 1, "num_vectors_per_token": 1, "conv_dim": None, "conv_alpha": None,
}
# "" for these is kept (an empty model path must be reported, not replaced by our default model)
EMPTY_KEPT = {"pretrained_model_name_or_path"}

# Keys that only steer the GUI, uploads or the launcher: never reported as "ignored".
GUI_ONLY = {
    "model_list", "save_as_bool", "use_latent_files", "create_caption", "create_buckets", "full_path",
    "caption_metadata_filename", "latent_metadata_filename", "train_dir", "batch_size", "generate_caption_database",
    "generate_image_buckets", "wandb_api_key", "huggingface_token", "huggingface_repo_id", "huggingface_repo_type",
    "huggingface_repo_visibility", "huggingface_path_in_repo", "async_upload", "resume_from_huggingface",
    "save_state_to_huggingface", "log_config", "log_tracker_config", "dynamo_backend", "dynamo_mode",
    "dynamo_use_fullgraph", "dynamo_use_dynamic", "extra_accelerate_launch_args", "num_machines", "multi_gpu",
    "mem_eff_attn", "lowvram", "highvram", "skip_cache_check", "show_timesteps", "show_timesteps_resolution",
    "disable_mmap_load_safetensors", "sample_prompts_file", "config_file", "training_type", "config_version",
    "LyCORIS_preset_custom", "save_clip", "save_t5xxl", "t5xxl_device", "t5xxl_dtype", "use_shell",
}

# Values that are the neutral setting of a key we have no counterpart for (not worth a report).
NEUTRAL = {
    "LyCORIS_preset": {"full"}, "factor": {-1}, "unit": {1}, "train_on_input": {True, False},
    "ggpo_sigma": {0.03}, "ggpo_beta": {0.01},
}
# Keys that only matter when another key has one of some values (else they are quiet).
RELEVANT_IF = {
    "train_on_input": ("LoRA_type", {"LyCORIS/iA3"}),
    "factor": ("LoRA_type", {"LyCORIS/LoKr", "Kohya LoKr"}),
    "unit": ("LoRA_type", {"LyCORIS/DyLoRA", "Kohya DyLoRA"}),
    "constrain": ("LoRA_type", {"LyCORIS/BOFT", "LyCORIS/Diag-OFT"}),
    "rescaled": ("LoRA_type", {"LyCORIS/BOFT", "LyCORIS/Diag-OFT"}),
}
# Settings of the model families below (FLUX.1, SD3 …): quiet, the family itself is what is refused.
FAMILY_KEY_PREFIXES = ("flux1_", "sd3_", "t5xxl", "clip_g", "clip_l", "hunyuan", "anima", "lumina")
FAMILY_KEYS = {"ae", "guidance_scale", "discrete_flow_shift", "timestep_sampling", "model_prediction_type",
               "weighting_scheme", "logit_mean", "logit_std", "mode_scale", "split_mode", "train_blocks",
               "apply_t5_attn_mask", "cpu_offload_checkpointing", "split_qkv", "model_type",
               "mem_eff_save", "train_lora_ggpo", "blocks_to_swap", "single_blocks_to_swap", "double_blocks_to_swap",
               "img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim",
               "txt_mod_dim", "single_mod_dim", "in_dims", "train_double_block_indices",
               "train_single_block_indices", "fused_backward_pass", "fused_optimizer_groups", "training_shift"}

# Model families kohya_ss trains that this build does not (yet). The one place to lift a refusal:
# a family module registering itself removes its entry here.
UNSUPPORTED_FAMILIES = {
    "hunyuan_image_checkbox": "HunyuanImage-2.1",
    "anima_checkbox": "Anima", "lumina_checkbox": "Lumina",
}
FAMILY_LORA_TYPES = {"HunyuanImage-2.1": "HunyuanImage-2.1", "Anima": "Anima", "Lumina": "Lumina"}
SD_SCRIPTS_OF_FAMILY = {"FLUX.1": "flux_train_network.py / flux_train.py", "SD3": "sd3_train_network.py / sd3_train.py",
                        "HunyuanImage-2.1": "hunyuan_image_train_network.py", "Anima": "anima_train_network.py",
                        "Lumina": "lumina_train_network.py"}

LOCON_TYPES = {"Kohya LoCon", "LoCon", "LyCORIS/LoCon"}

# What the importer does with the keys it treats specially (docs/options.md prints this table).
SPECIAL = {
    "text_encoder_lr / unet_lr": "kohya_ss's rule: both 0 (or empty) → both parts train at learning_rate; "
                                 "text_encoder_lr 0 → network_train_unet_only; unet_lr 0 → "
                                 "network_train_text_encoder_only; a list keeps its first value",
    "max_train_epochs": "when above 0 it becomes `epoch` and drops max_train_steps (sd-scripts: epochs override "
                        "steps)",
    "max_train_steps": "kept when above 0 (the run stops there); empty or 0 = epochs govern",
    "learning_rate_te / learning_rate_te1 / learning_rate_te2": "SD1/SD2: learning_rate_te (0 = kohya_ss leaves "
        "it out, so train_db.py trains the text encoder at learning_rate); SDXL: te1 → learning_rate_te, "
        "te2 → learning_rate_te2 (0 = frozen, empty = learning_rate)",
    "stop_text_encoder_training(_pct)": "a percentage in kohya_ss, a step count here: left at 0 with a note",
    "optimizer_args": "kohya's quoted form '\"weight_decay=0.01\" \"betas=0.9,0.99\"' is shell quoting; it "
                      "becomes weight_decay=0.01 betas=0.9,0.99",
    "additional_parameters": "its --flags are read: sd-scripts names that are options here are applied "
                             "(--network_train_unet_only, --optimizer_args …); the others are listed as ignored",
    "--lr_scheduler_min_lr_ratio / --lr_decay_steps / --lr_scheduler_timescale": "additional_parameters of "
        "sd-scripts become lr_scheduler_args keys of the chosen schedule (min_lr_rate or min_lr_ratio, "
        "num_decay_steps, timescale); for a schedule that never read them they are listed as ignored",
    "dynamo_backend / --torch_compile": "a backend other than no (accelerate's torch.compile) or sd-scripts' "
                                        "--torch_compile → compile on",
    "use_8bit_adam (v21)": "optimizer AdamW8bit / AdamW when the file has no optimizer",
    "use_wandb (v21)": "log_with wandb when true",
    "xformers true/false (v21–v22)": "xformers / none",
    "LoRA_type LoCon (v21)": "LyCORIS/LoCon (kohya_ss's migration); trained as Kohya LoCon when LyCORIS "
                             "types are not available",
    "caption_extension \"\"": "sd-scripts then reads .caption files, so .caption",
    "lr_warmup_steps below 1": "a ratio of the run → lr_warmup percent",
    "wandb_api_key": "never copied (a secret): set WANDB_API_KEY or run `wandb login`",
    "noise_offset_type": "Original → noise_offset applies; Multires → multires noise applies (only the one named)",
    "bucket_reso_steps not a multiple of 8": "refused with enable_bucket, as sd-scripts' buckets would not fit "
                                             "the VAE grid",
    "mixed_precision fp8": "refused: use bf16 and fp8_base",
    "--base_weights / --base_weights_multiplier": "in additional_parameters: the files become base_weights one "
                                                  "per line, the strengths base_weights_multiplier",
    "block_lr": "kept for SDXL (sdxl_train.py reads it); dropped with a note otherwise, as fine_tune.py never "
                "read it",
}
