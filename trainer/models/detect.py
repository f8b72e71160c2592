"""Tell SD1.x / SD2.x / SDXL (and v-prediction) from a single file's keys, shapes and metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.families import FAMILY_NAMES, UNET, family_from_keys
from trainer.models.checkpoint_io import CheckpointError
from trainer.models.registry import Architecture, known_architectures, match_architecture



class UnknownArchitectureError(CheckpointError):
    pass


@dataclass
class Detection:
    family: str
    architecture: Architecture
    v_prediction: bool | None  # None: undecided, the loader probes the U-Net (SD2 only)
    reason: str

    def describe(self, v_prediction: bool) -> str:
        pred = "v-prediction" if v_prediction else "epsilon"
        return f"{FAMILY_NAMES[self.family]} ({self.architecture.name}, {pred}; {self.reason})"


def detect_family(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    keys = state_dict.keys()
    if not any(k.startswith(UNET) for k in keys):
        raise UnknownArchitectureError(_not_a_base_model(keys, path))
    conv_in = state_dict.get(UNET + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in.shape[1] != 4:
        raise UnknownArchitectureError(
            f"{path} is an inpainting/instruct model (U-Net takes {conv_in.shape[1]} input channels); only "
            "text-to-image SD1.x, SD2.x and SDXL base checkpoints can be trained. Pick a non-inpainting base model.")
    family = family_from_keys(keys)
    if family == "sdxl":
        if not any(k.startswith("conditioner.embedders.0.transformer.") for k in keys) and any(
                k.startswith("conditioner.embedders.0.model.") for k in keys):
            raise UnknownArchitectureError(f"{path} is an SDXL refiner; train on an SDXL base model instead.")
    if family is not None:
        return family
    proj_in = next((v for k, v in sorted(state_dict.items()) if k.startswith(UNET) and k.endswith("proj_in.weight")), None)
    if proj_in is not None:  # U-Net only file: SD2 uses linear projections, SD1 1x1 convolutions
        return "sd2" if proj_in.ndim == 2 else "sd1"
    raise UnknownArchitectureError(_unknown(path))


def detect(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], path: Path, *,
           family: str | None = None, v_parameterization: bool | None = None,
           config_dir: Path | None = None) -> Detection:
    found = detect_family(state_dict, path)
    reason = "detected from the weights"
    if family and family != found:
        reason = f"family forced to {family} (the weights look like {FAMILY_NAMES[found]})"
        found = family
    if config_dir is not None:
        from trainer.models.registry import read_architecture

        arch = read_architecture(Path(config_dir))
    else:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        arch = match_architecture(shapes, found)
        if arch is None:
            raise UnknownArchitectureError(
                f"{path} looks like {FAMILY_NAMES[found]} but its layer sizes match none of the known configs "
                f"({', '.join(a.name for a in known_architectures() if a.family == found)} in configs/models/). "
                "Fix: pass a diffusers config folder for it (config_dir=, e.g. a copy of the model's diffusers "
                "repo without weights) or load the model's diffusers version.")
    if v_parameterization is not None:
        return Detection(found, arch, bool(v_parameterization), reason + "; v-parameterization set by option")
    v, why = v_prediction_hint(state_dict, metadata, path, found)
    return Detection(found, arch, v, f"{reason}; {why}")


def v_prediction_hint(state_dict, metadata: dict, path: Path, family: str) -> tuple[bool | None, str]:
    """What the file says about its prediction type, strongest evidence first."""
    pred = (metadata.get("modelspec.prediction_type") or "").lower()
    if pred in ("v", "v_prediction", "v-prediction"):
        return True, "v-prediction from modelspec metadata"
    if pred in ("epsilon", "eps"):
        return False, "epsilon from modelspec metadata"
    arch = metadata.get("modelspec.architecture", "")
    if arch.startswith("stable-diffusion"):
        return arch.endswith("-v"), f"modelspec.architecture {arch!r}"
    if "v_pred" in state_dict:  # marker key of v-prediction SDXL fine-tunes (ComfyUI convention)
        return True, "'v_pred' marker key"
    if family != "sd2":
        return False, "epsilon (standard for this family)"
    name = Path(path).name.lower()
    if re.search(r"v[-_ ]?pred|v[-_ ]?param|768-v", name):
        return True, f"v-prediction guessed from the file name {Path(path).name!r}"
    if "768" in name:
        return True, "v-prediction guessed from '768' in the file name (SD2.x 768 models are v-models)"
    if "512" in name or "base" in name:
        return False, "epsilon guessed from the file name (SD2.x 512/base models are epsilon)"
    return None, "prediction type probed from the U-Net output"


def probe_v_prediction(unet) -> bool:
    """A1111's test for SD2 models: v-models predict far from the input on a flat latent at t=999."""
    p = next(unet.parameters())
    x = torch.ones((1, unet.config.in_channels, 8, 8), dtype=p.dtype, device=p.device) * 0.5
    ctx = torch.zeros((1, 77, unet.config.cross_attention_dim), dtype=p.dtype, device=p.device)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=p.device), ctx).sample.float()
    return bool((out - x.float()).mean() < -1)


def _not_a_base_model(keys, path: Path) -> str:
    keys = list(keys)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return f"{path} is a LoRA, not a base model. Choose a Stable Diffusion checkpoint as the pretrained model."
    if any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys):
        return f"{path} is a VAE, not a base model. Pass it as the VAE (vae=) and choose a full checkpoint."
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        return (f"{path} holds diffusers-layout U-Net weights only. Point at the whole diffusers folder "
                "(the one with model_index.json) instead.")
    if len(keys) <= 4 and any("emb_params" in k or k == "string_to_param" for k in keys):
        return f"{path} is a textual-inversion embedding, not a base model."
    return _unknown(path)


def _unknown(path: Path) -> str:
    return (f"{path} is not a checkpoint of a supported architecture (no SD1.x/SD2.x/SDXL U-Net keys "
            "'model.diffusion_model.*' found). Supported: Stable Diffusion 1.x, 2.x and SDXL base, as a single "
            ".safetensors/.ckpt file in the original layout or as a diffusers folder.")
