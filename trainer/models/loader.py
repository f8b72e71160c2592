"""``load_base_model``: a Stable Diffusion base model from a single file, a diffusers folder or a hub id."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.models.checkpoint_io import PICKLE_EXT, SAFETENSORS_EXT, CheckpointError
from trainer.models.components import build_noise_scheduler, build_pipeline_scheduler
from trainer.families import FAMILY_NAMES
from trainer.models.registry import Architecture, read_architecture

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1", "sd3": "sd3",
                      "chroma": "chroma"}


@dataclass
class BaseModel:
    family: str                      # "sd1" | "sd2" | "sdxl"
    v_prediction: bool
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    noise_scheduler: Any             # DDPMScheduler for training (Kohya's settings, family prediction type)
    source: str                      # human description of what was loaded and how it was detected
    path: str = ""                   # the file / folder / hub id given
    architecture: Architecture | None = None   # config folder used (shapes, default scheduler)
    scheduler: Any = None            # the model's inference scheduler (sampling, diffusers export)
    dtype: torch.dtype = torch.float32
    vae_source: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def vae_scale_factor(self) -> float:
        """Latent scaling (0.18215 SD1/SD2, 0.13025 SDXL), from the VAE config."""
        return float(self.vae.config.scaling_factor)

    @property
    def base_model_version(self) -> str:
        """Kohya's ``ss_base_model_version``: sd_v1, sd_v2, sd_v2_v, sd_v1_v, sdxl_base_v1-0."""
        version = BASE_MODEL_VERSION[self.family]
        return version + "_v" if self.v_prediction and self.family != "sdxl" else version

    def components(self) -> dict:
        comps = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoders[0],
                 "tokenizer": self.tokenizers[0], "scheduler": self.scheduler}
        if len(self.text_encoders) > 1:
            comps.update(text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1])
        return comps


def load_base_model(path_or_id: str | Path, *, family: str | None = None, v_parameterization: bool | None = None,
                    vae: str | Path | None = None, dtype: torch.dtype | str = torch.float32,
                    config_dir: str | Path | None = None, tokenizer_cache_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, text_encoder_files: dict | None = None) -> BaseModel:
    """Load SD1.x / SD2.x / SDXL.

    ``path_or_id``: ``.safetensors``/``.ckpt`` single file (original layout), a diffusers folder, or a
    hub id ``org/name``.  ``family`` / ``v_parameterization`` override detection; ``vae`` replaces the
    VAE (file or folder); ``config_dir`` gives a diffusers config folder for a single file whose shapes
    match none of ``configs/models``; ``tokenizer_cache_dir`` as Kohya's option. DiT families (FLUX.1)
    load through their own module (trainer/models/dit.py); ``text_encoder_files`` gives kohya's separate
    ``clip_l`` / ``t5xxl`` files for them, and ``vae`` their AE.
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if family is not None and family not in FAMILY_NAMES:
        raise ValueError(f"family must be one of {list(FAMILY_NAMES)}, got {family!r}")
    target = resolve_source(path_or_id, cache_dir=cache_dir)
    dit = dit_of(target, family)
    if dit is not None:
        base = dit.module("loader").load(target, vae=vae, files=text_encoder_files, dtype=dtype, config_dir=config_dir,
                                         tokenizer_cache_dir=tokenizer_cache_dir)
        if str(path_or_id) != str(target):
            base.source = f"{path_or_id} (hub) → {base.source}"
        base.path = str(path_or_id)
        log.info("loaded base model: %s", base.source)
        return base
    if target.is_file():
        from trainer.models.single_file import load_single_file

        comps, det, v_pred = load_single_file(target, family=family, v_parameterization=v_parameterization,
                                              config_dir=config_dir, dtype=dtype,
                                              tokenizer_cache_dir=tokenizer_cache_dir)
        arch, fam = det.architecture, det.family
        source = f"{target} — single file, {det.describe(v_pred)}"
        scheduler = build_pipeline_scheduler(arch, "v_prediction" if v_pred else "epsilon")
    else:
        comps, arch, fam, v_pred, source = load_diffusers_folder(target, family, v_parameterization, dtype)
        scheduler = comps["scheduler"]
    if str(path_or_id) != str(target):
        source = f"{path_or_id} (hub) → {source}"
    tes = [comps["text_encoder"]] + ([comps["text_encoder_2"]] if fam == "sdxl" else [])
    toks = [comps["tokenizer"]] + ([comps["tokenizer_2"]] if fam == "sdxl" else [])
    base = BaseModel(family=fam, v_prediction=v_pred, unet=comps["unet"], vae=comps["vae"], text_encoders=tes,
                     tokenizers=toks, noise_scheduler=build_noise_scheduler(v_pred), source=source,
                     path=str(path_or_id), architecture=arch, scheduler=scheduler, dtype=dtype)
    if vae is not None:
        from trainer.models.vae import load_vae

        base.vae = load_vae(vae, base, dtype=dtype)
        base.vae_source = str(vae)
        base.source += f"; VAE replaced by {vae}"
    log.info("loaded base model: %s", base.source)
    return base


def dit_of(target: Path, family: str | None):
    """The DiT family record when the family is forced to one or the file/folder is one, else None."""
    from trainer.models.dit import dit_family, family_of_file_keys

    if family is not None:
        return dit_family(family)
    if target.is_dir():
        return dit_family(read_architecture(target).family) if (target / "transformer").is_dir() else None
    if target.suffix.lower() in SAFETENSORS_EXT:
        from safetensors import safe_open

        try:
            with safe_open(target, framework="pt") as fh:
                return dit_family(family_of_file_keys(fh.keys()))
        except Exception:  # noqa: BLE001 — unreadable: the SD path reports it with its own message
            return None
    return None


def resolve_source(path_or_id: str | Path, *, cache_dir=None) -> Path:
    """A local file/folder as is; ``org/name`` that is not a local path → hub snapshot folder."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path.resolve()
    text = str(path_or_id)
    if path.suffix.lower() in SAFETENSORS_EXT + PICKLE_EXT or text.startswith((".", "/", "~")) or "\\" in text:
        raise CheckpointError(f"{path_or_id}: no such file or folder. Check the path of the pretrained model.")
    from trainer.models.hub import download_model

    return download_model(text, cache_dir=cache_dir)


def load_diffusers_folder(folder: Path, family, v_parameterization, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if not (folder / "model_index.json").is_file() or not (folder / "unet").is_dir():
        raise CheckpointError(
            f"{folder} is not a diffusers model folder (model_index.json and unet/ expected). Point at a "
            ".safetensors/.ckpt file, a diffusers folder, or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5.")
    arch = read_architecture(folder)
    fam = family or arch.family
    kw = {"torch_dtype": dtype}
    comps = {
        "unet": _from_pretrained(UNet2DConditionModel, folder, "unet", kw),
        "vae": _from_pretrained(AutoencoderKL, folder, "vae", kw),
        "text_encoder": _from_pretrained(CLIPTextModel, folder, "text_encoder", {"dtype": dtype}),
        "tokenizer": _folder_tokenizer(CLIPTokenizer, folder, "tokenizer"),
    }
    if fam == "sdxl":
        comps["text_encoder_2"] = _from_pretrained(CLIPTextModelWithProjection, folder, "text_encoder_2", {"dtype": dtype})
        comps["tokenizer_2"] = _folder_tokenizer(CLIPTokenizer, folder, "tokenizer_2")
    for m in comps.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    scheduler = build_pipeline_scheduler(arch)
    if v_parameterization is None:
        v_pred = scheduler.config.get("prediction_type") == "v_prediction"
        why = f"prediction type {scheduler.config.get('prediction_type')} from scheduler config"
    else:
        v_pred, why = bool(v_parameterization), "v-parameterization set by option"
    comps["scheduler"] = type(scheduler).from_config(
        {**scheduler.config, "prediction_type": "v_prediction" if v_pred else "epsilon"})
    pred = "v-prediction" if v_pred else "epsilon"
    source = f"{folder} — diffusers folder, {FAMILY_NAMES[fam]} ({pred}; {why})"
    return comps, arch, fam, v_pred, source


def _folder_tokenizer(cls, folder: Path, sub: str):
    # transformers 5 silently returns an empty tokenizer for a folder without vocabulary files
    if not any((folder / sub / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise CheckpointError(f"{folder / sub}: tokenizer files (vocab.json + merges.txt, or tokenizer.json) are "
                              "missing. Copy the tokenizer folder of the original model into it.")
    return cls.from_pretrained(folder, subfolder=sub)


def _from_pretrained(cls, folder: Path, sub: str, kw: dict):
    try:
        return cls.from_pretrained(folder, subfolder=sub, **kw)
    except (OSError, EnvironmentError) as exc:
        if any((folder / sub).glob("*.fp16.*")):  # repos that only ship the fp16 variant
            return cls.from_pretrained(folder, subfolder=sub, variant="fp16", **kw)
        raise CheckpointError(f"{folder / sub}: cannot load the {sub} weights ({exc}). Is the download complete?") from exc
