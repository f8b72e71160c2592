"""Networks in kohya's file format: LoRA / LoCon / DyLoRA modules and the LyCORIS types, key names,
save/load/merge, metadata, self-check. `registry` says which LoRA_type builds which network.

Names are imported lazily so that `trainer.networks.registry` (read by the config schema and the GUI)
does not pull in torch.
"""
from importlib import import_module

_EXPORTS = {
    "LoRAFileError": "files", "network_metadata": "files", "read_lora_file": "files", "save_lora_file": "files",
    "LoRAModule": "lora_module",
    "LoadResult": "network", "LoRANetwork": "network", "create_network": "network",
    "create_network_from_weights": "network", "resolve_base": "naming",
    "VerifyReport": "checks", "verify_lora_file": "checks",
    "LycorisNetwork": "lycoris_net", "create_lycoris_network": "lycoris_net",
    "DyLoRAModule": "dylora",
    "build_network": "registry", "NETWORK_TYPES": "registry", "LORA_TYPES": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainer.networks' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
