"""Loading does not copy weights needlessly; hashes match what sd-scripts writes into LoRA metadata."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.models import load_base_model
from trainer.models.hashing import (addnet_hash_legacy, addnet_hash_safetensors, file_sha256, legacy_file_hash,
                                    precalculate_safetensors_hashes)


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_loading_at_the_files_dtype_uses_the_mapped_file_without_copies(tiny_model_dir):
    """The U-Net parameters are the memory-mapped tensors of the .safetensors file itself."""
    path = tiny_model_dir("sd1")  # written in fp32
    base = load_base_model(path, dtype=torch.float32)
    ranges = _mapped_ranges(path.resolve())
    assert ranges, "the checkpoint should be memory-mapped while its tensors are in use"
    params = list(base.unet.parameters())
    inside = [p for p in params if any(a <= p.data_ptr() < b for a, b in ranges)]
    assert len(inside) == len(params)


def test_sshs_hashes_equal_the_hash_of_the_written_file(tmp_path):
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(600000, dtype=torch.float32).reshape(1000, 600)}
    metadata = {"ss_network_dim": "4", "modelspec.title": "edited later"}
    model_hash, legacy = precalculate_safetensors_hashes(tensors, metadata)
    out = tmp_path / "lora.safetensors"
    save_file(tensors, out, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    with open(out, "rb") as fh:
        assert addnet_hash_safetensors(fh) == model_hash and addnet_hash_legacy(fh) == legacy
    assert legacy_file_hash(out) == legacy and len(legacy) == 8
    # user metadata does not change the model hash; tensor bytes do
    assert precalculate_safetensors_hashes(tensors, {"ss_network_dim": "4"})[0] == model_hash
    assert precalculate_safetensors_hashes({k: v + 1 for k, v in tensors.items()}, metadata)[0] != model_hash
    assert len(file_sha256(out)) == 64
