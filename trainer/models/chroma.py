"""Loading Chroma (lodestones/Chroma, FLUX.1-schnell derived, 8.9B): single files in the original layout
(``chroma-unlocked-v*.safetensors``: the transformer only, as sd-scripts' ``--model_type chroma`` and ComfyUI
read it; or under ``model.diffusion_model.`` with bundled ``text_encoders.t5xxl`` / ``vae``), diffusers
folders (``ChromaPipeline``: ``transformer/``, ``text_encoder/`` T5, ``tokenizer/``, ``vae/``) and hub ids,
with kohya's separate ``t5xxl`` and ``ae`` files. Chroma has no CLIP-L (T5-XXL only)."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.models.checkpoint_io import CheckpointError, read_checkpoint
from trainer.models.chroma_keys import MARKER
from trainer.models.dit import dit_base_model, match_by_widths, read_parts
from trainer.models.flux import (T5_PREFIXES, VAE_PREFIXES, _fresh, _load_ae, _sub, config_widths, t5_encoder_state,
                                 transformer_widths)
from trainer.models.registry import Architecture, read_architecture

FAMILY = "chroma"


def detect_keys(keys) -> bool:
    return any(k.endswith(MARKER) and k[:-len(MARKER)] in ("", "model.diffusion_model.") for k in keys)


def load(target: Path, *, vae=None, files: dict | None = None, dtype=torch.float32, config_dir=None,
         tokenizer_cache_dir=None):
    """A BaseModel of family "chroma"; ``files``: {"t5xxl": path} (kohya's option; a clip_l file is refused)."""
    if (files or {}).get("clip_l"):
        raise CheckpointError(f"clip_l is set ({files['clip_l']}), but Chroma has no CLIP-L text encoder: clear clip_l "
                              "(Chroma uses T5-XXL only).")
    comps, arch, how, files = read_parts(target, files, from_folder=_from_folder, from_single_file=_from_single_file,
                                         label="Chroma", vae=vae, dtype=dtype, config_dir=config_dir,
                                         tokenizer_cache_dir=tokenizer_cache_dir)
    if "t5xxl" in files:
        path = Path(files["t5xxl"]).expanduser()
        sd, _ = read_checkpoint(path)
        _fresh(comps, "text_encoder", arch)
        _assign(comps["text_encoder"], t5_encoder_state(_sub(sd, T5_PREFIXES) or sd), dtype, path, "T5-XXL (t5xxl)")
    if vae is not None and target.is_dir():
        _fresh(comps, "vae", arch)
        _load_ae(comps, vae, dtype)
    return dit_base_model(FAMILY, comps, arch, target=target, what=f"{how}, Chroma", files=files, vae=vae,
                          vae_label="AE", dtype=dtype, variant="chroma", modelspec_architecture="chroma")


def _assign(module, sd, dtype, path, what):
    from trainer.models.single_file import assign_weights

    assign_weights(module, sd, dtype, path, what)


def _from_folder(folder: Path, dtype) -> dict:
    from diffusers import AutoencoderKL, ChromaTransformer2DModel
    from transformers import T5EncoderModel, T5TokenizerFast

    from trainer.models.loader import _from_pretrained

    return {"transformer": _from_pretrained(ChromaTransformer2DModel, folder, "transformer", {"torch_dtype": dtype}),
            "vae": _from_pretrained(AutoencoderKL, folder, "vae", {"torch_dtype": dtype}),
            "text_encoder": _from_pretrained(T5EncoderModel, folder, "text_encoder", {"dtype": dtype}),
            "tokenizer": T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer")}


def build_empty(arch: Architecture, transformer_config: dict | None = None, *, tokenizer_cache_dir=None) -> dict:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ChromaTransformer2DModel

    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer

    with init_empty_weights():
        comps = {"transformer": ChromaTransformer2DModel.from_config(transformer_config or arch.config("transformer")),
                 "vae": AutoencoderKL.from_config(arch.config("vae")),
                 "text_encoder": build_t5_encoder(arch.config("text_encoder"))}
    comps["tokenizer"] = load_t5_tokenizer(arch.path / "tokenizer", arch.tokenizers.get("tokenizer"),
                                           tokenizer_cache_dir=tokenizer_cache_dir)
    return comps


FILE_PREFIX = ""
BUNDLED_TEXT_ENCODERS = {"lora_te3": ("T5-XXL", T5_PREFIXES)}  # Chroma has no CLIP


def modelspec_architecture(cfg: dict) -> str:
    return "chroma"


def original_transformer_config(sd: dict) -> dict:
    """The diffusers config of an original-layout Chroma transformer, from its tensors' shapes."""
    from trainer.models.chroma_keys import config_from_original

    arch = match_by_widths(FAMILY, "Chroma", transformer_widths(sd), config_widths)
    return config_from_original(sd, arch.config("transformer"))


def folder_extras(folder: Path) -> dict:
    return {}


def _from_single_file(path: Path, files: dict, vae, dtype, config_dir, tokenizer_cache_dir):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from trainer.models.chroma_keys import config_from_original, original_to_diffusers, strip_prefix

    state, _ = read_checkpoint(path)
    others = VAE_PREFIXES + ("text_encoders.", "cond_stage_model.")
    transformer_sd = strip_prefix({k: v for k, v in state.items() if not k.startswith(others)})
    if MARKER not in transformer_sd:
        raise CheckpointError(f"{path}: no Chroma transformer weights ({MARKER}) in the file.")
    arch = read_architecture(Path(config_dir)) if config_dir else match_by_widths(
        FAMILY, "Chroma", transformer_widths(transformer_sd), config_widths)
    cfg = config_from_original(transformer_sd, arch.config("transformer"))
    comps = build_empty(arch, cfg, tokenizer_cache_dir=tokenizer_cache_dir)
    _assign(comps["transformer"], original_to_diffusers(transformer_sd, cfg), dtype, path, "Chroma transformer")
    if "t5xxl" not in files:  # else the separate file is read by load()
        bundled = _sub(state, T5_PREFIXES)
        if not bundled:
            raise CheckpointError(f"{path} holds only the Chroma transformer: set t5xxl to the T5-XXL text-encoder "
                                  "file (kohya's --t5xxl, e.g. t5xxl_fp16.safetensors).")
        _assign(comps["text_encoder"], t5_encoder_state(bundled), dtype, path, "T5-XXL")
    if vae is not None:
        _load_ae(comps, vae, dtype)
    else:
        ae = _sub(state, VAE_PREFIXES)
        if not ae:
            raise CheckpointError(f"{path} has no autoencoder: set ae (the VAE/AE option) to FLUX.1's ae.safetensors "
                                  "(Chroma uses FLUX.1's AE).")
        _assign(comps["vae"], convert_ldm_vae_checkpoint(ae, dict(comps["vae"].config)), dtype, path, "AE")
    return comps, arch, "single file"


def save_single_file(base, path: Path, dtype=None, *, title=None, metadata=None) -> Path:
    """The transformer in Chroma's original layout (as the published files; T5 and AE stay in their own)."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.chroma_keys import diffusers_to_original

    tr = base.unet
    sd = diffusers_to_original(tr.state_dict(), dict(tr.config))
    if dtype is not None:
        sd = {k: v.detach().to(dtype) for k, v in sd.items()}
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "https://huggingface.co/lodestones/Chroma",
            "modelspec.architecture": "chroma", "modelspec.title": title or Path(path).stem, **(metadata or {})}
    return write_checkpoint(sd, Path(path), metadata=meta)
