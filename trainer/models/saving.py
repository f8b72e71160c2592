"""Save a full model as an original-layout single file or as a diffusers folder (atomic)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import torch

from trainer.atomic import atomic_folder
from trainer.families import SD1_TE, SD2_TE, SDXL_TE2
from trainer.models.checkpoint_io import CheckpointError, write_checkpoint
from trainer.models.dit import dit_family
from trainer.models.ldm_keys import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
MODELSPEC_ARCH = {("sd1", False): "stable-diffusion-v1", ("sd1", True): "stable-diffusion-v1-v",
                  ("sd2", False): "stable-diffusion-v2-512", ("sd2", True): "stable-diffusion-v2-768-v",
                  ("sdxl", False): "stable-diffusion-xl-v1-base", ("sdxl", True): "stable-diffusion-xl-v1-base-v"}
RESOLUTION = {"sd1": "512x512", "sd2": "768x768", "sdxl": "1024x1024"}


def _parts(model, family, v_prediction):
    """(components dict, family, v_prediction) from a BaseModel or a components dict."""
    if isinstance(model, dict):
        comps = model
        if family is None:
            family = "sdxl" if "text_encoder_2" in comps else (
                "sd2" if comps["unet"].config.get("use_linear_projection") else "sd1")
        if v_prediction is None:
            v_prediction = getattr(comps.get("scheduler"), "config", {}).get("prediction_type") == "v_prediction"
        return comps, family, bool(v_prediction)
    return model.components(), family or model.family, bool(model.v_prediction if v_prediction is None else v_prediction)


def original_state_dict(model, *, family: str | None = None, dtype: torch.dtype | None = None) -> dict:
    """The whole model in original CompVis (SD1/SD2) or SGM (SDXL) keys, cast to ``dtype``."""
    comps, family, _ = _parts(model, family, False)
    sd = unet_to_ldm(comps["unet"].state_dict(), comps["unet"].config)
    sd.update(vae_to_ldm(comps["vae"].state_dict(), comps["vae"].config))
    te = comps["text_encoder"].state_dict()
    if family == "sd1":
        sd.update(clip_to_ldm(te, SD1_TE))
    elif family == "sd2":
        layers = comps["text_encoder"].config.num_hidden_layers
        sd.update(open_clip_to_ldm(te, SD2_TE, num_layers_out=24 if layers == 23 else None))
    else:
        sd.update(clip_to_ldm(te, SDXL_TE1_PREFIX))
        sd.update(open_clip_to_ldm(comps["text_encoder_2"].state_dict(), SDXL_TE2))
    if dtype is not None:
        sd = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach() for k, v in sd.items()}
    return sd


def save_single_file(model, path: Path, dtype: torch.dtype | None = torch.float16, *, family: str | None = None,
                     v_prediction: bool | None = None, title: str | None = None, metadata: dict | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``path`` (``.safetensors`` with SAI modelspec metadata, or ``.ckpt``) atomically.

    ``model`` is a ``BaseModel`` or a components dict (``unet``, ``vae``, ``text_encoder`` ...).
    The metadata records the architecture and prediction type so the loader (and other tools)
    know an SD2 v-model without guessing.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    dit = dit_family(family or getattr(model, "family", None))
    if dit is not None:  # FLUX.1 / SD3: the family's own original layout
        return dit.module("loader").save_single_file(model, path, dtype, title=title, metadata=metadata)
    comps, family, v_pred = _parts(model, family, v_prediction)
    tensors = original_state_dict(comps, family=family, dtype=dtype)
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCH[(family, v_pred)],
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if family == "sdxl"
        else "diffusers",
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
        "modelspec.resolution": RESOLUTION[family],
        "modelspec.title": title or path.stem,
        "modelspec.date": _dt.datetime.now().replace(microsecond=0).isoformat(),
        **(metadata or {}),
    }
    return write_checkpoint(tensors, path, metadata=meta)


def save_diffusers(model, folder: Path, *, family: str | None = None, v_prediction: bool | None = None,
                   dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write a diffusers folder (``save_pretrained`` of every part + ``model_index.json``).

    Written into a temporary sibling folder that replaces ``folder`` at the end, so an interrupted
    save never leaves a half-written model under the final name.
    """
    if dit_family(family or getattr(model, "family", None)) is not None:
        raise CheckpointError(f"{folder}: a diffusers folder is not written for {model.family} yet; "
                              "choose save_model_as safetensors (the original single-file layout)")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; choose another name or allow overwriting")
    comps, family, v_pred = _parts(model, family, v_prediction)
    parts = {k: _cast_copy(v, dtype) for k, v in comps.items()}
    scheduler = parts["scheduler"]
    parts["scheduler"] = type(scheduler).from_config(
        {**scheduler.config, "prediction_type": "v_prediction" if v_pred else "epsilon"})
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(**{k: parts[k] for k in (
            "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")})
    else:
        pipe = StableDiffusionPipeline(**{k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for sub in ("tokenizer", "tokenizer_2"):
            if (tmp / sub).is_dir():
                _write_bpe_files(tmp / sub)
    return folder


def _write_bpe_files(folder: Path) -> None:
    """transformers 5 saves only tokenizer.json; older transformers, kohya and A1111 read the classic
    CLIP files, so write vocab.json + merges.txt too (same vocabulary, from tokenizer.json)."""
    import json

    if (folder / "vocab.json").is_file() or not (folder / "tokenizer.json").is_file():
        return
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _cast_copy(module, dtype):
    """``module`` itself, or a copy at ``dtype`` built without touching the original (which may be
    the model being trained)."""
    if dtype is None or not isinstance(module, torch.nn.Module) or next(module.parameters()).dtype == dtype:
        return module
    from accelerate import init_empty_weights

    with init_empty_weights():
        copy = type(module)(module.config) if hasattr(module.config, "to_dict") else type(module).from_config(module.config)
    copy.load_state_dict({k: v.detach().to(dtype) if v.is_floating_point() else v
                          for k, v in module.state_dict().items()}, assign=True)
    return copy.eval()
