"""Training kinds: what differs between LoRA, DreamBooth, fine-tuning and Textual Inversion.

The shared loop (``trainer/train/``) does everything common — data, noise, loss, optimizer,
scheduler, saving cadence, events, samples, stop/resume. A *kind* tells it what trains, how the
captions become prompts, what a saved file is and (fine-tuning) where the images come from.
``TrainingKind`` (``base.py``) is the whole interface; the loop drives it like this::

    kind = create_kind(config)                       # the kind for config.training_type
    scan = kind.scan_dataset(config)                 # fine-tuning: from the metadata JSON; else None
    scan, latents, dataset, steps, _ = build_data(config, base, accelerator, events, scan=scan)  # train/setup.py
    # load_base_model, move to the device, cast the frozen weights to the weight dtype, then:
    groups = kind.prepare(base, network_dtype(config, mp))   # marks what trains, adds TI tokens ->
                                                     # [{"params": [...], "lr": float, "name": str}]
    optimizer = build_optimizer(config.optimizer, groups, config.learning_rate, config.optimizer_args, device)
    text = TextConditioner(..., memoize=not kind.text_encoder_trains)
    model = Denoiser(base.unet, text, None)          # built after prepare (it reads requires_grad)
    ctx.params = kind.trainable_parameters()         # for gradient clipping
    for each step:
        for b in micro_batches: b["captions"] = kind.prepare_captions(b["captions"])  # TI templates/tokens
        (the text-encoder forward runs with torch.set_grad_enabled(kind.text_encoder_grad()))
        train_step(...)
        kind.after_optimizer_step(global_step)       # TI: restore frozen rows; DB: stop the TE
    policy.ext = kind.output_ext                     # read after prepare(); "" = a diffusers folder
    written = kind.save(policy.path(...), step=global_step, epoch=epoch)   # returns the path written

Plan/preflight of a fine-tuning config: ``preflight(cfg, scan=kind.scan_dataset(cfg, strict=False,
write=False))`` (reports problems, writes no metadata file).
Also: ``kind.expand_prompt(prompt)`` for sample prompts (TI: ``tok`` -> ``tok tok1 ...``),
``kind.trained_modules()`` to put in train() mode, ``kind.state_dict()`` / ``kind.load_state_dict()``
for -state folders, ``kind.warnings`` to emit as ``warning`` events after prepare().

Kinds: ``LoraKind`` (a kohya LoRA / LyCORIS network patched into the base model, built by
``trainer/networks/registry.py``; saves the network file and self-checks it), ``DreamboothKind``
(full UNet, text encoder while learning_rate_te > 0 until stop_text_encoder_training; saves a
complete checkpoint), ``FinetuneKind`` (same, from Kohya's metadata JSON — ``finetune_metadata``
builds it, ``finetune_dataset`` reads it) and
``TextualInversionKind`` (new token rows only; Kohya ``emb_params`` / A1111 ``string_to_param`` /
SDXL ``clip_l`` + ``clip_g`` files, ``embedding_files``).
"""
from __future__ import annotations

from .base import TrainingKind, KindError
from .dreambooth import DreamboothKind, FinetuneKind
from .lora import LoraKind
from .textual_inversion import TextualInversionKind

KINDS = {
    "lora": LoraKind,
    "dreambooth": DreamboothKind,
    "finetune": FinetuneKind,
    "textual_inversion": TextualInversionKind,
}


def create_kind(config) -> TrainingKind:
    """The kind for ``config.training_type``."""
    return KINDS[config.training_type](config)


__all__ = ["DreamboothKind", "FinetuneKind", "KINDS", "KindError", "LoraKind", "TextualInversionKind",
           "TrainingKind", "create_kind"]
