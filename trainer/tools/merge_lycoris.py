"""Bake a LyCORIS file into a checkpoint (kohya_ss' tools/merge_lycoris.py arguments).

Each module of the file is rebuilt by LyCORIS' own loader (`lycoris.modules.get_module` /
`make_module`, what `lycoris.utils.merge` and `create_lycoris_from_weights` use) on its layer of the
base model, and its weight change times `weight` is added to that layer — LoHa, LoKr, LoCon, DoRA,
iA3, full diff, GLoRA, (B)OFT alike. LoCon/LoHa/LoKr/DoRA/iA3 add ΔW as LyCORIS' forward computes it
(trainer.networks.fused_lycoris.merge_module): lycoris-lora 4.1.3's merge_to applies alpha/rank twice
to LoHa/LoKr, while its forward, A1111 and ComfyUI apply it once. The model is saved as a single file
or a diffusers folder (no suffix), atomically, then loaded back and compared layer by layer.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Mapping

import torch

from .merge import SAVE_DTYPES, all_targets_of, check_saved_model, save_model
from .output import Report, ToolError, check_inputs, check_output, progress

# kohya_ss' merge_lycoris.py --dtype names beside the other tools' precision names
MODEL_DTYPES = {**SAVE_DTYPES, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def merge_lycoris(base_model, lycoris_model, output_name, weight: float = 1.0, dtype: str = "float",
                  device: str = "cpu", is_sdxl: bool = False, is_v2: bool = False, overwrite: bool = False,
                  show_progress: bool = True) -> Report:
    from trainer.models import load_base_model
    from trainer.networks.files import read_lora_file
    from trainer.networks.network import canonical_state_dict

    (lyco_path,) = check_inputs([lycoris_model], "lycoris_model")
    if dtype not in MODEL_DTYPES:
        raise ToolError(f"--dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    if is_sdxl and is_v2:
        raise ToolError("--is_sdxl and --is_v2 both given; an SDXL model is not SD2, pass one of them")
    out_path = check_output(output_name, overwrite, "output_name")
    state, metadata = read_lora_file(lyco_path)
    require_lycoris(lyco_path, by_module(state), metadata)
    base = load_base_model(base_model, family="sdxl" if is_sdxl else "sd2" if is_v2 else None)
    catalog = all_targets_of(base)
    # a file for another family or layout is refused here, naming the file and the base's family
    state = canonical_state_dict(state, metadata, catalog, base.family, str(lyco_path))
    layers = {t.lora_name: t.module for t in catalog}
    modules = by_module(state)
    adapters: Counter = Counter()
    for name, tensors in progress(sorted(modules.items()), f"merge {lyco_path.name}", enabled=show_progress):
        adapters[merge_module_into(name, tensors, layers[name], weight, device)] += 1
    save_model(base, out_path, MODEL_DTYPES[dtype], overwrite)
    check_saved_model(out_path, base, catalog, MODEL_DTYPES[dtype])
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(adapters.items()))
    layout = "diffusers folder" if out_path.suffix == "" else "single file"
    text = (f"Merged {lyco_path.name}×{weight:g} ({kinds} modules) into {Path(str(base_model)).name} "
            f"({base.family}): {len(modules)} layers changed by the weight change LyCORIS' modules compute. Saved "
            f"{out_path} as a {layout} at {dtype}; it was loaded back and its layers match the merge.")
    return Report("merge-lycoris", str(out_path), text,
                  {"layers_changed": len(modules), "family": base.family, "adapters": dict(adapters)})


def by_module(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    from trainer.networks.naming import split_key

    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, suffix = split_key(key)
        out.setdefault(name, {})[suffix] = value
    return out


def require_lycoris(path: Path, modules: Mapping[str, Mapping], metadata: Mapping[str, str]) -> None:
    """A LyCORIS file has a LyCORIS tensor (hada_, lokr_, dora_scale, …) or says it was trained by LyCORIS
    (a LyCORIS LoCon has kohya's lora_down/lora_up keys); a plain kohya LoRA belongs to `merge`."""
    from trainer.networks.lycoris_checks import is_plain_lora

    if not modules:
        raise ToolError(f"--lycoris_model {path}: no modules in the file; is it a LoRA/LyCORIS file?")
    if any(not is_plain_lora(set(t)) for t in modules.values()):
        return
    network = metadata.get("ss_network_module", "")
    if network.startswith("lycoris"):
        return
    said = f"ss_network_module {network!r}" if network else "no LyCORIS metadata"
    raise ToolError(f"--lycoris_model {path} is a plain kohya LoRA/LoCon (lora_down/lora_up keys, {said}), not a "
                    f"LyCORIS file; merge it into the checkpoint with `python -m trainer lora merge --sd_model "
                    f"BASE --models {path} --save_to OUT`.")


@torch.no_grad()
def merge_module_into(name: str, tensors: Mapping[str, torch.Tensor], layer: torch.nn.Module, weight: float,
                      device: str) -> str:
    """Rebuild the module with LyCORIS' loader on `layer` and add its ΔW × weight; returns its adapter type."""
    from trainer.networks.fused_lycoris import merge_module
    from trainer.networks.lycoris_checks import adapter_of

    adapter = adapter_of(set(tensors)) or "LoRA"
    module = rebuild_module(name, tensors, layer).to(device)
    merge_module(module, float(weight))
    return adapter


def rebuild_module(name: str, tensors: Mapping[str, torch.Tensor], layer: torch.nn.Module) -> torch.nn.Module:
    """LyCORIS' module for one file module on its layer (its iA3 loader is broken in 4.1.3: see make_ia3)."""
    from lycoris.modules import get_module, make_module

    from trainer.networks.fused_lora import LinearGroup
    from trainer.networks.fused_lycoris import FusedWeightView
    from trainer.networks.lycoris_checks import adapter_of, make_ia3

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    if isinstance(layer, LinearGroup):  # a fused DiT layer (FLUX.1 qkv): the module sees the whole layer
        layer = FusedWeightView(layer)
        logging.getLogger("LyCORIS").setLevel(logging.ERROR)  # its bypass warning for a Linear subclass: none runs
    if adapter_of(set(tensors)) == "iA3":
        return make_ia3(name, layer, tensors)
    state = {f"{name}.{k}": (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    kind, params = get_module(state, name)
    module = make_module(kind, params, name, layer) if kind is not None else None
    if module is None:
        raise ToolError(f"{name}: LyCORIS cannot rebuild this module ({', '.join(sorted(tensors))}); "
                        "the file is damaged or of a type lycoris-lora does not merge")
    return module
