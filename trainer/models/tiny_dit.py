"""Tiny, seeded, random-weight DiT models (FLUX.1) in their real file layouts, for tests and the demo.

    files = write_tiny_flux(tmp, layout="kohya")   # {"model": BFL transformer, "clip_l", "t5xxl", "ae"}
    files = write_tiny_flux(tmp, layout="bundled") # {"model": one ComfyUI-style file with TEs and VAE}
    files = write_tiny_flux(tmp, layout="diffusers")  # {"model": a diffusers folder}
    files = write_tiny_flux(tmp, variant="schnell")   # no guidance embedding, like FLUX.1 [schnell]
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.models.registry import get_architecture

LAYOUTS = ("kohya", "bundled", "diffusers")


def every_weight_counts(comps: dict) -> None:
    """diffusers zero-initialises some output layers: give them random weights too, then freeze every part."""
    for m in comps.values():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.data.normal_(0, 0.02)
        m.eval().requires_grad_(False)


def new_tiny_folder(out, layout: str) -> Path:
    """The new (or empty) folder a tiny model is written into; tiny models never overwrite files."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder (tiny models never overwrite files)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_diffusers_folder(comps: dict, folder: Path, parts, architecture: str) -> Path:
    """A diffusers folder: each part's save_pretrained + the architecture's model_index.json."""
    folder.mkdir()
    for part in parts:
        comps[part].save_pretrained(folder / part)
    (folder / "model_index.json").write_text((get_architecture(architecture).path / "model_index.json").read_text())
    return folder


def build_tiny_flux(seed: int = 0, variant: str = "dev") -> dict:
    """Modules (transformer, vae, text_encoder, text_encoder_2) + tokenizers + scheduler, seeded."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from trainer.models.components import build_text_encoder
    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer
    from trainer.models.tokenizers import load_tokenizer

    arch = get_architecture("tiny-flux")
    cfg = {**arch.config("transformer"), "guidance_embeds": variant == "dev"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        comps = {"transformer": FluxTransformer2DModel.from_config(cfg),
                 "vae": AutoencoderKL.from_config(arch.config("vae")),
                 "text_encoder": build_text_encoder(arch.config("text_encoder")),
                 "text_encoder_2": build_t5_encoder(arch.config("text_encoder_2"))}
        every_weight_counts(comps)
    comps["tokenizer"] = load_tokenizer(arch.path / "tokenizer")
    comps["tokenizer_2"] = load_t5_tokenizer(arch.path / "tokenizer_2")
    comps["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(arch.config("scheduler"))
    return comps


def write_tiny_flux(out: Path, layout: str = "kohya", seed: int = 0, variant: str = "dev") -> dict[str, Path]:
    """Write a tiny FLUX.1 into the new folder ``out``; returns the paths, named as kohya's options."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.flux_keys import diffusers_to_bfl
    from trainer.models.ldm_keys import VAE_PREFIX, vae_to_ldm

    out = new_tiny_folder(out, layout)
    comps = build_tiny_flux(seed, variant)
    if layout == "diffusers":
        return {"model": save_flux_diffusers(comps, out / f"tiny-flux-{variant}")}
    tr = comps["transformer"]
    bfl = diffusers_to_bfl(tr.state_dict(), dict(tr.config))
    clip = {k: v for k, v in comps["text_encoder"].state_dict().items() if not k.endswith("position_ids")}
    t5 = dict(comps["text_encoder_2"].state_dict())
    t5.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, as in the published t5xxl files
    ae = {k[len(VAE_PREFIX):]: v for k, v in vae_to_ldm(comps["vae"].state_dict(), dict(comps["vae"].config)).items()}
    meta = {"modelspec.architecture": f"flux-1-{variant}", "modelspec.title": f"tiny-flux-{variant} (seed {seed})"}
    if layout == "bundled":  # ComfyUI's full checkpoint layout
        sd = {"model.diffusion_model." + k: v for k, v in bfl.items()}
        sd.update({"text_encoders.clip_l.transformer." + k: v for k, v in clip.items()})
        sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in t5.items()})
        sd.update({"vae." + k: v for k, v in ae.items()})
        return {"model": write_checkpoint(sd, out / f"tiny-flux-{variant}-full.safetensors", meta)}
    return {"model": write_checkpoint(bfl, out / f"flux1-tiny-{variant}.safetensors", meta),
            "clip_l": write_checkpoint(clip, out / "clip_l.safetensors"),
            "t5xxl": write_checkpoint(t5, out / "t5xxl_tiny.safetensors"),
            "ae": write_checkpoint(ae, out / "ae.safetensors")}


def save_flux_diffusers(comps: dict, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        comps[part].save_pretrained(folder / part)
    index = json.loads((get_architecture("tiny-flux").path / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


# ---- SD3.5 -------------------------------------------------------------------------------------

def build_tiny_sd3(seed: int = 0) -> dict:
    """Modules (transformer, vae, text_encoder/_2/_3) + tokenizers + scheduler of the tiny SD3.5-Medium shape."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from trainer.models.components import build_text_encoder
    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer
    from trainer.models.tokenizers import load_tokenizer

    arch = get_architecture("tiny-sd3")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        comps = {"transformer": SD3Transformer2DModel.from_config(arch.config("transformer")),
                 "vae": AutoencoderKL.from_config(arch.config("vae")),
                 "text_encoder": build_text_encoder(arch.config("text_encoder")),
                 "text_encoder_2": build_text_encoder(arch.config("text_encoder_2")),
                 "text_encoder_3": build_t5_encoder(arch.config("text_encoder_3"))}
        for m in comps.values():
            for p in m.parameters():
                if p.abs().sum() == 0:
                    p.data.normal_(0, 0.02)
    for m in comps.values():
        m.eval().requires_grad_(False)
    comps["tokenizer"] = load_tokenizer(arch.path / "tokenizer")
    comps["tokenizer_2"] = load_tokenizer(arch.path / "tokenizer_2")
    comps["tokenizer_3"] = load_t5_tokenizer(arch.path / "tokenizer_3")
    comps["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(arch.config("scheduler"))
    return comps


def write_tiny_sd3(out: Path, layout: str = "kohya", seed: int = 0) -> dict[str, Path]:
    """kohya: ``sd3.5-tiny.safetensors`` (MMDiT + VAE, as SAI's file without text encoders) + ``clip_l``,
    ``clip_g``, ``t5xxl`` files; bundled: one SAI file with ``text_encoders.*``; diffusers: a folder."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.ldm_keys import vae_to_ldm
    from trainer.models.sd3_keys import diffusers_to_sai

    out = new_tiny_folder(out, layout)
    comps = build_tiny_sd3(seed)
    if layout == "diffusers":
        parts = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
                 "tokenizer_3", "scheduler")
        return {"model": save_diffusers_folder(comps, out / "tiny-sd3", parts, "tiny-sd3")}
    tr = comps["transformer"]
    sd = {"model.diffusion_model." + k: v for k, v in diffusers_to_sai(tr.state_dict(), dict(tr.config)).items()}
    sd.update(vae_to_ldm(comps["vae"].state_dict(), dict(comps["vae"].config)))  # first_stage_model.*
    tes = {"clip_l": comps["text_encoder"].state_dict(), "clip_g": comps["text_encoder_2"].state_dict(),
           "t5xxl": dict(comps["text_encoder_3"].state_dict())}
    tes = {k: {n: v for n, v in s.items() if not n.endswith("position_ids")} for k, s in tes.items()}
    tes["t5xxl"].pop("encoder.embed_tokens.weight", None)
    meta = {"modelspec.architecture": "stable-diffusion-3.5-medium", "modelspec.title": f"tiny-sd3 (seed {seed})"}
    if layout == "bundled":
        for key, state in tes.items():
            sd.update({f"text_encoders.{key}.transformer.{n}": v for n, v in state.items()})
        return {"model": write_checkpoint(sd, out / "sd3.5-tiny-full.safetensors", meta)}
    paths = {"model": write_checkpoint(sd, out / "sd3.5-tiny.safetensors", meta)}
    for key, state in tes.items():
        paths[key] = write_checkpoint(state, out / f"{key}.safetensors")
    return paths
