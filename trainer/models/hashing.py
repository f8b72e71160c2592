"""Model hashes as sd-scripts / A1111 / sd-webui-additional-networks compute them.

* ``sshs_model_hash`` / ``sshs_legacy_hash`` (written into LoRA metadata): computed over the bytes
  ``safetensors.torch.save(tensors, metadata)`` would produce, keeping only the ``ss_*`` metadata,
  so that editing user metadata (titles, tags) later does not change the hash.
  model hash = sha256 of everything after the header; legacy = first 8 hex of sha256 of the 64 KiB at
  offset 1 MiB.
* ``legacy_file_hash``: A1111's old 8-hex checkpoint hash (``ss_sd_model_hash``) over the file.
* ``file_sha256``: full-file sha256 (``ss_new_sd_model_hash``, A1111's new hash).
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

BLOCK = 1024 * 1024


def addnet_hash_safetensors(fh: BinaryIO) -> str:
    fh.seek(0)
    header_len = int.from_bytes(fh.read(8), "little")
    fh.seek(8 + header_len)
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(BLOCK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def addnet_hash_legacy(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    fh.seek(0x100000)
    digest.update(fh.read(0x10000))
    return digest.hexdigest()[:8]


def precalculate_safetensors_hashes(tensors: dict, metadata: dict | None = None) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` for tensors about to be saved with ``metadata``."""
    import safetensors.torch

    kept = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    buf = BytesIO(safetensors.torch.save(tensors, kept))
    return addnet_hash_safetensors(buf), addnet_hash_legacy(buf)


def legacy_file_hash(path: Path) -> str:
    with open(path, "rb") as fh:
        return addnet_hash_legacy(fh)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()
