"""Option sections for the run itself: training, optimizer, saving, sampling, logging, accelerate."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from trainer.families import SD_FAMILIES

from .options_data import Options
from .spec import opt

# kohya_ss's dropdowns (trainer/train/optimizers.py, schedulers.py and samples.py build each one from its
# library; tests check the lists agree). Kept here as plain names: the config never imports torch.
OPTIMIZERS = ("AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
              "PagedLion8bit", "SGD", "SGDNesterov", "SGDNesterov8bit", "Adafactor", "Prodigy", "DAdaptation",
              "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion",
              "DAdaptSGD", "AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree",
              "bitsandbytes.optim.AdEMAMix8bit", "bitsandbytes.optim.PagedAdEMAMix8bit",
              "prodigyplus.ProdigyPlusScheduleFree", "pytorch_optimizer.CAME", "CAME")
# optimizers from optional packages: name → (module it imports, kohya-studio extra that installs it)
OPTIONAL_OPTIMIZERS = {
    "Prodigy": ("prodigyopt", "prodigy"), **{n: ("dadaptation", "dadaptation") for n in (
        "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP",
        "DAdaptLion", "DAdaptSGD")},
    **{n: ("schedulefree", "schedulefree") for n in ("AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree")},
    "prodigyplus.ProdigyPlusScheduleFree": ("prodigyplus", "prodigyplus"),
    "pytorch_optimizer.CAME": ("pytorch_optimizer", "came"), "CAME": ("came_pytorch", "came"),
}
SCHEDULERS = ("adafactor", "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
              "polynomial", "piecewise_constant", "cosine_with_min_lr", "inverse_sqrt", "warmup_stable_decay")
HUBER_LOSSES = ("huber", "smooth_l1")  # the loss types with a threshold (huber_c, huber_schedule, huber_scale)
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
            "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a", "dpm++_2m")


class TrainingOptions(Options):
    train_batch_size: int = opt(1, "Images per step. Higher is faster per image but needs more VRAM.",
                                section="training", level="basic", ge=1, le=64)
    epoch: int = opt(10, "Passes over the dataset (each image seen repeats × epoch times).",
                     section="training", level="basic", ge=1, le=10000)
    max_train_steps: int = opt(
        0, "Stop after this many optimizer steps; 0 = epochs govern. (Kohya_ss defaults this to 1600, "
        "which silently overrides the epoch count; here it only applies when you set it.)",
        section="training", level="basic", ge=0, le=10_000_000)  # trainer.plan.MAX_TRAIN_STEPS
    gradient_accumulation_steps: int = opt(1, "Sum gradients over N batches before each update "
                                           "(effective batch = batch × N).", section="training", ge=1, le=120)
    seed: int = opt(0, "Random seed; 0 = pick one at random and record it in the run settings.",
                    section="training", level="basic", ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = opt(
        "fp16", "Compute precision. bf16 is safer on RTX 30xx and newer; fp16 uses loss scaling.",
        section="training", level="basic")
    full_fp16: bool = opt(False, "Keep the trained weights in fp16 too (less VRAM, less stable). Needs "
                          "mixed_precision fp16.", section="training")
    full_bf16: bool = opt(False, "Keep the trained weights in bf16 too (less VRAM). Needs mixed_precision bf16.",
                          section="training")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: much less VRAM, "
                                       "about 20–40 % slower.", section="training", level="basic")
    gradient_checkpointing_mode: Literal["full", "selective"] = opt(
        "full", "full = recompute whole blocks (Kohya's behaviour): the least memory, about 10–25 % of the "
        "activations. selective = keep the outputs of attention, convolutions and narrowing matrix products, "
        "recompute only norms, activations, additions and widening products: about half the activations, "
        "for roughly half of full's slowdown.", section="training", visible_if={"gradient_checkpointing": [True]})
    cpu_offload_checkpointing: bool = opt(
        False, "Keep each checkpointed block's inputs in CPU memory instead of on the GPU until the backward "
        "pass needs them (kohya's option for FLUX.1 / SD3): less VRAM, slower (two copies per block per step). "
        "Needs gradient_checkpointing (mode full); not with blocks_to_swap.", section="training",
        visible_if={"gradient_checkpointing": [True]})
    xformers: Literal["none", "sdpa", "xformers"] = opt(
        "sdpa", "Attention kernel. sdpa is PyTorch's built-in memory-efficient attention (Kohya defaults to "
        "xformers, which fails when it is not installed).", section="training", label="CrossAttention")
    compile: Literal["auto", "on", "off"] = opt(
        "auto", "torch.compile the U-Net: fused kernels, less per-step overhead. auto = on with a CUDA GPU only "
        "when cuda_graphs is off (captured steps already remove the overhead, and compiling an SD1.5 training "
        "step takes minutes per bucket shape). If compiling fails the run continues uncompiled with a warning.",
        section="training")
    cuda_graphs: Literal["auto", "on", "off"] = opt(
        "auto", "Replay each training step as a captured CUDA graph (one per bucket shape), so the GPU runs the "
        "whole step without waiting for Python to launch thousands of small kernels. auto = on with one CUDA "
        "GPU. Steps that cannot be captured (several GPUs, module_dropout, a capture error, a captured step "
        "that does not match the normal one) run normally and the log says why.", section="training")
    min_snr_gamma: float = opt(0.0, "Min-SNR loss weighting γ (5 recommended; 0 = off).", section="training",
                               ge=0, le=20, families=SD_FAMILIES)
    noise_offset: float = opt(0.0, "Noise offset (0.05–0.1 helps very dark/bright images; 0 = off).",
                              section="training", ge=0, le=1, families=SD_FAMILIES)
    noise_offset_type: Literal["Original", "Multires"] = opt(
        "Original", "Which extra noise applies, as in Kohya_ss: Original = noise_offset, Multires = "
        "multi-resolution noise (multires_noise_iterations/discount); the other one's values are not used.",
        section="training", families=SD_FAMILIES)
    noise_offset_random_strength: bool = opt(
        False, "Draw each sample's noise offset uniformly between 0 and noise_offset instead of always using "
        "noise_offset.", section="training", families=SD_FAMILIES, visible_if={"noise_offset_type": ["Original"]})
    adaptive_noise_scale: float = opt(
        0.0, "Adds this × the latent's mean absolute value (per channel) to noise_offset, so images far from "
        "mid-grey get more offset (0.01 or so; 0 = off; needs noise_offset).", section="training", ge=-1, le=1,
        families=SD_FAMILIES, visible_if={"noise_offset_type": ["Original"]})
    multires_noise_iterations: int = opt(0, "Multi-resolution (pyramid) noise iterations (6–10; 0 = off).",
                                         section="training", ge=0, le=64, families=SD_FAMILIES)
    multires_noise_discount: float = opt(0.3, "Multi-resolution noise discount per level.", section="training",
                                         ge=0, le=1, families=SD_FAMILIES)
    ip_noise_gamma: float = opt(
        0.0, "Input perturbation noise: the model's input gets this much extra noise that the loss does not ask "
        "it to predict, which reduces exposure bias (0.1 recommended; 0 = off).", section="training", ge=0, le=1)
    ip_noise_gamma_random_strength: bool = opt(
        False, "Draw each sample's input perturbation strength uniformly between 0 and ip_noise_gamma.",
        section="training")
    min_timestep: int = opt(0, "Lowest noise timestep sampled.", section="training", ge=0, le=1000,
                            families=SD_FAMILIES)
    max_timestep: int = opt(1000, "Highest noise timestep sampled (exclusive).", section="training", ge=1, le=1000,
                            families=SD_FAMILIES)
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = opt("l2", "Loss function.", section="training")
    huber_schedule: Literal["snr", "exponential", "constant"] = opt(
        "snr", "How the Huber/smooth-L1 threshold follows the noise level (sd-scripts' scheduled Huber loss): snr "
        "= (1 − huber_c)/(1 + σ)² + huber_c, near 1 on lightly noised samples and huber_c on noisy ones; "
        "exponential = huber_scale · huber_c^(t/1000); constant = huber_c · huber_scale.", section="training",
        visible_if={"loss_type": list(HUBER_LOSSES)})
    huber_c: float = opt(0.1, "Huber/smooth-L1 threshold: the value on the noisiest samples (snr, exponential) "
                         "or throughout (constant).", section="training", ge=0,
                         visible_if={"loss_type": list(HUBER_LOSSES)})
    huber_scale: float = opt(1.0, "Multiplies the threshold of the exponential and constant schedules.",
                             section="training", ge=0, le=100, visible_if={"loss_type": list(HUBER_LOSSES)})
    zero_terminal_snr: bool = opt(
        False, "Rescale the noise schedule so the last timestep is pure noise (zero terminal SNR, arXiv 2305.08891): "
        "lets a v-prediction model reach very dark or bright images. For v-prediction models (NoobAI-XL v-pred, "
        "SD2 768-v); samples keep the usual schedule, as in sd-scripts.", section="training", families=SD_FAMILIES)
    v_pred_like_loss: float = opt(
        0.0, "Adds a v-prediction-like loss: the loss is also counted × this / (SNR/(SNR+1)), which weights "
        "noisy timesteps more (0 = off).", section="training", ge=0, le=10, families=SD_FAMILIES)
    masked_loss: bool = opt(
        False, "Learn only where each image's mask says (Kohya_ss's Masked loss): the loss of every latent pixel "
        "is weighted by the mask, shrunk to the latent size. The masks are the images' transparency (tick "
        "alpha_mask) or mask images named like them (set conditioning_data_dir); a dataset TOML sets either per "
        "subset.", section="training")
    debiased_estimation_loss: bool = opt(False, "Weight the loss by 1/√SNR (debiased estimation).",
                                         section="training", families=SD_FAMILIES)
    scale_v_pred_loss_like_noise_pred: bool = opt(False, "Scale v-prediction loss like noise prediction.",
                                                  section="training", families=SD_FAMILIES)


class FrozenBaseOptions(Options):
    """Only for training types whose base model stays frozen (LoRA, Textual Inversion)."""
    fp8_base: bool = opt(
        False, "Store the frozen base model's linear and convolution weights as 8-bit floats (scaled per "
        "output channel) and widen them one layer at a time: the base weights take about half the VRAM "
        "(figures in docs/benchmarks.md) at a small quality cost.", section="training")
    fp8_base_unet: bool = opt(
        False, "fp8_base for the U-Net / transformer only: the text encoders stay in the mixed precision (Kohya's "
        "fp8 base unet; for FLUX.1 / SD3, whose T5 loses more in 8 bits).", section="training")


class FullTrainingOptions(Options):
    """Only for training types that train the whole model (DreamBooth, fine-tuning)."""
    fused_backward_pass: bool = opt(
        False, "Update each weight during the backward pass, as soon as its gradient is complete, and free that "
        "gradient at once: the model's full set of gradients never exists (kohya's option for SDXL / FLUX.1 / SD3 "
        "full fine-tuning on 24 GB). Needs the Adafactor optimizer and gradient_accumulation_steps 1; "
        "max_grad_norm then clips each weight's gradient on its own.", section="optimizer")
    block_lr: str = opt(
        "", "A learning rate per U-Net block (sd-scripts' sdxl_train.py --block_lr), 23 comma-separated "
        "values in sd-scripts' order: embeddings, IN0–IN8, MID0–MID2, OUT0–OUT8, out. They replace learning_rate "
        "for the U-Net (the text encoders keep theirs); 0 freezes that block. Empty = learning_rate everywhere.",
        section="optimizer", label="Block LR (SDXL)", families=("sdxl",))

    @field_validator("block_lr", mode="before")
    @classmethod
    def _rates_as_text(cls, value):
        """A TOML list of numbers is the same rates (sd-scripts' own TOML holds the string)."""
        if isinstance(value, (list, tuple)):
            return ",".join(format(v, "g") if isinstance(v, (int, float)) else str(v) for v in value)
        return value


class OptimizerOptions(Options):
    optimizer: Literal[OPTIMIZERS] = opt(
        "AdamW8bit", "Optimizer, by Kohya's names. AdamW8bit (bitsandbytes) halves optimizer memory. Prodigy, "
        "DAdapt* and the ScheduleFree ones come from optional packages (pip install 'kohya-studio[prodigy]', "
        "[dadaptation], [schedulefree], [prodigyplus], [came]); Prodigy/DAdapt want learning_rate 1.0.",
        section="optimizer", level="basic")
    optimizer_args: str = opt("", 'Extra optimizer arguments as space-separated key=value, e.g. '
                              '"weight_decay=0.01 betas=0.9,0.999".', section="optimizer")
    learning_rate: float = opt(1e-4, "Base learning rate (used where unet_lr/text_encoder_lr are empty).",
                               section="optimizer", level="basic", ge=0, le=10)
    lr_scheduler: Literal[SCHEDULERS] = opt("cosine", "How the learning rate changes over the run.",
                                            section="optimizer", level="basic", label="LR scheduler")
    lr_scheduler_args: str = opt("", 'Extra arguments of the schedule as key=value, e.g. "min_lr_rate=0.1" '
                                 '(cosine_with_min_lr), "num_decay_steps=200" (warmup_stable_decay), '
                                 '"step_rules=\'1:100,0.5\'" (piecewise_constant).', section="optimizer")
    lr_scheduler_type: str = opt("", "A scheduler class instead of lr_scheduler (sd-scripts' custom scheduler): a "
                                 "name in torch.optim.lr_scheduler such as CosineAnnealingLR, or a dotted path "
                                 "(mypackage.MySchedule). Its arguments come from lr_scheduler_args (\"T_max=1000\", "
                                 "counted in optimizer steps); it has no warm-up.", section="optimizer",
                                 label="LR scheduler type (custom class)")
    lr_warmup: float = opt(10.0, "Warm-up as a percentage of total steps (ignored by 'constant').",
                           section="optimizer", level="basic", ge=0, le=100, label="LR warmup (% of steps)")
    lr_warmup_steps: int = opt(0, "Warm-up in steps; when > 0 it replaces the percentage.", section="optimizer",
                               ge=0)
    lr_scheduler_num_cycles: int = opt(1, "Restarts for cosine_with_restarts.", section="optimizer", ge=1,
                                       visible_if={"lr_scheduler": ["cosine_with_restarts"]})
    lr_scheduler_power: float = opt(1.0, "Power of the polynomial schedule.", section="optimizer", ge=0,
                                    visible_if={"lr_scheduler": ["polynomial"]})
    max_grad_norm: float = opt(1.0, "Clip gradients to this norm (0 = no clipping).", section="optimizer", ge=0)


class ValidationOptions(Options):
    """sd-scripts' validation loss (train_network.py --validation_split … --max_validation_steps)."""
    validation_split: float = opt(0.0, "Fraction of each training folder's images held out to measure a validation "
                                  "loss on (0.1 = every tenth image; regularisation images are never held out). "
                                  "They are not trained on: steps count the rest. 0 = no validation.",
                                  section="training", ge=0, le=1)
    validation_seed: int = opt(0, "Seed of which images are held out and of the validation noise (0 = seed).",
                               section="training", ge=0)
    validate_every_n_steps: int = opt(0, "Also measure the validation loss every N steps (0 = only at the end of "
                                      "epochs).", section="training", ge=0)
    validate_every_n_epochs: int = opt(0, "Measure the validation loss every N epochs (0 = every epoch).",
                                       section="training", ge=0)
    max_validation_steps: int = opt(0, "At most this many validation batches per measurement (0 = all).",
                                    section="training", ge=0)


class SavingOptions(Options):
    save_every_n_epochs: int = opt(1, "Save NAME-000004.safetensors every N epochs (0 = only at the end).",
                                   section="saving", level="basic", ge=0)
    save_every_n_steps: int = opt(0, "Also save NAME-step00000500.safetensors every N steps (0 = off).",
                                  section="saving", ge=0)
    save_n_epoch_ratio: int = opt(0, "Save every floor(epochs / N) epochs (at least every epoch), so about N "
                                  "files are written in all, the last included; replaces save_every_n_epochs, as in "
                                  "sd-scripts (0 = off).", section="saving", ge=0, le=10000,
                                  label="Save N epoch ratio")
    save_last_n_epochs: int = opt(0, "Keep only the N newest epoch files written by this run (0 = keep all). "
                                  "Files from other runs are never removed.", section="saving", ge=0)
    save_last_n_steps: int = opt(0, "Keep only step files from the last N steps of this run (0 = keep all).",
                                 section="saving", ge=0)
    save_last_n_epochs_state: int = opt(0, "Keep only the N newest epoch -state folders of this run (0 = as "
                                        "save_last_n_epochs): states are large, model files small.",
                                        section="saving", ge=0)
    save_last_n_steps_state: int = opt(0, "Keep only step -state folders from the last N steps of this run (0 = as "
                                       "save_last_n_steps).", section="saving", ge=0)
    save_state: bool = opt(False, "Save optimizer/scheduler/RNG state with each checkpoint so the run can be "
                           "resumed exactly.", section="saving")
    save_state_on_train_end: bool = opt(False, "Save the state folder at the end of the run.", section="saving")
    resume: str = opt("", "Resume from a saved state folder (NAME-000004-state).", section="saving", kind="dir")
    training_comment: str = opt("", "Comment stored in the file's metadata (ss_training_comment).",
                                section="saving")


class SamplingOptions(Options):
    sample_every_n_epochs: int = opt(0, "Generate sample images every N epochs (0 = off).", section="sampling",
                                     ge=0)
    sample_every_n_steps: int = opt(0, "Generate sample images every N steps (0 = off).", section="sampling",
                                    ge=0)
    sample_at_first: bool = opt(False, "Also generate the sample images once before the first step: the base "
                                "model's pictures, to compare the trained ones against (not again on resume).",
                                section="sampling")
    sample_sampler: Literal[SAMPLERS] = opt("euler_a", "Sampler for sample images.", section="sampling")
    sample_prompts: str = opt(
        "", "One prompt per line, Kohya syntax: a photo of mychar --n blurry --w 512 --h 512 --s 20 --l 7 --d 1.",
        section="sampling", kind="text")


class LoggingOptions(Options):
    log_with: Literal["", "tensorboard", "wandb", "all"] = opt(
        "tensorboard", "Where loss, learning rates and samples go: tensorboard (under logging_dir), wandb "
        "(pip install 'kohya-studio[wandb]'; the API key comes from WANDB_API_KEY or `wandb login`, never "
        "from the config), all = both.", section="logging")
    log_tracker_name: str = opt("", "W&B project name (empty = kohya-studio).", section="logging")
    wandb_run_name: str = opt("", "W&B run name (empty = output name and time).", section="logging")
    log_prefix: str = opt("", "Prefix of the TensorBoard run name.", section="logging")
    metadata_title: str = opt("", "Title stored in the model metadata.", section="logging")
    metadata_author: str = opt("", "Author stored in the model metadata.", section="logging")
    metadata_description: str = opt("", "Description stored in the model metadata.", section="logging")
    metadata_license: str = opt("", "License stored in the model metadata.", section="logging")
    metadata_tags: str = opt("", "Comma-separated tags stored in the model metadata.", section="logging")


class AccelerateOptions(Options):
    num_processes: int = opt(1, "Training processes (one per GPU); more than 1 runs `accelerate launch` (DDP).",
                             section="accelerate", ge=1, le=64)
    gpu_ids: str = opt("", 'GPUs to use, e.g. "0,1" (empty = all visible).', section="accelerate")
    card_vram_gb: float = opt(0.0, "Memory of your GPU in GB, for the check before Start that the run's VRAM estimate "
                              "fits; 0 = the memory of the detected CUDA card. Set it when the studio runs on another "
                              "machine than the training or no GPU is found.", section="accelerate", ge=0, le=1024,
                              label="GPU memory (GB)")
    main_process_port: int = opt(0, "Port for the DDP rendezvous (0 = accelerate's default).",
                                 section="accelerate", ge=0, le=65535)
    num_cpu_threads_per_process: int = opt(2, "CPU threads per training process.", section="accelerate",
                                           ge=1, le=256)
