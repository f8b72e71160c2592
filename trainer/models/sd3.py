"""Loading SD3 / SD3.5 (Medium, Large): SAI single files (``sd3.5_large.safetensors``: the MMDiT under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, with or without bundled
``text_encoders.clip_l / clip_g / t5xxl``), diffusers folders and hub ids, and kohya's separate
``clip_l`` / ``clip_g`` / ``t5xxl`` files. The MMDiT is converted with ``sd3_keys`` (ours, both ways)."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.models.checkpoint_io import CheckpointError, read_checkpoint
from trainer.models.dit import dit_base_model, match_by_widths, read_parts
from trainer.models.flux import CLIP_PREFIXES, T5_PREFIXES, _fresh, _load_ae, _sub, t5_encoder_state
from trainer.models.registry import Architecture, read_architecture

FAMILY = "sd3"
MARKER = "joint_blocks.0.x_block.attn.qkv.weight"
TE_FILES = (("clip_l", "text_encoder", "CLIP-L", ("text_encoders.clip_l.transformer.", "text_encoders.clip_l.")),
            ("clip_g", "text_encoder_2", "CLIP-G", ("text_encoders.clip_g.transformer.", "text_encoders.clip_g.")),
            ("t5xxl", "text_encoder_3", "T5-XXL", ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.")))
VAE_PREFIXES = ("first_stage_model.", "vae.")


def detect_keys(keys) -> bool:
    return any(k.endswith(MARKER) and k[:-len(MARKER)] in ("", "model.diffusion_model.") for k in keys)


FILE_PREFIX = "model.diffusion_model."  # SAI's files hold the MMDiT under this prefix, the VAE beside it
BUNDLED_TEXT_ENCODERS = {"lora_te1": ("CLIP-L", CLIP_PREFIXES),
                         "lora_te2": ("CLIP-G", ("text_encoders.clip_g.transformer.", "text_encoders.clip_g.")),
                         "lora_te3": ("T5-XXL", T5_PREFIXES)}


def modelspec_architecture(cfg: dict) -> str:
    return "stable-diffusion-3.5-medium" if cfg.get("dual_attention_layers") else "stable-diffusion-3.5-large"


def original_transformer_config(sd: dict) -> dict:
    """The diffusers config of a SAI-layout MMDiT (prefix stripped), from its tensors' shapes."""
    from trainer.models.sd3_keys import config_from_sai

    arch = match_sd3_architecture(sd, any(".attn2." in k for k in sd))
    return config_from_sai(sd, arch.config("transformer"))


def folder_extras(folder: Path) -> dict:
    """SAI's single file holds the VAE too: a diffusers folder's, in the original (LDM) keys."""
    import json

    from safetensors.torch import load_file

    from trainer.models.ldm_keys import vae_to_ldm

    files = sorted((folder / "vae").glob("*.safetensors"))
    if not files:
        return {}
    return vae_to_ldm(load_file(files[0]), json.loads((folder / "vae" / "config.json").read_text()))


def match_sd3_architecture(sd: dict, dual: bool) -> Architecture:
    width, joint = sd["context_embedder.weight"].shape
    return match_by_widths(FAMILY, "SD3", {"width": width, "text width": joint},
                           lambda cfg: {"width": cfg["caption_projection_dim"], "text width": cfg["joint_attention_dim"]},
                           prefer=lambda cfg: bool(cfg.get("dual_attention_layers")) == dual)


def load(target: Path, *, vae=None, files: dict | None = None, dtype=torch.float32, config_dir=None,
         tokenizer_cache_dir=None):
    comps, arch, how, files = read_parts(target, files, from_folder=_from_folder, from_single_file=_from_single_file,
                                         label="SD3", vae=vae, dtype=dtype, config_dir=config_dir,
                                         tokenizer_cache_dir=tokenizer_cache_dir)
    _replace_text_encoders(comps, files, dtype)
    if vae is not None and target.is_dir():
        _fresh(comps, "vae", arch)
        _load_ae(comps, vae, dtype)
    variant = "medium" if comps["transformer"].config.dual_attention_layers else "large"
    return dit_base_model(FAMILY, comps, arch, target=target, what=f"{how}, SD3.5 {variant.capitalize()}-shaped",
                          files=files, vae=vae, vae_label="VAE", dtype=dtype, variant=variant,
                          modelspec_architecture=f"stable-diffusion-3.5-{variant}")


def _from_folder(folder: Path, dtype) -> dict:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from trainer.models.loader import _folder_tokenizer, _from_pretrained

    return {"transformer": _from_pretrained(SD3Transformer2DModel, folder, "transformer", {"torch_dtype": dtype}),
            "vae": _from_pretrained(AutoencoderKL, folder, "vae", {"torch_dtype": dtype}),
            "text_encoder": _from_pretrained(CLIPTextModelWithProjection, folder, "text_encoder", {"dtype": dtype}),
            "text_encoder_2": _from_pretrained(CLIPTextModelWithProjection, folder, "text_encoder_2", {"dtype": dtype}),
            "text_encoder_3": _from_pretrained(T5EncoderModel, folder, "text_encoder_3", {"dtype": dtype}),
            "tokenizer": _folder_tokenizer(CLIPTokenizer, folder, "tokenizer"),
            "tokenizer_2": _folder_tokenizer(CLIPTokenizer, folder, "tokenizer_2"),
            "tokenizer_3": T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_3")}


def build_empty(arch: Architecture, transformer_config: dict | None = None, *, tokenizer_cache_dir=None) -> dict:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from trainer.models.components import build_text_encoder
    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer
    from trainer.models.tokenizers import load_tokenizer

    with init_empty_weights():
        comps = {"transformer": SD3Transformer2DModel.from_config(transformer_config or arch.config("transformer")),
                 "vae": AutoencoderKL.from_config(arch.config("vae")),
                 "text_encoder": build_text_encoder(arch.config("text_encoder")),
                 "text_encoder_2": build_text_encoder(arch.config("text_encoder_2")),
                 "text_encoder_3": build_t5_encoder(arch.config("text_encoder_3"))}
    for sub in ("tokenizer", "tokenizer_2"):
        comps[sub] = load_tokenizer(arch.path / sub, arch.tokenizers.get(sub), tokenizer_cache_dir=tokenizer_cache_dir)
    comps["tokenizer_3"] = load_t5_tokenizer(arch.path / "tokenizer_3", arch.tokenizers.get("tokenizer_3"),
                                             tokenizer_cache_dir=tokenizer_cache_dir)
    return comps


def _from_single_file(path: Path, files: dict, vae, dtype, config_dir, tokenizer_cache_dir):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from trainer.models.sd3_keys import config_from_sai, sai_to_diffusers, strip_prefix
    from trainer.models.single_file import assign_weights

    state, _ = read_checkpoint(path)
    mmdit = strip_prefix({k: v for k, v in state.items() if not k.startswith(VAE_PREFIXES + ("text_encoders.",))})
    if "context_embedder.weight" not in mmdit:
        raise CheckpointError(f"{path}: no SD3 MMDiT weights (context_embedder.weight) in the file.")
    dual = any(".attn2." in k for k in mmdit)
    arch = read_architecture(Path(config_dir)) if config_dir else match_sd3_architecture(mmdit, dual)
    cfg = config_from_sai(mmdit, arch.config("transformer"))
    comps = build_empty(arch, cfg, tokenizer_cache_dir=tokenizer_cache_dir)
    assign_weights(comps["transformer"], sai_to_diffusers(mmdit, cfg), dtype, path, "SD3 MMDiT")
    for key, part, what, prefixes in TE_FILES:
        if key in files:
            continue
        bundled = _sub(state, prefixes)
        if not bundled:
            raise CheckpointError(f"{path} holds no {what} text encoder: set {key} to the {what} file (kohya's "
                                  f"--{key}, e.g. {key}.safetensors).")
        assign_weights(comps[part], t5_encoder_state(bundled) if key == "t5xxl" else bundled, dtype, path, what)
    if vae is not None:
        _load_ae(comps, vae, dtype)
    else:
        sd = _sub(state, VAE_PREFIXES)
        if not sd:
            raise CheckpointError(f"{path} has no VAE (first_stage_model.*): set vae to the SD3 VAE file.")
        assign_weights(comps["vae"], convert_ldm_vae_checkpoint(sd, dict(comps["vae"].config)), dtype, path, "VAE")
    return comps, arch, "single file"


def _replace_text_encoders(comps: dict, files: dict, dtype) -> None:
    from trainer.models.single_file import assign_weights

    for key, part, what, prefixes in TE_FILES:
        if key not in files:
            continue
        path = Path(files[key]).expanduser()
        sd, _ = read_checkpoint(path)
        sd = _sub(sd, prefixes) or sd
        if key == "t5xxl":
            sd = t5_encoder_state(sd)
        _fresh(comps, part, None)
        assign_weights(comps[part], sd, dtype, path, f"{what} ({key})")


def save_single_file(base, path: Path, dtype=None, *, title=None, metadata=None) -> Path:
    """MMDiT (``model.diffusion_model.``) + VAE (``first_stage_model.``) in SAI's layout, as sd-scripts'
    sd3_train saves without --save_clip / --save_t5xxl (the text encoders stay in their own files)."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.ldm_keys import vae_to_ldm
    from trainer.models.dit_keys import PREFIX
    from trainer.models.sd3_keys import diffusers_to_sai

    tr = base.unet
    sd = {PREFIX + k: v for k, v in diffusers_to_sai(tr.state_dict(), dict(tr.config)).items()}
    sd.update(vae_to_ldm(base.vae.state_dict(), dict(base.vae.config)))
    if dtype is not None:
        sd = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach() for k, v in sd.items()}
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "https://github.com/Stability-AI/sd3.5",
            "modelspec.architecture": base.extra.get("modelspec_architecture", "stable-diffusion-3.5-medium"),
            "modelspec.title": title or Path(path).stem, **(metadata or {})}
    return write_checkpoint(sd, Path(path), metadata=meta)
