"""Loading FLUX.1 (dev / schnell): BFL single files, ComfyUI checkpoints (bundled text encoders/VAE,
fp8 weights), diffusers folders and hub ids, with kohya's separate ``clip_l`` / ``t5xxl`` / ``ae`` files.

The transformer is trained as diffusers' ``FluxTransformer2DModel`` (BaseModel.unet holds the denoiser
of every family); single files are converted with our own key map (``flux_keys``), which follows the
model's widths, so full-size and tiny models load the same way.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.models.checkpoint_io import CheckpointError, read_checkpoint
from trainer.models.dit import dit_base_model, match_by_widths, read_parts
from trainer.models.registry import Architecture, read_architecture

log = logging.getLogger(__name__)

FAMILY = "flux"
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_l.", "cond_stage_model.clip_l.transformer.")
T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.", "cond_stage_model.t5xxl.transformer.")
VAE_PREFIXES = ("vae.", "first_stage_model.")
MARKER = "double_blocks.0.img_attn.qkv.weight"


def detect_keys(keys) -> bool:
    return any(k.endswith(MARKER) and k[:-len(MARKER)] in ("", "model.diffusion_model.") for k in keys)


FILE_PREFIX = ""  # BFL files hold the transformer's keys bare (ComfyUI's prefix is stripped on reading)
# the text encoders a single file may bundle: kohya LoRA prefix → (label, key prefixes) — the LoRA tools' merge
BUNDLED_TEXT_ENCODERS = {"lora_te1": ("CLIP-L", CLIP_PREFIXES), "lora_te3": ("T5-XXL", T5_PREFIXES)}


def modelspec_architecture(cfg: dict) -> str:
    return "flux-1-dev" if cfg.get("guidance_embeds") else "flux-1-schnell"


def original_transformer_config(sd: dict) -> dict:
    """The diffusers config of a BFL-layout transformer, from its tensors' shapes (meta tensors do)."""
    from trainer.models.flux_keys import config_from_bfl

    arch = match_flux_architecture(sd, any(k.startswith("guidance_in.") for k in sd))
    return config_from_bfl(sd, arch.config("transformer"))


def folder_extras(folder: Path) -> dict:
    """What a single file holds beside the transformer when written from a diffusers folder: nothing."""
    return {}


def match_flux_architecture(sd: dict, guidance: bool) -> Architecture:
    """The registered FLUX architecture with this hidden size / text width (dev before schnell by guidance)."""
    return match_by_widths(FAMILY, "FLUX.1", transformer_widths(sd), config_widths,
                           prefer=lambda cfg: bool(cfg.get("guidance_embeds")) == guidance)


def transformer_widths(sd: dict) -> dict:
    """Widths of a BFL-layout transformer (FLUX.1 and Chroma share them)."""
    return {"hidden size": sd["img_in.weight"].shape[0], "text width": sd["txt_in.weight"].shape[1]}


def config_widths(cfg: dict) -> dict:
    return {"hidden size": cfg["num_attention_heads"] * cfg["attention_head_dim"],
            "text width": cfg["joint_attention_dim"]}


def load(target: Path, *, vae=None, files: dict | None = None, dtype=torch.float32, config_dir=None,
         tokenizer_cache_dir=None):
    """A BaseModel of family "flux". ``files``: {"clip_l": path, "t5xxl": path} (kohya's options)."""
    comps, arch, how, files = read_parts(target, files, from_folder=_from_folder, from_single_file=_from_single_file,
                                         label="FLUX.1", vae=vae, dtype=dtype, config_dir=config_dir,
                                         tokenizer_cache_dir=tokenizer_cache_dir)
    _replace_parts(comps, arch, files, vae if target.is_dir() else None, dtype)
    variant = "dev" if comps["transformer"].config.guidance_embeds else "schnell"
    return dit_base_model(FAMILY, comps, arch, target=target, what=f"{how}, FLUX.1 [{variant}]", files=files,
                          vae=vae, vae_label="AE", dtype=dtype, variant=variant,
                          modelspec_architecture=f"flux-1-{variant}")


def _from_folder(folder: Path, dtype) -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from trainer.models.loader import _folder_tokenizer, _from_pretrained

    return {
        "transformer": _from_pretrained(FluxTransformer2DModel, folder, "transformer", {"torch_dtype": dtype}),
        "vae": _from_pretrained(AutoencoderKL, folder, "vae", {"torch_dtype": dtype}),
        "text_encoder": _from_pretrained(CLIPTextModel, folder, "text_encoder", {"dtype": dtype}),
        "text_encoder_2": _from_pretrained(T5EncoderModel, folder, "text_encoder_2", {"dtype": dtype}),
        "tokenizer": _folder_tokenizer(CLIPTokenizer, folder, "tokenizer"),
        "tokenizer_2": T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_2"),
    }


def build_empty(arch: Architecture, transformer_config: dict | None = None, *, tokenizer_cache_dir=None) -> dict:
    """Every part of ``arch`` on the meta device (filled by assign_weights), plus its tokenizers."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from trainer.models.components import build_text_encoder
    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer
    from trainer.models.tokenizers import load_tokenizer

    with init_empty_weights():
        comps = {"transformer": FluxTransformer2DModel.from_config(transformer_config or arch.config("transformer")),
                 "vae": AutoencoderKL.from_config(arch.config("vae")),
                 "text_encoder": build_text_encoder(arch.config("text_encoder")),
                 "text_encoder_2": build_t5_encoder(arch.config("text_encoder_2"))}
    comps["tokenizer"] = load_tokenizer(arch.path / "tokenizer", arch.tokenizers.get("tokenizer"),
                                        tokenizer_cache_dir=tokenizer_cache_dir)
    comps["tokenizer_2"] = load_t5_tokenizer(arch.path / "tokenizer_2", arch.tokenizers.get("tokenizer_2"),
                                             tokenizer_cache_dir=tokenizer_cache_dir)
    return comps


def _from_single_file(path: Path, files: dict, vae, dtype, config_dir, tokenizer_cache_dir):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from trainer.models.flux_keys import bfl_to_diffusers, config_from_bfl, strip_prefix
    from trainer.models.single_file import assign_weights

    state, _ = read_checkpoint(path)
    transformer_sd = strip_prefix({k: v for k, v in state.items() if not k.startswith(
        CLIP_PREFIXES + T5_PREFIXES + VAE_PREFIXES + ("text_encoders.",))})
    if "img_in.weight" not in transformer_sd:
        raise CheckpointError(f"{path}: no FLUX.1 transformer weights (img_in.weight) in the file.")
    if "distilled_guidance_layer.in_proj.weight" in transformer_sd:  # FLUX.1 forced on a Chroma file
        raise CheckpointError(f"{path} is a Chroma model, not FLUX.1: set model_type to chroma (Model type on the "
                              "FLUX.1 options), or untick flux1_checkbox to let the family be detected.")
    guidance = any(k.startswith("guidance_in.") for k in transformer_sd)
    arch = read_architecture(Path(config_dir)) if config_dir else match_flux_architecture(transformer_sd, guidance)
    cfg = config_from_bfl(transformer_sd, arch.config("transformer"))
    comps = build_empty(arch, cfg, tokenizer_cache_dir=tokenizer_cache_dir)
    assign_weights(comps["transformer"], bfl_to_diffusers(transformer_sd, cfg), dtype, path, "FLUX.1 transformer")
    bundled = {"clip_l": _sub(state, CLIP_PREFIXES), "t5xxl": _sub(state, T5_PREFIXES), "ae": _sub(state, VAE_PREFIXES)}
    for key, part, what in (("clip_l", "text_encoder", "CLIP-L"), ("t5xxl", "text_encoder_2", "T5-XXL")):
        if key in files:
            continue  # the separate file wins (_replace_parts)
        if not bundled[key]:
            raise CheckpointError(f"{path} holds only the FLUX.1 transformer: set {key} to the {what} text-encoder "
                                  f"file (kohya's --{key}, e.g. {key}.safetensors).")
        assign_weights(comps[part], t5_encoder_state(bundled[key]) if key == "t5xxl" else bundled[key], dtype, path,
                       what)
    if vae is None:
        if not bundled["ae"]:
            raise CheckpointError(f"{path} has no autoencoder: set ae (the VAE/AE option) to FLUX.1's ae.safetensors.")
        assign_weights(comps["vae"], convert_ldm_vae_checkpoint(bundled["ae"], dict(comps["vae"].config)), dtype, path,
                       "AE")
    else:
        _load_ae(comps, vae, dtype)
    return comps, arch, "single file"


def t5_encoder_state(sd: dict) -> dict:
    """T5 files carry the encoder (and sometimes the decoder); the embedding is stored once as shared.weight."""
    sd = {k: v for k, v in sd.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    if "shared.weight" in sd:
        sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
    elif "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    return sd


def _sub(state: dict, prefixes) -> dict:
    for p in prefixes:
        sub = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if sub:
            return sub
    return {}


def _replace_parts(comps: dict, arch: Architecture, files: dict, vae, dtype) -> None:
    """kohya's separate text-encoder files (and an AE for a folder) replace what the model brought."""
    from trainer.models.single_file import assign_weights

    for key, part, what in (("clip_l", "text_encoder", "CLIP-L"), ("t5xxl", "text_encoder_2", "T5-XXL")):
        if key not in files:
            continue
        path = Path(files[key]).expanduser()
        sd, _ = read_checkpoint(path)
        sd = _sub(sd, {"clip_l": CLIP_PREFIXES, "t5xxl": T5_PREFIXES}[key]) or sd
        if key == "t5xxl":
            sd = t5_encoder_state(sd)
        _fresh(comps, part, arch)
        assign_weights(comps[part], sd, dtype, path, f"{what} ({key})")
    if vae is not None:
        _fresh(comps, "vae", arch)
        _load_ae(comps, vae, dtype)


def _fresh(comps: dict, part: str, arch: Architecture) -> None:
    """An empty module of the same config for assign_weights."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        comps[part] = type(comps[part])(comps[part].config) if part != "vae" else type(comps[part]).from_config(
            comps[part].config)


def _load_ae(comps: dict, vae, dtype) -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from trainer.models.single_file import assign_weights

    path = Path(vae).expanduser()
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        comps["vae"] = AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype)
        return
    sd, _ = read_checkpoint(path)
    if not any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd):
        sd = convert_ldm_vae_checkpoint(sd, dict(comps["vae"].config))
    if comps["vae"].device.type != "meta":
        _fresh(comps, "vae", None)
    assign_weights(comps["vae"], sd, dtype, path, "AE (ae)")


def save_single_file(base, path: Path, dtype=None, *, title=None, metadata=None) -> Path:
    """The transformer in BFL's single-file layout (as flux1-dev.safetensors and kohya's flux_train write it;
    text encoders and AE stay in their own files)."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.flux_keys import diffusers_to_bfl

    tr = base.unet
    sd = diffusers_to_bfl(tr.state_dict(), dict(tr.config))
    if dtype is not None:
        sd = {k: v.detach().to(dtype) for k, v in sd.items()}
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "https://github.com/black-forest-labs/flux",
            "modelspec.architecture": base.extra.get("modelspec_architecture", "flux-1-dev"),
            "modelspec.title": title or Path(path).stem, **(metadata or {})}
    return write_checkpoint(sd, Path(path), metadata=meta)
