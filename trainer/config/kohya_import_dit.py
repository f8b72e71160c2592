"""Kohya_ss JSON keys of the DiT families (FLUX.1, SD3) that need more than passing through.

Most FLUX keys keep kohya's names here (clip_l, t5xxl, ae, guidance_scale, timestep_sampling …) and are
imported as they are; this maps the rest before the general import runs:
* ``LoRA_type`` "Flux1" is kohya's plain FLUX LoRA (networks.lora_flux) = our "Standard" on a FLUX base;
* ``flux1_/sd3_cache_text_encoder_outputs[_to_disk]`` → ``cache_text_encoder_outputs[_to_disk]``;
* ``flux_fused_backward_pass`` / ``sd3_fused_backward_pass`` (kohya_ss's per-family checkboxes) →
  ``fused_backward_pass`` for the ticked family, as kohya_ss routes them to the script;
* ``LoRA_type`` "Flux1 OFT" (networks.oft_flux) keeps its name; kohya_ss passes it only ``enable_all_linear`` (an
  option here too): its constraint is ``network_alpha``, so ``constrain``/``rescaled`` (LyCORIS OFT's) are dropped;
* SD3's ``training_shift`` (sd-scripts' default 1.0 when absent) becomes ``discrete_flow_shift``, which shifts
  the SD3 schedule here;
* ``cpu_offload_checkpointing`` turns ``gradient_checkpointing`` on, as sd-scripts' flux_train does;
* settings with no counterpart yet are named in a note when they would change the run.
"""
from __future__ import annotations

from typing import Any

# families whose kohya_ss checkbox this build trains (the import's refusal list must not name them)
SUPPORTED_FAMILY_FLAGS = ("flux1_checkbox", "sd3_checkbox")
LORA_TYPES = {"Flux1": "Standard"}
RENAMED = {"flux1_cache_text_encoder_outputs": "cache_text_encoder_outputs",
           "sd3_cache_text_encoder_outputs": "cache_text_encoder_outputs",
           "flux1_cache_text_encoder_outputs_to_disk": "cache_text_encoder_outputs_to_disk",
           "sd3_cache_text_encoder_outputs_to_disk": "cache_text_encoder_outputs_to_disk"}
NOT_YET = ("split_mode", "split_qkv", "train_lora_ggpo", "single_blocks_to_swap", "double_blocks_to_swap")
FUSED_BACKWARD_KEYS = {"flux1_checkbox": "flux_fused_backward_pass", "sd3_checkbox": "sd3_fused_backward_pass"}


def prepare_dit_keys(data: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """A copy of a kohya_ss JSON with the FLUX keys in this schema's terms (others untouched)."""
    flags = [f for f in SUPPORTED_FAMILY_FLAGS if str(data.get(f, "")).lower() == "true"]
    lora_type = data.get("LoRA_type") if isinstance(data.get("LoRA_type"), str) else None
    if not flags and lora_type not in LORA_TYPES and lora_type != "Flux1 OFT":
        return data
    out = dict(data)
    if lora_type == "Flux1 OFT":
        _oft_keys(out, notes)
    if lora_type in LORA_TYPES:
        out["LoRA_type"] = LORA_TYPES[lora_type]
        notes.append(f"LoRA_type {data['LoRA_type']!r} is kohya's FLUX.1 LoRA: trained as Standard on the FLUX.1 "
                     "base (same kohya FLUX key names in the file)")
    for src, dst in RENAMED.items():
        if src in out:
            value = out.pop(src)
            if value not in (None, "") and dst not in data:
                out[dst] = value
    for flag, key in FUSED_BACKWARD_KEYS.items():
        value = out.pop(key, None)
        if flag in flags and value not in (None, ""):
            out["fused_backward_pass"] = value
    if _true(out.get("cpu_offload_checkpointing")) and not _true(out.get("gradient_checkpointing")):
        out["gradient_checkpointing"] = True
        notes.append("cpu_offload_checkpointing is on, so gradient_checkpointing is on too (as sd-scripts does)")
    if "sd3_checkbox" in flags:
        _sd3_shift(out, notes)
    for key in ("sd3_text_encoder_batch_size",):
        out.pop(key, None)
    if str(out.get("model_type", "")).lower() not in ("flux", "chroma"):
        out.pop("model_type", None)  # kohya_ss writes "" when the dropdown was never touched (= flux)
    elif str(out.get("model_type", "")).lower() == "chroma":  # kohya_ss: flux1_checkbox + model_type chroma
        out["model_type"] = "chroma"
        if str(out.get("clip_l", "")).strip():
            notes.append(f"clip_l {out['clip_l']!r} was left out: Chroma has no CLIP-L text encoder")
            out["clip_l"] = ""
    for key in NOT_YET:
        value = out.pop(key, None)
        if value not in (None, "", False, 0, "0", "false", "False"):
            notes.append(f"{key}={value!r} is not available for FLUX.1 here yet and was left out")
    return out


def _oft_keys(out: dict[str, Any], notes: list[str]) -> None:
    """kohya_ss runs Flux1 OFT with network_alpha as the constraint: its LyCORIS OFT fields do not reach it."""
    for key in ("constrain", "rescaled"):
        value = out.pop(key, None)
        if value not in (None, "", False, 0, 0.0, "0", "false", "False"):
            notes.append(f"{key}={value!r} is LyCORIS OFT's; kohya_ss does not pass it to networks.oft_flux (Flux1 "
                         f"OFT), whose constraint is network_alpha ({out.get('network_alpha', 1)}): left out")


def _sd3_shift(out: dict[str, Any], notes: list[str]) -> None:
    """sd3_train*.py shift the schedule by --training_shift (default 1.0) and never read discrete_flow_shift
    (FLUX.1's), which is what shifts it here: the run kohya_ss made gets training_shift."""
    given = [out.pop(k) for k in ("training_shift", "sd3_training_shift") if out.get(k) not in (None, "")]
    stray = out.pop("discrete_flow_shift", None)
    try:
        shift = float(given[0]) if given else 1.0
    except (TypeError, ValueError):
        shift = 1.0
    out["discrete_flow_shift"] = shift
    if not given:
        notes.append("SD3: sd-scripts shifted the training schedule by its --training_shift default 1.0"
                     + (f" (the file's discrete_flow_shift {stray} is FLUX.1's and was not read)" if stray not in
                        (None, "") else "") + ", so discrete_flow_shift is 1.0; SD3.5's own sampler uses 3.0")


def _true(value: Any) -> bool:
    return str(value).lower() in ("true", "1")
