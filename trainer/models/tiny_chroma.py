"""A tiny, seeded, random-weight Chroma in its real file layouts, for tests and the demo.

    files = write_tiny_chroma(tmp, layout="kohya")      # {"model": Chroma transformer, "t5xxl", "ae"}
    files = write_tiny_chroma(tmp, layout="bundled")    # {"model": one ComfyUI-style file with T5 and AE}
    files = write_tiny_chroma(tmp, layout="diffusers")  # {"model": a ChromaPipeline folder}
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.models.registry import get_architecture
from trainer.models.tiny_dit import every_weight_counts, new_tiny_folder, save_diffusers_folder

ARCH = "tiny-chroma"


def build_tiny_chroma(seed: int = 0) -> dict:
    """Modules (transformer, vae, text_encoder) + tokenizer + scheduler, seeded."""
    from diffusers import AutoencoderKL, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer

    arch = get_architecture(ARCH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        comps = {"transformer": ChromaTransformer2DModel.from_config(arch.config("transformer")),
                 "vae": AutoencoderKL.from_config(arch.config("vae")),
                 "text_encoder": build_t5_encoder(arch.config("text_encoder"))}
        every_weight_counts(comps)
    comps["tokenizer"] = load_t5_tokenizer(arch.path / "tokenizer")
    comps["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(arch.config("scheduler"))
    return comps


def write_tiny_chroma(out: Path, layout: str = "kohya", seed: int = 0) -> dict[str, Path]:
    """Write a tiny Chroma into the new folder ``out``; returns the paths, named as kohya's options."""
    from trainer.models.checkpoint_io import write_checkpoint
    from trainer.models.chroma_keys import diffusers_to_original
    from trainer.models.ldm_keys import VAE_PREFIX, vae_to_ldm

    out = new_tiny_folder(out, layout)
    comps = build_tiny_chroma(seed)
    if layout == "diffusers":
        parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
        return {"model": save_diffusers_folder(comps, out / "tiny-chroma", parts, ARCH)}
    tr = comps["transformer"]
    original = diffusers_to_original(tr.state_dict(), dict(tr.config))
    t5 = dict(comps["text_encoder"].state_dict())
    t5.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, as in the published t5xxl files
    ae = {k[len(VAE_PREFIX):]: v for k, v in vae_to_ldm(comps["vae"].state_dict(), dict(comps["vae"].config)).items()}
    meta = {"modelspec.architecture": "chroma", "modelspec.title": f"tiny-chroma (seed {seed})"}
    if layout == "bundled":  # ComfyUI's full checkpoint layout
        sd = {"model.diffusion_model." + k: v for k, v in original.items()}
        sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in t5.items()})
        sd.update({"vae." + k: v for k, v in ae.items()})
        return {"model": write_checkpoint(sd, out / "tiny-chroma-full.safetensors", meta)}
    return {"model": write_checkpoint(original, out / "chroma-tiny.safetensors", meta),
            "t5xxl": write_checkpoint(t5, out / "t5xxl_tiny.safetensors"),
            "ae": write_checkpoint(ae, out / "ae.safetensors")}
