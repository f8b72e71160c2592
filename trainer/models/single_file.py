"""Load an original-layout single file into diffusers/transformers modules.

Key conversion is diffusers' own (``single_file_utils.convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``);
configs come from the matching ``configs/models`` folder.  Modules are created on the meta device and
take the converted tensors with ``load_state_dict(assign=True)``: at the file's dtype the memory-mapped
tensors become the parameters without a copy; otherwise each tensor is cast once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.families import SD2_TE, SDXL_TE2
from trainer.models.checkpoint_io import CheckpointError, read_checkpoint
from trainer.models.components import build_components_from_config
from trainer.models.detect import Detection, detect, probe_v_prediction

log = logging.getLogger(__name__)


def load_single_file(path: Path, *, family=None, v_parameterization=None, config_dir=None,
                     dtype=torch.float32, tokenizer_cache_dir=None) -> tuple[dict, Detection, bool]:
    """``(components, detection, v_prediction)`` for a ``.safetensors``/``.ckpt`` file."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    state_dict, metadata = read_checkpoint(path)
    det = detect(state_dict, metadata, path, family=family, v_parameterization=v_parameterization,
                 config_dir=config_dir)
    arch = det.architecture
    comps = build_components_from_config(arch, empty=True, tokenizer_cache_dir=tokenizer_cache_dir)
    unet_config = dict(comps["unet"].config)
    assign_weights(comps["unet"], convert_ldm_unet_checkpoint(state_dict, unet_config), dtype, path, "U-Net")
    assign_weights(comps["vae"], convert_ldm_vae_checkpoint(state_dict, dict(comps["vae"].config)), dtype, path, "VAE")
    for folder, te_sd in zip(arch.text_encoder_folders, convert_text_encoders(state_dict, det.family, comps)):
        assign_weights(comps[folder], te_sd, dtype, path, f"text encoder ({folder})")
    del state_dict
    v_pred = det.v_prediction
    if v_pred is None:
        v_pred = probe_v_prediction(comps["unet"])
    return comps, det, v_pred


def convert_text_encoders(state_dict: dict, family: str, comps: dict) -> list[dict]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    if family == "sd1":
        return [convert_ldm_clip_checkpoint(state_dict)]
    if family == "sd2":
        return [convert_open_clip_checkpoint(comps["text_encoder"], state_dict, prefix=SD2_TE)]
    te1 = {k: v for k, v in convert_ldm_clip_checkpoint(state_dict).items()}
    te2 = convert_open_clip_checkpoint(comps["text_encoder_2"], state_dict, prefix=SDXL_TE2)
    return [te1, te2]


def assign_weights(module: torch.nn.Module, state_dict: dict, dtype, path: Path, what: str) -> None:
    """Make ``state_dict`` the parameters of the (meta) ``module``; clear error when it does not fit."""
    state_dict = _normalize_text_keys(module, state_dict)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: the {what} weights do not fit the expected architecture — missing {len(missing)} "
            f"(e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]}), wrong shape {len(wrong)} "
            f"(e.g. {wrong[:2]}). The file is incomplete, or it is a model variant this loader does not know: "
            "load its diffusers version, or pass its diffusers config folder as config_dir.")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    module.eval().requires_grad_(False)


def _normalize_text_keys(module, state_dict: dict) -> dict:
    """Match transformers' CLIP naming of the installed version (``text_model.`` wrapper or not), drop
    the ``position_ids`` buffer old files carry, and OpenCLIP layers the config does not use (SD2's 24th)."""
    if not hasattr(module, "config") or getattr(module.config, "model_type", "") != "clip_text_model":
        return state_dict
    wrapped = hasattr(module, "text_model")
    layers = module.config.num_hidden_layers
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        bare = key[len("text_model."):] if key.startswith("text_model.") else key
        if bare.startswith("encoder.layers.") and int(bare.split(".")[2]) >= layers:
            continue
        if wrapped and not bare.startswith("text_projection"):
            out["text_model." + bare] = value
        else:
            out[bare] = value
    return out
