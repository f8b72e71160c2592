"""Hub ids (``org/name``): download the diffusers parts into the Hugging Face cache (with progress bars),
or use the cache offline; when neither works, say what to download and where to put it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.models.checkpoint_io import CheckpointError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Only what training needs: configs, tokenizers and the safetensors weights of each part (not the
# multi-GB single files many repos also carry at the top level, nor safety checker / onnx / flax).
ALLOW = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*",
         "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors", "text_encoder_2/*.safetensors"]
IGNORE = ["*.fp16.safetensors", "*.non_ema.*", "*.ema.*"]


def download_model(repo_id: str, *, cache_dir: str | Path | None = None) -> Path:
    from huggingface_hub import snapshot_download

    if not REPO_ID.match(repo_id):
        raise CheckpointError(f"{repo_id}: no such file or folder, and not a hub id of the form org/name.")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    online_error = None
    if not offline:
        try:  # shows huggingface_hub's progress bars while downloading
            return Path(snapshot_download(repo_id, allow_patterns=ALLOW, ignore_patterns=IGNORE, cache_dir=cache_dir))
        except Exception as exc:  # noqa: BLE001 — no network, unknown or gated repo: try the cache
            online_error = exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW, ignore_patterns=IGNORE, cache_dir=cache_dir,
                                      local_files_only=True))
    except Exception as exc:  # noqa: BLE001 — turned into one actionable message
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = Path(cache_dir) if cache_dir else Path(HF_HUB_CACHE)
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached or refused it ({online_error})"
        raise CheckpointError(
            f"The model '{repo_id}' is not in the Hugging Face cache ({cache}) and {why}. Fix: on a machine "
            f"with internet run `huggingface-cli download {repo_id} --include {' '.join(ALLOW)}` and copy "
            f"{cache}/models--{repo_id.replace('/', '--')} to the same place here, or download the model's single "
            ".safetensors file and set pretrained_model_name_or_path to that file.") from exc
