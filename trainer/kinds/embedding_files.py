"""Textual-inversion embedding files, as each client reads them (captioning_and_formats.md B4).

    kohya  SD1/SD2  {"emb_params": Tensor[n_vectors, dim]}           .safetensors or .pt
    a1111  SD1/SD2  {"string_to_token": {"*": 265}, "string_to_param": {"*": Tensor[n, dim]},
                     "name", "step", "sd_checkpoint", "sd_checkpoint_name"}  torch pickle (.pt)
    SDXL   (both)   {"clip_l": Tensor[n, 768], "clip_g": Tensor[n, 1280]}  the only SDXL layout
                     A1111/ComfyUI read; extra keys would break A1111's SDXL branch, so the name
                     and step go into the safetensors header instead.

Reading accepts all of these plus diffusers' single-key ``learned_embeds`` files.
"""
from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.atomic import atomic_write_bytes

from .base import KindError

A1111_TOKEN_ID = 265  # what A1111 writes in string_to_token: the id of "*" in CLIP's vocabulary
SDXL_KEYS = ("clip_l", "clip_g")
_MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                   "sdxl": "stable-diffusion-xl-v1-base"}


@dataclass
class Embedding:
    """Vectors per text encoder, in text-encoder order (SD1/SD2: one; SDXL: clip_l, clip_g)."""

    vectors: list[torch.Tensor]
    name: str = ""
    step: int | None = None

    @property
    def num_vectors(self) -> int:
        return int(self.vectors[0].shape[0])


def write_embedding(path: Path, emb: Embedding, *, family: str, fmt: str = "kohya",
                    dtype: torch.dtype = torch.float32, sd_checkpoint: str | None = None,
                    sd_checkpoint_name: str | None = None, metadata: dict | None = None,
                    v_prediction: bool = False) -> Path:
    """Write ``emb`` atomically as ``path`` (.safetensors, .pt or .ckpt) in format ``fmt``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".ckpt", ".bin"):
        raise KindError(f"{path}: embeddings are saved as .safetensors or .pt")
    vectors = [v.detach().to("cpu", dtype).contiguous().clone() for v in emb.vectors]
    if family == "sdxl":
        if len(vectors) != 2:
            raise KindError("an SDXL embedding needs vectors for both text encoders (clip_l and clip_g)")
        tensors = dict(zip(SDXL_KEYS, vectors))
        payload: dict = dict(tensors)
    elif fmt == "a1111":
        if suffix == ".safetensors":
            raise KindError(f"{path}: the A1111 embedding layout (string_to_param, name, step) only exists as a "
                            "torch pickle; save as .pt, or choose embedding_format kohya for .safetensors")
        tensors = {}
        payload = {"string_to_token": {"*": A1111_TOKEN_ID}, "string_to_param": {"*": vectors[0]},
                   "name": emb.name, "step": int(emb.step or 0), "sd_checkpoint": sd_checkpoint,
                   "sd_checkpoint_name": sd_checkpoint_name}
    elif fmt == "kohya":
        tensors = {"emb_params": vectors[0]}
        payload = dict(tensors)
    else:
        raise KindError(f"embedding_format must be kohya or a1111, got {fmt!r}")
    if suffix == ".safetensors":
        import safetensors.torch

        header = embedding_metadata(emb, family, v_prediction)
        header.update({str(k): str(v) for k, v in (metadata or {}).items()})
        data = safetensors.torch.save(tensors, header)
    else:
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return path


def embedding_metadata(emb: Embedding, family: str, v_prediction: bool = False) -> dict[str, str]:
    """SAI model-spec keys as sd-scripts writes them for an embedding, plus its name and step."""
    arch = _MODELSPEC_ARCH[family]
    if family == "sd2" and v_prediction:
        arch = "stable-diffusion-v2-768-v"
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{arch}/textual-inversion",
            "modelspec.implementation": "diffusers", "modelspec.title": emb.name,
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"), "ss_token_string": emb.name,
            "ss_num_vectors_per_token": str(emb.num_vectors)}
    if emb.step is not None:
        meta["ss_steps"] = str(emb.step)
    return meta


def read_embedding(path: Path, num_text_encoders: int | None = None) -> Embedding:
    """Any known embedding file -> ``Embedding`` (vectors as float32, 2-D)."""
    path = Path(path)
    if not path.is_file():
        raise KindError(f"embedding file {path} does not exist; choose an existing .safetensors/.pt file")
    data, header = _load(path)
    name = header.get("ss_token_string") or (data.get("name") if isinstance(data.get("name"), str) else "")
    step = data.get("step") if isinstance(data.get("step"), int) else None
    if step is None and header.get("ss_steps", "").isdigit():
        step = int(header["ss_steps"])
    if all(k in data for k in SDXL_KEYS):
        vectors = [data[k] for k in SDXL_KEYS]
    elif "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if len(params) != 1:
            raise KindError(f"{path} holds {len(params)} embeddings in string_to_param; only single-term files "
                            "can be resumed")
        vectors = [next(iter(params.values()))]
    else:
        found = [(k, v) for k, v in data.items() if isinstance(v, torch.Tensor)]
        if len(found) != 1:
            raise KindError(f"{path} is not a textual-inversion embedding (expected emb_params, string_to_param, "
                            f"clip_l+clip_g or one tensor; found keys {sorted(data)[:8]})")
        vectors = [found[0][1]]
    vectors = [(v.unsqueeze(0) if v.ndim == 1 else v).detach().float() for v in vectors]
    if num_text_encoders is not None and len(vectors) != num_text_encoders:
        what = "SDXL (clip_l + clip_g)" if len(vectors) == 2 else "SD1.x/SD2.x (one text encoder)"
        raise KindError(f"{path} is an {what} embedding, but the base model has {num_text_encoders} text "
                        "encoder(s); use an embedding trained for this model family")
    return Embedding(vectors, name or path.stem, step)


def _load(path: Path) -> tuple[dict, dict[str, str]]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
        except Exception as exc:
            raise KindError(f"{path} is not a readable .safetensors file ({exc}); copy it again") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise KindError(f"{path} was refused: loading its pickle would run code. Convert it to .safetensors "
                        "with a tool you trust") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise KindError(f"{path} is not a readable embedding file ({exc}); copy it again") from exc
    if isinstance(data, torch.Tensor):
        data = {"": data}
    if not isinstance(data, dict):
        raise KindError(f"{path} holds a {type(data).__name__}, not an embedding dict")
    return data, {}
