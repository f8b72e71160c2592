"""Merge LoRAs (sd-scripts' merge_lora.py arguments).

* With `sd_model`: each LoRA times its ratio is added into the base model's weights
  (W += ratio · alpha/rank · up @ down, what A1111/ComfyUI and diffusers' fuse_lora do), and the
  model is saved as a single file (.safetensors/.ckpt) or a diffusers folder (no suffix).
* Without: the LoRAs become one LoRA by stacking their ranks (kohya's --concat): the output is
  exactly Σ ratio · ΔW and its rank is the sum of theirs. For a smaller file use svd-merge.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .lora_io import kept_metadata, network_fields, rank_summary, state_dict
from .lora_math import ModuleWeights
from .output import Report, ToolError, check_output, progress, save_checked_lora
from .resize import _lora_output, _verify
from .svd_merge import merged_from, read_many

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32, "fp32": torch.float32}


def merge_loras(models, save_to, ratios=None, save_precision: str = "fp16", overwrite: bool = False,
                show_progress: bool = True, base=None) -> Report:
    """LoRA + LoRA → one LoRA, exact, by concatenating ranks."""
    save_to = _lora_output(save_to, overwrite)
    loaded = read_many(models, ratios)
    names = sorted({n for _, _, modules, _ in loaded for n in modules})
    out = {}
    for name in progress(names, "concat", enabled=show_progress):
        parts = [(ratio, modules[name]) for _, ratio, modules, _ in loaded if name in modules]
        # alpha = total rank (scale 1): each file's ratio·scale moves into its up rows
        downs = [m.down.float() for _, m in parts]
        ups = [m.up.float() * (ratio * m.scale) for ratio, m in parts]
        shapes = {tuple(m.weight_shape) for _, m in parts}
        if len(shapes) > 1:
            raise ToolError(f"module {name} has different shapes in the files ({shapes}); "
                            "the LoRAs are for different base models")
        down, up = torch.cat(downs, 0), torch.cat(ups, 1)
        out[name] = ModuleWeights(down.contiguous(), up.contiguous(), float(down.shape[0]))
    first_meta = loaded[0][3]
    meta = kept_metadata(first_meta)
    meta.update(network_fields(out, first_meta))
    sources = ", ".join(f"{p.name}×{r:g}" for p, r, _, _ in loaded)
    meta["ss_training_comment"] = f"merge (concatenated ranks) of {sources}"
    meta["modelspec.title"] = meta["ss_output_name"] = save_to.stem
    meta["modelspec.merged_from"] = merged_from(loaded)
    meta["modelspec.date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save_checked_lora(save_to, out, meta, save_precision, overwrite)
    warnings = _verify(save_to, base)
    text = (f"Merged {sources} into one LoRA {save_to} by stacking their ranks ({rank_summary(out)}, "
            f"{save_precision}): it applies exactly the sum of the inputs' weight changes times their ratios. "
            "Use svd-merge for a smaller rank. The file passed its self-check.")
    return Report("merge", str(save_to), text, {"modules": len(out)}, warnings)


def merge_into_model(sd_model, models, save_to, ratios=None, save_precision: str = "fp16",
                     family: str | None = None, overwrite: bool = False, show_progress: bool = True) -> Report:
    """LoRAs into a base checkpoint; the output is a single file or a diffusers folder."""
    from trainer.models import load_base_model
    from trainer.networks.checks import build_name_map
    from trainer.networks.network import canonical_state_dict

    if save_precision not in SAVE_DTYPES:
        raise ToolError(f"--save_precision must be one of {', '.join(SAVE_DTYPES)}, got {save_precision!r}")
    out_path = check_output(save_to, overwrite)
    folder = out_path.suffix == ""
    loaded = read_many(models, ratios)
    dit = _dit_family(sd_model, family)
    if dit is not None:  # FLUX.1 / Chroma / SD3.5: merged on the original single-file tensors
        from .dit_lora import merge_into_dit

        return merge_into_dit(sd_model, dit, loaded, out_path, SAVE_DTYPES[save_precision], save_precision,
                              show_progress)
    base = load_base_model(sd_model, family=family)
    catalog = all_targets_of(base)
    name_map = build_name_map(catalog, base.family)
    changed = 0
    for path, ratio, modules, meta in loaded:
        canonical_state_dict(state_dict(modules), meta, catalog, base.family, str(path))  # raises if it does not fit
        for name, m in progress(sorted(modules.items()), f"merge {path.name}", enabled=show_progress):
            w = name_map[name].module.weight
            with torch.no_grad():
                w.copy_((w.float() + ratio * m.delta()).to(w.dtype))
            changed += 1
    dtype = SAVE_DTYPES[save_precision]
    save_model(base, out_path, dtype, overwrite)
    check_saved_model(out_path, base, catalog, dtype)
    sources = ", ".join(f"{p.name}×{r:g}" for p, r, _, _ in loaded)
    layout = "diffusers folder" if folder else "single file"
    text = (f"Merged {sources} into {Path(sd_model).name} ({base.family}): {changed} layers changed by "
            f"ratio × alpha/rank × up@down, as A1111/ComfyUI apply a LoRA. Saved {out_path} as a {layout} at "
            f"{save_precision}; it was loaded back and its merged layers match the merge.")
    return Report("merge", str(out_path), text, {"layers_changed": changed, "family": base.family})


def save_model(base, out_path: Path, dtype: torch.dtype, overwrite: bool) -> None:
    """A merged model as a single file (.safetensors/.ckpt) or, for a name without suffix, a diffusers folder."""
    from trainer.models.saving import save_diffusers, save_single_file

    if out_path.suffix == "":
        save_diffusers(base, out_path, dtype=dtype, overwrite=overwrite)
    else:
        save_single_file(base, out_path, dtype=dtype, title=out_path.stem, overwrite=overwrite)


def check_saved_model(path: Path, merged, catalog, dtype: torch.dtype) -> None:
    """Load the written model and compare every tensor (weight, bias) of each layer a merge can change."""
    from trainer.models import load_base_model

    again = {t.lora_name: t.module for t in all_targets_of(load_base_model(path, family=merged.family))}
    bad = []
    for t in catalog:
        theirs = again[t.lora_name].state_dict()
        for key, want in t.module.state_dict().items():
            got = theirs.get(key)
            if got is None or got.shape != want.shape or not torch.equal(want.to(dtype).float(), got.float()):
                bad.append(f"{t.lora_name}.{key}")
    if bad:
        raise ToolError(f"{path} was written but {len(bad)} tensors read back differ from the merge "
                        f"(e.g. {bad[0]}); the file is not usable, delete it and report this")


def all_targets_of(base):
    from trainer.networks.naming import all_targets

    return all_targets(base.unet, base.text_encoders, base.family, include_conv_blocks=True)


def _dit_family(sd_model, family: str | None) -> str | None:
    """The DiT family of the base (from the file's keys / the folder's transformer), None for SD1/SD2/SDXL."""
    from .dit_checkpoint import LABELS, family_of

    dit = family_of(sd_model)
    if dit is not None and family is not None and family != dit:
        raise ToolError(f"--family {family} but --sd_model {sd_model} is a {LABELS[dit]} model; leave --family empty")
    return dit
