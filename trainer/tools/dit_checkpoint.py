"""FLUX.1 / Chroma / SD3.5 checkpoints as the LoRA tools see them: the original (BFL / SAI) single-file
layout, read one tensor at a time, and written one tensor at a time.

kohya's LoRA names for these families are the original module paths (``lora_unet_double_blocks_0_img_attn_qkv``
is ``double_blocks.0.img_attn.qkv.weight``, the fused q/k/v), so merging and extracting work directly on the
original tensors: no diffusers model is built (the layer catalog that checks a LoRA's names and shapes comes
from a transformer on the meta device) and at most one weight tensor is in memory besides the LoRAs. A
diffusers folder is converted to the original layout on reading (its transformer is then held once).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from trainer.models.dit import DIT_FAMILIES as _RECORDS, dit_family
from trainer.models.dit_keys import PREFIX as TRANSFORMER_PREFIX  # ComfyUI / SAI files: the transformer under it

from .output import ToolError

DIT_FAMILIES = tuple(_RECORDS)
# parts other than the transformer a single file may bundle (ComfyUI / SAI full checkpoints)
OTHER_PREFIXES = ("text_encoders.", "cond_stage_model.", "first_stage_model.", "vae.", "conditioner.")
LABELS = {name: record.label for name, record in _RECORDS.items()}


def bundled_text_encoders(family: str) -> dict:
    """kohya LoRA prefix → (label, key prefixes) of the text encoders the family's single file may bundle."""
    return dit_family(family).module("loader").BUNDLED_TEXT_ENCODERS


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass
class OriginalCheckpoint:
    """A DiT checkpoint in its original layout: every key's shape and dtype, tensors on demand."""

    family: str
    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, str]
    prefix: str  # the transformer's key prefix ("" or "model.diffusion_model.")
    config: dict  # the diffusers transformer config
    read: Callable[[str], torch.Tensor] = field(repr=False)

    @property
    def label(self) -> str:
        return LABELS[self.family]

    def transformer_keys(self) -> list[str]:
        return [k for k in self.shapes if k.startswith(self.prefix) and not k.startswith(OTHER_PREFIXES)]

    def meta_state(self, keys) -> dict[str, torch.Tensor]:
        """Shape-only (meta) tensors of ``keys``, prefix stripped: what the key maps need, without the weights."""
        return {k[len(self.prefix):]: torch.empty(self.shapes[k], dtype=self.dtypes[k], device="meta") for k in keys}


def family_of(path) -> str | None:
    """The DiT family of a .safetensors file (from its header) or a diffusers folder; None for anything else."""
    from trainer.models.dit import family_from_transformer_config, family_of_file_keys

    p = Path(path).expanduser()
    if p.is_dir():
        cfg = p / "transformer" / "config.json"
        if not cfg.is_file():
            return None
        try:
            return family_from_transformer_config(json.loads(cfg.read_text()), p)
        except ValueError:
            return None
    if p.is_file() and p.suffix.lower() == ".safetensors":
        return family_of_file_keys(_header(p)[0])
    return None


def _header(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            keys = list(fh.keys())
            info = {k: fh.get_slice(k) for k in keys}
            return keys, {k: tuple(s.get_shape()) for k, s in info.items()}, {k: s.get_dtype() for k, s in info.items()}, \
                fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ToolError(f"{path} is not a readable .safetensors file ({exc}); download or copy it again") from exc


def open_checkpoint(path, family: str, what: str) -> OriginalCheckpoint:
    """The checkpoint at ``path`` (single file or diffusers folder) in its original layout."""
    p = Path(path).expanduser()
    ck = _open_folder(p, family, what) if p.is_dir() else _open_file(p, family, what)
    ck.config = ck.config or transformer_config(ck)
    return ck


def _open_file(path: Path, family: str, what: str) -> OriginalCheckpoint:
    from safetensors import safe_open

    keys, shapes, names, metadata = _header(path)
    scaled = [k for k in keys if k.endswith(("scale_weight", "scale_input"))]
    if scaled:
        raise ToolError(f"{what} {path} is a scaled-fp8 checkpoint ({scaled[0]}): its weights only mean something "
                        "with their scales. Use the bf16/fp16 (or plain fp8) file of the model instead")
    unknown = sorted({n for n in names.values() if n not in _ST_DTYPES})
    if unknown:
        raise ToolError(f"{what} {path} holds tensors of type {unknown[0]}, which the LoRA tools cannot read")
    fh = safe_open(path, framework="pt")  # kept open: tensors are read one at a time
    prefix = TRANSFORMER_PREFIX if any(k.startswith(TRANSFORMER_PREFIX) for k in keys) else ""
    return OriginalCheckpoint(family, path, shapes, {k: _ST_DTYPES[n] for k, n in names.items()}, metadata, prefix,
                              {}, fh.get_tensor)


def _open_folder(folder: Path, family: str, what: str) -> OriginalCheckpoint:
    """A diffusers folder's transformer (and SD3's VAE, which SAI's file holds) converted to the original keys."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    files = sorted((folder / "transformer").glob("*.safetensors"))
    if not files:
        raise ToolError(f"{what} {folder}/transformer has no .safetensors weights; save the folder with "
                        "safe_serialization (diffusers' default) or use the single file")
    sd = {}
    for f in files:
        sd.update(load_file(f))
    loader = dit_family(family).module("loader")
    state = {loader.FILE_PREFIX + k: v for k, v in to_original(family, sd, cfg).items()}
    state.update(loader.folder_extras(folder))  # what the family's single file holds beside the transformer
    return OriginalCheckpoint(family, folder, {k: tuple(v.shape) for k, v in state.items()},
                              {k: v.dtype for k, v in state.items()},
                              {"modelspec.architecture": loader.modelspec_architecture(cfg)}, loader.FILE_PREFIX, cfg,
                              state.__getitem__)


def to_original(family: str, sd: dict, cfg: dict) -> dict:
    return dit_family(family).module("keys").to_original(sd, cfg)


def to_diffusers(family: str, sd: dict, cfg: dict) -> dict:
    return dit_family(family).module("keys").to_diffusers(sd, cfg)


def transformer_config(ck: OriginalCheckpoint) -> dict:
    """The diffusers config of a single file's transformer, as the family's loader derives it (from shapes)."""
    from trainer.models.checkpoint_io import CheckpointError

    try:
        return dit_family(ck.family).module("loader").original_transformer_config(ck.meta_state(ck.transformer_keys()))
    except (CheckpointError, KeyError) as exc:
        raise ToolError(f"{ck.path}: its {ck.label} transformer is not one the studio knows ({exc})") from exc


def empty_transformer(ck: OriginalCheckpoint):
    """The diffusers transformer of ``ck`` on the meta device (no memory): the layer catalog and the load check."""
    import diffusers
    from accelerate import init_empty_weights

    cls = getattr(diffusers, dit_family(ck.family).transformer_class)
    with init_empty_weights():
        return cls.from_config(ck.config)


def transformer_catalog(ck: OriginalCheckpoint):
    """kohya's LoRA targets of the transformer (fused layers as one target, as kohya names them)."""
    from trainer.networks.naming import all_targets

    return all_targets(empty_transformer(ck), [], ck.family)


def transformer_keys_by_name(ck: OriginalCheckpoint, catalog) -> dict[str, str]:
    """kohya module name → the original tensor key it changes (``lora_unet_single_blocks_0_linear1`` →
    ``single_blocks.0.linear1.weight``). Every catalog target must have one."""
    from trainer.networks.naming import kohya_name

    wanted = {t.lora_name for t in catalog}
    out = {}
    for key in ck.transformer_keys():
        path = key[len(ck.prefix):]
        if path.endswith(".weight") and len(ck.shapes[key]) == 2:
            name = kohya_name("lora_unet", path[:-len(".weight")])
            if name in wanted:
                out[name] = key
    missing = sorted(wanted - set(out))
    if missing:
        raise ToolError(f"{ck.path} lacks the weight of {missing[0]} (and {len(missing) - 1} more): the file is not a "
                        f"whole {ck.label} transformer")
    return out


def text_encoder_keys_by_name(ck: OriginalCheckpoint) -> dict[str, dict[str, str]]:
    """For each text encoder the file bundles (kohya prefix lora_te1/2/3): module name → tensor key."""
    from trainer.networks.naming import canonical_te_path, kohya_name

    out: dict[str, dict[str, str]] = {}
    for lora_prefix, (_, prefixes) in bundled_text_encoders(ck.family).items():
        for p in prefixes:
            keys = [k for k in ck.shapes if k.startswith(p)]
            if not keys:
                continue
            names = {}
            for key in keys:
                path = key[len(p):]
                if not (path.endswith(".weight") and len(ck.shapes[key]) == 2):
                    continue
                path = path[:-len(".weight")]
                if lora_prefix != "lora_te3":  # CLIP: kohya names say text_model.encoder… whatever the wrapper
                    path = canonical_te_path(path)
                names[kohya_name(lora_prefix, path)] = key
            out[lora_prefix] = names
            break
    return out


def check_loads(ck: OriginalCheckpoint, path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """The written file's transformer maps onto the family's diffusers transformer key for key, shape for shape —
    what the repo's loader does with it (run on shapes only)."""
    tr = empty_transformer(ck)
    sd = {k[len(ck.prefix):]: torch.empty(s, device="meta") for k, s in shapes.items()
          if k.startswith(ck.prefix) and not k.startswith(OTHER_PREFIXES)}
    got = {k: tuple(v.shape) for k, v in to_diffusers(ck.family, sd, ck.config).items()}
    want = {k: tuple(v.shape) for k, v in tr.state_dict().items()}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        raise ToolError(f"{path} was written but its {ck.label} transformer does not load (e.g. {diff[:3]}); "
                        "the file is not usable, delete it and report this")


def write_safetensors(path: Path, keys: list[str], shapes: dict, dtypes: dict, tensor_of: Callable[[str], torch.Tensor],
                      metadata: dict[str, str], show_progress: bool = True) -> None:
    """Write a .safetensors file atomically, one tensor at a time (safetensors' own writer holds a second copy
    of everything while it serialises — 24 GB more for FLUX.1 in bf16)."""
    from trainer.atomic import atomic_path

    from .output import progress

    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset = 0
    for k in keys:
        size = math.prod(shapes[k]) * torch.empty((), dtype=dtypes[k]).element_size()
        header[k] = {"dtype": _ST_NAMES[dtypes[k]], "shape": list(shapes[k]), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for k in progress(keys, "write", enabled=show_progress):
            t = tensor_of(k)
            if tuple(t.shape) != tuple(shapes[k]) or t.dtype != dtypes[k]:
                raise RuntimeError(f"{k}: {tuple(t.shape)} {t.dtype}, planned {shapes[k]} {dtypes[k]}")
            fh.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
