"""Extract a LoRA / LoCon from a fine-tuned model and its base (sd-scripts'
extract_lora_from_models.py arguments).

For every layer kohya's LoRA can wrap, ΔW = W_tuned − W_org is cut to `dim` (`conv_dim` for
3×3 convs, which are only extracted with conv_dim > 0 — a LoCon) by SVD; alpha = rank. A text
encoder whose largest change is below `min_diff` is treated as unchanged and left out, as kohya
does (a fine-tune usually leaves it alone). At full rank with clamp_quantile 1 the LoRA is the
difference itself, to fp32 precision.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from trainer.networks.files import modelspec_metadata, network_metadata

from .lora_math import ModuleWeights, factorize, svd
from .lora_io import rank_summary
from .output import Report, ToolError, check_inputs, percent, progress, save_checked_lora
from .resize import _lora_output

RankRule = Callable[[torch.Tensor, bool], int]  # (singular values of ΔW, is a 3×3 conv) → rank


def _load(path, family):
    from trainer.models import load_base_model

    return load_base_model(path, family=family)


def extract_lora(model_org, model_tuned, save_to, dim: int = 4, conv_dim: int | None = None,
                 clamp_quantile: float = 0.99, min_diff: float = 0.01, sdxl: bool = False, v2: bool = False,
                 save_precision: str = "fp16", device: str = "cpu", overwrite: bool = False,
                 show_progress: bool = True, rank_rule: RankRule | None = None, how: str = "") -> Report:
    """`rank_rule(singular_values, is_conv3x3)` chooses each module's rank instead of dim / conv_dim (the
    LyCORIS extract's modes); `how` then describes it in the report and the training comment."""
    from trainer.networks.checks import verify_lora_file
    from trainer.networks.naming import all_targets

    save_to = _lora_output(save_to, overwrite)
    org_path, tuned_path = check_inputs([model_org, model_tuned], "--model_org/--model_tuned")
    if dim < 1 and rank_rule is None:
        raise ToolError(f"--dim must be ≥ 1, got {dim}")
    if not 0 < clamp_quantile <= 1:
        raise ToolError(f"--clamp_quantile must be in (0, 1], got {clamp_quantile}")
    family = "sdxl" if sdxl else ("sd2" if v2 else None)
    dit = _dit_family(org_path, tuned_path, family)
    if dit is not None:  # FLUX.1 / Chroma / SD3.5: on the original (fused) tensors, as kohya's flux_extract_lora
        from .dit_lora import extract_dit

        if rank_rule is not None:
            raise ToolError(f"the models are {dit}: extract them with the `extract` tool (a fixed --dim), as "
                            "kohya's flux_extract_lora does; the LyCORIS modes cover SD1/SD2/SDXL")

        return extract_dit(org_path, tuned_path, dit, save_to, dim, clamp_quantile, save_precision, device,
                           overwrite, show_progress, conv_dim=conv_dim)
    org, tuned = _load(org_path, family), _load(tuned_path, family)
    if org.family != tuned.family:
        raise ToolError(f"--model_org is {org.family} but --model_tuned is {tuned.family}; extract needs a "
                        "fine-tune and the model it was tuned from")
    convs = bool(conv_dim) or rank_rule is not None  # 3×3 convs: a LoCon
    targets_o = all_targets(org.unet, org.text_encoders, org.family, include_conv_blocks=convs)
    targets_t = {t.lora_name: t for t in all_targets(tuned.unet, tuned.text_encoders, tuned.family, convs)}
    pairs = []
    for t in targets_o:
        if t.is_conv_block and t.is_conv3x3 and not convs:
            continue
        other = targets_t.get(t.lora_name)
        if other is None or other.module.weight.shape != t.module.weight.shape:
            raise ToolError(f"layer {t.path} differs in shape between the two models; --model_tuned must be a "
                            "fine-tune of --model_org")
        pairs.append((t, other))

    # text encoders that did not change are left out (kohya's min_diff)
    max_diff: dict[str, float] = {}
    for t, other in pairs:
        d = float((other.module.weight.float() - t.module.weight.float()).abs().max())
        max_diff[t.part] = max(max_diff.get(t.part, 0.0), d)
    skipped = sorted(p for p, d in max_diff.items() if p != "unet" and d < min_diff)

    out, diff_sq, kept_sq, unchanged = {}, 0.0, 0.0, 0
    for t, other in progress(pairs, "extract", enabled=show_progress):
        if t.part in skipped:
            continue
        delta = other.module.weight.to(device, torch.float32) - t.module.weight.to(device, torch.float32)
        if not bool(delta.abs().max() > 0):
            unchanged += 1
            continue
        rank = (lambda sv, conv=t.is_conv3x3: rank_rule(sv, conv)) if rank_rule else (conv_dim if t.is_conv3x3
                                                                                       else dim)
        out[t.lora_name], total, kept = extract_module(delta, rank, clamp_quantile)
        diff_sq, kept_sq = diff_sq + total, kept_sq + kept
    if not out:
        raise ToolError(f"{tuned_path.name} and {org_path.name} have the same weights in every LoRA-targetable "
                        "layer: there is nothing to extract")
    if rank_rule is not None:  # the file's largest ranks, as sd-scripts reads ss_network_dim
        dim = max((m.rank for m in out.values() if not m.is_conv or m.down.shape[-1] == 1), default=1)
        conv_dim = max((m.rank for m in out.values() if m.is_conv and m.down.shape[-1] > 1), default=None)
    meta = network_metadata(org.family, dim, dim, conv_dim or 0, conv_dim or 0, v_prediction=org.v_prediction)
    meta.update(modelspec_metadata(org.family, save_to.stem, _RESOLUTION[org.family], org.v_prediction))
    meta["ss_sd_model_name"] = org_path.name
    meta["ss_output_name"] = save_to.stem
    how = how or f"dim {dim}, conv_dim {conv_dim or 0}"
    meta["ss_training_comment"] = (f"extracted from {tuned_path.name} minus {org_path.name}, {how}, "
                                   f"clamp_quantile {clamp_quantile}")
    meta["modelspec.date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save_checked_lora(save_to, out, meta, save_precision, overwrite)
    report = verify_lora_file(save_to, org)
    if not report.ok:
        raise ToolError(f"{save_to} was written but does not fit {org_path.name}:\n  " + "\n  ".join(report.problems))
    kept = math.sqrt(kept_sq / diff_sq) if diff_sq else 1.0
    left_out = f" Left out the unchanged {', '.join(skipped)} (largest change < min_diff {min_diff})." if skipped else ""
    text = (f"Extracted {save_to} ({rank_summary(out)}, alpha = rank, {save_precision}; {how}) from {tuned_path.name} "
            f"minus {org_path.name} ({org.family}). It keeps {percent(kept)} of the weight difference's "
            f"Frobenius norm over the {len(out)} extracted layers.{left_out}"
            + (f" {unchanged} layers did not change and have no module." if unchanged else "")
            + " The file passed its self-check and fits the base model.")
    return Report("extract", str(save_to), text, {"fro_kept": kept, "modules": len(out), "skipped": skipped},
                  list(report.warnings))


def extract_module(delta: torch.Tensor, rank: int | Callable[[torch.Tensor], int],
                   clamp_quantile: float) -> tuple[ModuleWeights, float, float]:
    """ΔW cut to `rank` (or the rank a rule picks from its singular values) by SVD (alpha = rank), with the
    squared Frobenius norms of ΔW and of what the module keeps (the report's "keeps N % of the difference")."""
    decomposed = svd(delta)
    if callable(rank):
        rank = rank(decomposed[1])
    f = factorize(delta, rank, clamp_quantile=clamp_quantile, decomposed=decomposed)
    s = decomposed[1]
    return (ModuleWeights(f.module.down.cpu(), f.module.up.cpu(), f.module.alpha), float(s.pow(2).sum()),
            float(s[:f.rank].pow(2).sum()))


_RESOLUTION = {"sd1": "512x512", "sd2": "768x768", "sdxl": "1024x1024"}


def _dit_family(org_path, tuned_path, family: str | None) -> str | None:
    """The DiT family both models are (None: SD1/SD2/SDXL); refuses a DiT paired with anything else."""
    from .dit_checkpoint import LABELS, family_of

    fam_org, fam_tuned = family_of(org_path), family_of(tuned_path)
    if fam_org is None and fam_tuned is None:
        return None
    if fam_org != fam_tuned:
        what = lambda f: LABELS[f] if f else "not FLUX.1/Chroma/SD3.5"  # noqa: E731
        raise ToolError(f"--model_org {org_path.name} is {what(fam_org)} but --model_tuned {tuned_path.name} is "
                        f"{what(fam_tuned)}; extract needs a fine-tune and the model it was tuned from")
    if family is not None:
        raise ToolError(f"--sdxl/--v2 were given but the models are {LABELS[fam_org]}; leave them off")
    return fam_org
