"""Show a LoRA file: metadata, modules per part, ranks, alphas, base family and hashes (what
kohya's show_metadata.py prints, made readable). Needs no base model."""
from __future__ import annotations

import json
from collections import Counter
from trainer.models.hashing import addnet_hash_safetensors, file_sha256, legacy_file_hash
from trainer.networks.naming import names_by_part

from .lora_io import file_family, rank_summary, read_modules
from .output import Report, check_inputs

PART_NAMES = {"te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2", "unet": "U-Net"}


def show_lora(model) -> Report:
    (path,) = check_inputs([model], "--model")
    modules, meta = read_modules(path)
    family = file_family(modules, meta) or "unknown"
    parts = names_by_part(modules)
    alphas = Counter(m.alpha for m in modules.values())
    conv = sum(1 for m in modules.values() if m.is_conv and m.down.shape[-1] > 1)
    dtypes = Counter(str(m.up.dtype).replace("torch.", "") for m in modules.values())
    hashes = {"sha256": file_sha256(path), "legacy_hash": legacy_file_hash(path)}
    stored = meta.get("sshs_model_hash")
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as fh:
            actual = addnet_hash_safetensors(fh)
        hashes["sshs_model_hash"] = actual
        hashes["sshs_model_hash_stored"] = stored
        hashes["sshs_model_hash_matches"] = stored == actual if stored else None
    kind = "LoCon" if conv else "LoRA"
    part_text = ", ".join(f"{PART_NAMES.get(k, k)} {v}" for k, v in sorted(parts.items()))
    alpha_text = ", ".join(f"{a:g}" for a in sorted(alphas))
    hash_note = ""
    if stored and hashes.get("sshs_model_hash_matches") is False:
        hash_note = (" Its stored sshs_model_hash is stale (another tool changed the file after hashing); "
                     "the tensors are what count.")
    text = (f"{path.name}: a kohya {kind} for {family} with {len(modules)} modules ({part_text}), "
            f"{rank_summary(modules)}, alpha {alpha_text}, stored as {', '.join(dtypes)}; "
            f"{len(meta)} metadata keys (trained from {meta.get('ss_sd_model_name', 'unknown')}, "
            f"{meta.get('ss_steps', '?')} steps); sha256 {hashes['sha256'][:12]}…, "
            f"legacy hash {hashes['legacy_hash']}.{hash_note}")
    details = {"family": family, "modules": len(modules), "modules_by_part": parts,
               "ranks": dict(Counter(m.rank for m in modules.values())), "alphas": {f"{a:g}": n for a, n in alphas.items()},
               "conv_modules": conv, "dtypes": dict(dtypes), "hashes": hashes, "metadata": decoded(meta)}
    return Report("show", str(path), text, details)


def decoded(meta: dict[str, str]) -> dict:
    """Metadata with its JSON values (tag frequency, buckets, dataset dirs) decoded for reading."""
    out = {}
    for k in sorted(meta):
        v = meta[k]
        if isinstance(v, str) and v[:1] in "{[":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def metadata_text(details: dict) -> str:
    """The metadata as `key: value` lines, JSON values indented (the CLI's long form)."""
    lines = []
    for k, v in details["metadata"].items():
        if isinstance(v, (dict, list)):
            lines.append(f"{k}:\n" + "\n".join("    " + ln for ln in json.dumps(v, indent=2, ensure_ascii=False).splitlines()))
        else:
            lines.append(f"{k}: {v}")
    return "\n".join(lines)

