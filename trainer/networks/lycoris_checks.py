"""Self-check of LyCORIS modules in a kohya-layout file (LoHa, LoKr, iA3, DoRA, GLoRA, (B)OFT, full).

Each module's tensor names must form one adapter that A1111 and ComfyUI recognise (the sets below,
from their loaders), and LyCORIS' own loader must rebuild it on the base layer with a ΔW of that
layer's shape — the same code path `create_lycoris_from_weights` takes, so a file that passes here
loads there.
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch

# adapter → (tensors it must have, tensors it may have); A1111 networks/*, ComfyUI weight_adapter/*
ADAPTERS: dict[str, tuple[frozenset, frozenset]] = {
    "LoRA": (frozenset({"lora_down.weight", "lora_up.weight"}), frozenset({"alpha", "lora_mid.weight", "dora_scale"})),
    "LoHa": (frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}),
             frozenset({"alpha", "hada_t1", "hada_t2", "dora_scale"})),
    "LoKr": (frozenset(), frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
                                     "lokr_t2", "alpha", "dora_scale"})),
    "iA3": (frozenset({"weight"}), frozenset({"on_input"})),
    "GLoRA": (frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"}), frozenset({"alpha"})),
    "OFT": (frozenset({"oft_blocks"}), frozenset({"alpha", "rescale"})),
    "full": (frozenset({"diff"}), frozenset({"diff_b"})),
}


def adapter_of(suffixes: set[str]) -> str | None:
    """Which adapter a module's tensor names make, or None when no client would recognise them."""
    for name, (required, optional) in ADAPTERS.items():
        if required <= suffixes and suffixes <= required | optional:
            if name == "LoKr" and not (({"lokr_w1"} <= suffixes or {"lokr_w1_a", "lokr_w1_b"} <= suffixes)
                                      and ({"lokr_w2"} <= suffixes or {"lokr_w2_a", "lokr_w2_b"} <= suffixes)):
                continue
            return name
    return None


def is_plain_lora(suffixes: set[str]) -> bool:
    return suffixes <= {"lora_down.weight", "lora_up.weight", "alpha"}


def make_ia3(name: str, module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]):
    """LyCORIS' IA3Module from a file's tensors. lycoris-lora 4.1.3's own `make_module_from_state_dict` for
    iA3 takes one tensor while `extract_state_dict` hands it two (weight, on_input), so
    `create_lycoris_from_weights` raises TypeError on every iA3 file; this is what it means to do."""
    from lycoris.modules.ia3 import IA3Module

    on_input = bool(int(tensors["on_input"])) if "on_input" in tensors else False
    rebuilt = IA3Module(name, module, 1, train_on_input=on_input)
    rebuilt.weight.data.copy_(tensors["weight"].reshape(rebuilt.weight.shape))
    return rebuilt


def _with_weight(module: torch.nn.Module) -> torch.nn.Module:
    """LyCORIS' full (Native Fine-Tuning) module takes the layer's weight away while it trains; the check
    then needs a stand-in layer of the same shape (no values are read from it). A fused layer's stand-in
    has the original layer's weight (DoRA's norms are read from it)."""
    from .fused_lora import LinearGroup
    from .fused_lycoris import FusedWeightView

    if isinstance(module, LinearGroup):  # a fused DiT layer (FLUX.1 qkv): the file's module is the whole layer
        return FusedWeightView(module)
    if getattr(module, "weight", None) is not None:
        return module
    if isinstance(module, torch.nn.Conv2d):
        return torch.nn.utils.skip_init(torch.nn.Conv2d, module.in_channels, module.out_channels,
                                        module.kernel_size, module.stride, module.padding, module.dilation,
                                        module.groups)
    return torch.nn.utils.skip_init(torch.nn.Linear, module.in_features, module.out_features)


def lycoris_module_problem(name: str, tensors: Mapping[str, torch.Tensor], module: torch.nn.Module) -> str | None:
    """None when LyCORIS' loader rebuilds this module on `module` with a ΔW of the layer's shape."""
    from lycoris.modules import get_module, make_module

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    adapter = adapter_of(set(tensors))
    if adapter is None:
        return (f"{name}: tensors {', '.join(sorted(tensors))} make no adapter A1111/ComfyUI know "
                "(LoRA, LoHa, LoKr, iA3, GLoRA, OFT, full)")
    module = _with_weight(module)
    if type(module) not in (torch.nn.Linear, torch.nn.Conv2d):
        # e.g. a fused layer's stand-in: LyCORIS warns it would run a Linear subclass in bypass; none runs here
        logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    state = {f"{name}.{k}": (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    kind, params = get_module(state, name)
    if kind is None:
        return f"{name}: LyCORIS does not recognise the {adapter} tensors {', '.join(sorted(tensors))}"
    try:
        with torch.no_grad():
            rebuilt = make_ia3(name, module, tensors) if adapter == "iA3" else make_module(kind, params, name, module)
            if rebuilt is None:
                return f"{name}: LyCORIS cannot rebuild this {adapter} module"
            delta = rebuilt.get_diff_weight(1.0)
            delta = delta[0] if isinstance(delta, tuple) else delta
    except Exception as e:  # LyCORIS raises size errors of several kinds for a tensor that does not fit
        return f"{name}: the {adapter} tensors do not fit the base layer ({type(e).__name__}: {str(e)[:160]})"
    if tuple(delta.shape) != tuple(module.weight.shape) and delta.numel() != module.weight.numel():
        return (f"{name}: the {adapter} update has {delta.numel()} values, the base layer weight "
                f"{tuple(module.weight.shape)} has {module.weight.numel()}")
    if "dora_scale" in tensors:
        ds, w = tensors["dora_scale"], module.weight
        per_out = ds.shape[0] == w.shape[0] and ds.numel() == w.shape[0]
        per_in = ds.dim() > 1 and ds.shape[1] == w.shape[1] and ds.numel() == w.shape[1]
        if not (per_out or per_in):
            return f"{name}: dora_scale {tuple(ds.shape)} fits neither the layer's outputs nor its inputs"
    return None
