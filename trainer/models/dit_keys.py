"""What the DiT families' key converters (flux_keys, sd3_keys, chroma_keys) share."""
from __future__ import annotations

from trainer.families import UNET

PREFIX = UNET  # ComfyUI full checkpoints (and SAI's SD3 files) put the transformer under this prefix


def strip_prefix(state_dict: dict) -> dict:
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in state_dict.items()}


def own_parts(fused, sizes: list[int]) -> list:
    """A fused tensor (qkv, q+mlp …) split along dim 0 into parts that each own their memory: views of one
    tensor share a version counter, so updating one in place (fused_backward_pass) would invalidate the others."""
    return [part.clone() for part in fused.split(sizes, 0)]
