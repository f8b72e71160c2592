"""sd-scripts' --base_weights: LoRA files merged into the loaded base model before a new LoRA is trained on it.

As train_network.py does (create_network_from_weights(...).merge_to for each file, at its multiplier), with this
package's own merges: a kohya LoRA / LoCon through the network's `merge_to` (W += m · alpha/rank · up @ down,
FLUX.1 / SD3's fused layers included), a LyCORIS file module by module through LyCORIS' loader and the weight
change its forward computes, as `lora merge-lycoris` bakes one. Every file is first checked against the base
(`canonical_state_dict`): one for another model family or layout is refused, naming the file. The files are
only read.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from .files import LoRAFileError, read_lora_file
from .lycoris_checks import is_plain_lora
from .naming import all_targets, resolve_base, split_key
from .network import canonical_state_dict, create_network_from_weights


def merge_base_weights(base, files: Sequence[tuple[str, float]], device: str = "cpu") -> list[str]:
    """Merge each (path, multiplier) into `base` in order; one line per file saying what changed."""
    # building a module draws its random init: the run's seeded stream (LoRA init, noise) must not move
    with torch.random.fork_rng(devices=[]):
        return [merge_file(base, path, multiplier, device) for path, multiplier in files]


@torch.no_grad()
def merge_file(base, path, multiplier: float, device: str = "cpu") -> str:
    unet, text_encoders, family = resolve_base(base)
    state, metadata = read_lora_file(path)
    catalog = all_targets(unet, text_encoders, family, include_conv_blocks=True)
    state = canonical_state_dict(state, metadata, catalog, family, str(path))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, suffix = split_key(key)
        modules.setdefault(name, {})[suffix] = value
    name = f"{Path(path).name} × {multiplier:g}"
    if all(is_plain_lora(set(t)) for t in modules.values()):
        create_network_from_weights(path, base, multiplier=multiplier).merge_to()
        return f"{name}: {len(modules)} LoRA modules merged into the {family} base"
    from trainer.tools.merge_lycoris import merge_module_into  # LyCORIS is imported only for its files

    layers = {t.lora_name: t.module for t in catalog}
    adapters: Counter = Counter()
    for module, tensors in sorted(modules.items()):
        try:
            adapters[merge_module_into(module, tensors, layers[module], multiplier, device)] += 1
        except (ValueError, RuntimeError) as exc:
            raise LoRAFileError(f"{path}: module {module} cannot be merged into the base ({exc})") from exc
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(adapters.items()))
    return f"{name}: {kinds} modules merged into the {family} base"
