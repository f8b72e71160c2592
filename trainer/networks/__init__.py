"""LoRA / LoCon networks in kohya's format: modules, key names, save/load/merge, metadata, self-check."""

from .files import LoRAFileError, network_metadata, read_lora_file, save_lora_file
from .lora_module import LoRAModule
from .network import LoadResult, LoRANetwork, create_network, create_network_from_weights, resolve_base
from .checks import VerifyReport, verify_lora_file

__all__ = [
    "LoRAFileError", "LoRAModule", "LoRANetwork", "LoadResult", "VerifyReport", "create_network",
    "create_network_from_weights", "network_metadata", "read_lora_file", "resolve_base",
    "save_lora_file", "verify_lora_file",
]
