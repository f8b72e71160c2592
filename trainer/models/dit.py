"""The DiT (flow-matching transformer) families: one record per family naming its module for each seam.

The SD families (U-Nets) are wired directly; a DiT family plugs into the same seams through the
modules named here, so adding the next one (Lumina 2, Qwen-Image, …) is one module per seam plus one
record below — no ``if family == …`` across the tree:

=================  ==========================================================================
seam               what the module provides
=================  ==========================================================================
``loader``         ``load(target, *, vae, files, dtype, config_dir, tokenizer_cache_dir) -> BaseModel``
                   and ``detect_keys(keys) -> bool``; for the LoRA tools ``FILE_PREFIX``,
                   ``original_transformer_config(sd)``, ``modelspec_architecture(cfg)``, ``folder_extras(folder)``
``keys``           ``to_diffusers(sd, cfg)`` / ``to_original(sd, cfg)``: the original (BFL/SAI) key map
``text``           ``tokenize(tokenizers, captions, cfg)`` / ``encode(base, ids)`` (hidden, pooled)
``forward``        ``make_denoise(base, cfg) -> fn(transformer, noisy, t, hidden, pooled, time_ids)``
``objective``      ``trainer.train.flow_matching.FlowMatchingObjective`` options (shared by every
                   rectified-flow family; settings a family always uses in ``objective_fixed``)
``naming``         ``all_targets(transformer, text_encoders, include_conv)`` with kohya's LoRA names
``saving``         ``original_state_dict(base) -> dict`` (the single-file layout)
``samples``        ``pipeline(base) -> diffusers pipeline``
=================  ==========================================================================
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DitFamily:
    name: str                 # family id used everywhere ("flux")
    label: str                # shown to users ("FLUX.1")
    loader: str               # module paths, one per seam (see the table above)
    text: str
    forward: str
    naming: str
    keys: str                 # original (BFL/SAI) ↔ diffusers key map: to_diffusers / to_original
    transformer_class: str    # diffusers class of the denoiser
    base_model_version: str   # sd-scripts' ss_base_model_version
    config_flag: str          # the Kohya_ss checkbox that forces this family (flux1_checkbox)
    objective_fixed: dict = field(default_factory=dict)  # objective settings the family always uses
    config_match: dict = field(default_factory=dict)  # more option values that pick it (Chroma: model_type chroma)
    samples: str = ""         # its own sampling module (sample(base, p, size, generator, t5_length)), else samples_dit

    def module(self, seam: str):
        return importlib.import_module(getattr(self, seam))


DIT_FAMILIES: dict[str, DitFamily] = {
    # Chroma first: its files also carry FLUX.1's double blocks (the loaders' detect_keys are tried in order)
    "chroma": DitFamily(name="chroma", label="Chroma", loader="trainer.models.chroma",
                        text="trainer.models.text_chroma", forward="trainer.models.chroma_forward",
                        naming="trainer.networks.naming_chroma", keys="trainer.models.chroma_keys",
                        transformer_class="ChromaTransformer2DModel", base_model_version="chroma",
                        config_flag="flux1_checkbox", config_match={"model_type": "chroma"},
                        samples="trainer.train.samples_chroma"),
    "flux": DitFamily(name="flux", label="FLUX.1", loader="trainer.models.flux", text="trainer.models.text_flux",
                      forward="trainer.models.flux_forward",
                      naming="trainer.networks.naming_flux", keys="trainer.models.flux_keys",
                      transformer_class="FluxTransformer2DModel",
                      base_model_version="flux1", config_flag="flux1_checkbox"),
    "sd3": DitFamily(name="sd3", label="SD3.5", loader="trainer.models.sd3", text="trainer.models.text_sd3",
                     forward="trainer.models.sd3_forward", naming="trainer.networks.naming_sd3",
                     keys="trainer.models.sd3_keys",
                     transformer_class="SD3Transformer2DModel", base_model_version="sd3", config_flag="sd3_checkbox",
                     # sd-scripts' SD3 loss: σ by weighting_scheme, the output preconditioned to x0 and compared
                     # with x0 (sd3_train_network has no timestep_sampling / model_prediction_type options)
                     objective_fixed={"target": "latents", "model_prediction_type": "sigma_scaled",
                                      "timestep_sampling": "sigma"}),
}


def dit_family(name: str | None) -> DitFamily | None:
    return DIT_FAMILIES.get(name or "")


def family_denoise(base, cfg):
    """The family's transformer call for Denoiser (None: the U-Net call)."""
    fam = dit_family(base.family)
    return None if fam is None else fam.module("forward").make_denoise(base, cfg)


def family_forced_by(config) -> str | None:
    """The DiT family a config's Kohya_ss checkbox asks for (flux1_checkbox …), if any."""
    for fam in sorted(DIT_FAMILIES.values(), key=lambda f: -len(f.config_match)):  # the most specific first
        if getattr(config, fam.config_flag) and all(getattr(config, k) == v for k, v in fam.config_match.items()):
            return fam.name
    return None


def family_from_transformer_config(cfg: dict, path: Path) -> str:
    for fam in DIT_FAMILIES.values():
        if cfg.get("_class_name") == fam.transformer_class:
            return fam.name
    raise ValueError(f"{path}: transformer/config.json names {cfg.get('_class_name')!r}, which is no known family "
                     f"({', '.join(f.transformer_class for f in DIT_FAMILIES.values())})")


def family_of_file_keys(keys) -> str | None:
    """A DiT family whose loader recognises these single-file keys."""
    keys = list(keys)
    for fam in DIT_FAMILIES.values():
        if fam.module("loader").detect_keys(keys):
            return fam.name
    return None


def read_parts(target: Path, files: dict | None, *, from_folder, from_single_file, label: str, vae, dtype, config_dir,
               tokenizer_cache_dir):
    """The folder-or-single-file dispatch every DiT loader starts with: ``(comps, arch, how, files)``.
    ``files`` (kohya's separate clip_l / clip_g / t5xxl files) lose their empty entries;
    ``from_folder(folder, dtype)`` / ``from_single_file(path, files, vae, dtype, config_dir, tokenizer_cache_dir)``
    are the family's readers (the latter returns ``(comps, arch, how)``)."""
    from trainer.models.checkpoint_io import CheckpointError
    from trainer.models.registry import read_architecture

    files = {k: v for k, v in (files or {}).items() if v}
    if not target.is_dir():
        return (*from_single_file(target, files, vae, dtype, config_dir, tokenizer_cache_dir), files)
    if not (target / "model_index.json").is_file() or not (target / "transformer").is_dir():
        raise CheckpointError(f"{target} is not a diffusers {label} folder (model_index.json and transformer/ "
                              "expected).")
    return from_folder(target, dtype), read_architecture(target), "diffusers folder", files


def match_by_widths(family: str, label: str, widths: dict, widths_of, prefer=None):
    """The registered architecture of ``family`` whose transformer config has the file's widths
    (``widths_of(config) == widths``); ``prefer(config)`` orders several fits (e.g. FLUX dev before schnell)."""
    from trainer.models.checkpoint_io import CheckpointError
    from trainer.models.registry import known_architectures

    known = [a for a in known_architectures() if a.family == family]
    fits = [a for a in known if widths_of(a.config("transformer")) == widths]
    if not fits:
        shown = ", ".join(f"{k} {v}" for k, v in widths.items())
        raise CheckpointError(f"a {label} transformer with {shown} matches none of the known configs "
                              f"({', '.join(a.name for a in known)} in configs/models/). Fix: pass a diffusers config "
                              "folder for it (config_dir) or load the model's diffusers folder.")
    if prefer is not None:
        fits.sort(key=lambda a: not prefer(a.config("transformer")))
    return fits[0]


def dit_base_model(family: str, comps: dict, arch, *, target: Path, what: str, files: dict, vae, vae_label: str,
                   dtype, variant: str, modelspec_architecture: str):
    """The BaseModel of a loaded DiT pipeline's parts (frozen, flow-matching scheduler, a `source` that names
    every file used); `comps` holds transformer, vae, text_encoder[_2, _3] and their tokenizers."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from trainer.models.loader import BaseModel

    names = sorted(k for k in comps if k.startswith("text_encoder"))
    tes = [comps[n] for n in names]
    for m in (comps["transformer"], comps["vae"], *tes):
        m.eval().requires_grad_(False)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(arch.config("scheduler"))
    source = f"{target} — {what} ({arch.name})"
    extras = [f"{k} from {v}" for k, v in files.items()] + ([f"{vae_label} from {vae}"] if vae else [])
    if extras:
        source += "; " + ", ".join(extras)
    return BaseModel(family=family, v_prediction=False, unet=comps["transformer"], vae=comps["vae"],
                     text_encoders=tes, tokenizers=[comps[n.replace("text_encoder", "tokenizer")] for n in names],
                     noise_scheduler=scheduler, source=source, path=str(target), architecture=arch,
                     scheduler=scheduler, dtype=dtype, vae_source=str(vae) if vae else None,
                     extra={"variant": variant, "modelspec_architecture": modelspec_architecture})
