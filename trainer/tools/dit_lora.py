"""merge (LoRA into a checkpoint) and extract (LoRA from two checkpoints) for FLUX.1, Chroma and SD3.5, as
sd-scripts' flux_merge_lora.py / flux_extract_lora.py do: on the original (BFL / SAI) tensors, named as kohya
names the LoRA modules, so a fused ``img_attn.qkv`` / ``linear1`` gets the LoRA's whole up matrix (q, k, v
[, mlp] rows) in one addition.

Memory: the base is read one tensor at a time and the output written one tensor at a time, so the peak is
the LoRAs plus a few copies of the largest single tensor (FLUX.1's ``linear1``: 21504×3072, 264 MB in fp32) —
never a second model (a diffusers-folder base is converted once: its transformer is then held once).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .dit_checkpoint import (LABELS, bundled_text_encoders, check_loads, open_checkpoint, text_encoder_keys_by_name,
                             transformer_catalog, transformer_keys_by_name, write_safetensors)
from .lora_io import rank_summary, state_dict
from .lora_math import ModuleWeights
from .output import Report, ToolError, percent, progress, save_checked_lora


def merge_into_dit(sd_model, family: str, loaded, out_path: Path, save_dtype: torch.dtype, save_precision: str,
                   show_progress: bool = True) -> Report:
    """``loaded``: [(path, ratio, modules, metadata)] as svd_merge.read_many gives them."""
    if out_path.suffix.lower() != ".safetensors":
        raise ToolError(f"--save_to {out_path}: a merged {LABELS[family]} model is written as one .safetensors file in the "
                        "original single-file layout (no diffusers folder or .ckpt); give a name ending in .safetensors")
    base = open_checkpoint(sd_model, family, "--sd_model")
    catalog = transformer_catalog(base)
    keys = {**transformer_keys_by_name(base, catalog)}
    for names in text_encoder_keys_by_name(base).values():
        keys.update(names)
    plan: dict[str, list[tuple[float, ModuleWeights]]] = {}
    for path, ratio, modules, meta in loaded:
        check_fits(path, modules, meta, base, catalog, keys)
        for name, m in modules.items():
            plan.setdefault(keys[name], []).append((ratio, m))

    def merged(key: str) -> torch.Tensor:
        t = base.read(key)
        if key in plan:  # W + Σ ratio · alpha/rank · up @ down, in fp32
            w = t.to(torch.float32, copy=True)
            for ratio, m in plan[key]:
                w += ratio * m.delta()
            t = w
        return t.to(save_dtype) if t.is_floating_point() else t

    order = list(base.shapes)
    dtypes = {k: save_dtype if d.is_floating_point else d for k, d in base.dtypes.items()}
    sources = ", ".join(f"{p.name}×{r:g}" for p, r, _, _ in loaded)
    meta = {k: v for k, v in base.metadata.items() if k.startswith("modelspec.")}
    meta.update({"modelspec.sai_model_spec": "1.0.0", "modelspec.title": out_path.stem,
                 "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"), "merged_loras": sources})
    write_safetensors(out_path, order, base.shapes, dtypes, merged, meta, show_progress)
    _check_written(out_path, base, plan, merged, dtypes, show_progress)
    n_te = sum(1 for _, _, mods, _ in loaded for n in mods if n.startswith("lora_te"))
    te = f" ({n_te} of them in the bundled text encoders)" if n_te else ""
    text = (f"Merged {sources} into {Path(sd_model).name} ({base.label}): {len(plan)} layers changed{te} by "
            f"ratio × alpha/rank × up@down on the original (fused) tensors, as kohya's flux_merge_lora does. "
            f"Saved {out_path} as a single file in the original layout at {save_precision}; it was read back, its "
            f"merged layers match the merge and its transformer maps onto the {base.label} loader's keys.")
    return Report("merge", str(out_path), text, {"layers_changed": len(plan), "family": family})


def check_fits(path, modules, meta, base, catalog, keys) -> None:
    """Refuse a LoRA that is not for this base: wrong family, names of no layer, text encoders the file lacks,
    shapes that differ. The transformer part goes through the repo's own LoRA check."""
    from trainer.networks.checks import family_from_metadata, guess_file_family
    from trainer.networks.network import canonical_state_dict

    said = family_from_metadata(meta)
    guessed = said or guess_file_family(list(modules), meta)
    name_guess_fits = said is None and {guessed, base.family} <= {"flux", "chroma"}  # same names in both
    if guessed not in (None, base.family) and not name_guess_fits:
        raise ToolError(f"{path} is a LoRA for {guessed}, but --sd_model {base.path} is {base.label}: pick a LoRA "
                        f"trained on {base.label}, or a {guessed} base model")
    unet = {n: m for n, m in modules.items() if n.startswith("lora_unet_")}
    if unet:
        canonical_state_dict(state_dict(unet), meta, catalog, base.family, str(path))
    bundled = text_encoder_keys_by_name(base)
    for name, m in modules.items():
        if name in unet:
            continue
        te = next((p for p in bundled_text_encoders(base.family) if name.startswith(p + "_")), None)
        if te is None:
            raise ToolError(f"{path}: module {name} is no {base.label} layer (kohya's names start with lora_unet_ or "
                            f"{'/'.join(bundled_text_encoders(base.family))}_); the LoRA is for another model")
        if te not in bundled:
            label = bundled_text_encoders(base.family)[te][0]
            n = sum(1 for x in modules if x.startswith(te + "_"))
            raise ToolError(f"{path} changes the {label} text encoder ({n} modules {te}_…), but --sd_model "
                            f"{base.path} holds no {label} weights (kohya's layout keeps it in its own file). Merge a "
                            "LoRA trained without the text encoder (network_train_unet_only), or a base file that "
                            f"bundles {label}")
        key = keys.get(name)
        if key is None:
            raise ToolError(f"{path}: module {name} maps to no layer of the {te} text encoder in {base.path}")
        if tuple(m.weight_shape) != tuple(base.shapes[key]):
            raise ToolError(f"{path}: module {name} has shape {tuple(m.weight_shape)} but {key} is "
                            f"{tuple(base.shapes[key])}; the LoRA is for another model")


def _check_written(path: Path, base, plan, merged, dtypes, show_progress: bool) -> None:
    """Read the file back: the keys, shapes and types planned, every merged layer equal to the merge, and a
    transformer the family's loader maps key for key."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        if set(fh.keys()) != set(base.shapes):
            raise ToolError(f"{path} was written but holds other keys than planned; delete it and report this")
        bad = [k for k in progress(sorted(plan), "check", enabled=show_progress)
               if not torch.equal(fh.get_tensor(k), merged(k))]
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    if bad:
        raise ToolError(f"{path} was written but {len(bad)} merged layers read back differ (e.g. {bad[0]}); "
                        "delete it and report this")
    check_loads(base, path, shapes)


def extract_dit(org_path: Path, tuned_path: Path, family: str, save_to: Path, dim: int, clamp_quantile: float,
                save_precision: str, device: str, overwrite: bool, show_progress: bool,
                conv_dim: int | None = None) -> Report:
    """A LoRA of the transformer's block layers from W_tuned − W_org (kohya's flux_extract_lora: text encoders
    are not extracted), with kohya's fused names and shapes."""
    from trainer.networks.checks import check_state_dict
    from trainer.networks.files import modelspec_metadata, network_metadata, read_lora_file

    from .extract import extract_module

    org = open_checkpoint(org_path, family, "--model_org")
    tuned = open_checkpoint(tuned_path, family, "--model_tuned")
    catalog = transformer_catalog(org)
    keys_org = transformer_keys_by_name(org, catalog)
    keys_tuned = transformer_keys_by_name(tuned, transformer_catalog(tuned))
    out, diff_sq, kept_sq = {}, 0.0, 0.0
    for name in progress(sorted(keys_org), "extract", enabled=show_progress):
        k_org, k_tuned = keys_org[name], keys_tuned.get(name)
        if k_tuned is None or tuned.shapes[k_tuned] != org.shapes[k_org]:
            raise ToolError(f"layer {k_org} differs in shape between the two models; --model_tuned must be a "
                            "fine-tune of --model_org")
        delta = tuned.read(k_tuned).to(device, torch.float32) - org.read(k_org).to(device, torch.float32)
        if not bool(delta.abs().max() > 0):
            continue
        out[name], total, kept = extract_module(delta, dim, clamp_quantile)
        diff_sq, kept_sq = diff_sq + total, kept_sq + kept
    if not out:
        raise ToolError(f"{tuned_path.name} and {org_path.name} have the same weights in every LoRA-targetable "
                        "layer: there is nothing to extract")
    meta = network_metadata(family, dim, dim)
    meta.update(modelspec_metadata(family, save_to.stem, "1024x1024"))
    meta["ss_sd_model_name"] = org_path.name
    meta["ss_output_name"] = save_to.stem
    meta["ss_training_comment"] = (f"extracted from {tuned_path.name} minus {org_path.name}, dim {dim}, "
                                   f"clamp_quantile {clamp_quantile}")
    save_checked_lora(save_to, out, meta, save_precision, overwrite)
    state, written_meta = read_lora_file(save_to)
    report = check_state_dict(state, written_meta, catalog, family, str(save_to))
    if not report.ok:
        raise ToolError(f"{save_to} was written but does not fit {org_path.name}:\n  " + "\n  ".join(report.problems))
    kept = math.sqrt(kept_sq / diff_sq) if diff_sq else 1.0
    unchanged = len(keys_org) - len(out)
    text = (f"Extracted {save_to} ({rank_summary(out)}, alpha = rank, {save_precision}) from {tuned_path.name} "
            f"minus {org_path.name} ({org.label}), on the original fused layers as kohya names them. It keeps "
            f"{percent(kept)} of the weight difference's Frobenius norm over the {len(out)} extracted layers."
            + (f" {unchanged} layers did not change and have no module." if unchanged else "")
            + " Text encoders are not extracted (as kohya's flux_extract_lora). The file passed its self-check "
              "and fits the base model's layers.")
    warnings = list(report.warnings)
    if conv_dim:
        warnings.append(f"--conv_dim {conv_dim} was ignored: {org.label} has no 3×3 convolutions to extract")
    return Report("extract", str(save_to), text, {"fro_kept": kept, "modules": len(out), "skipped": []}, warnings)

