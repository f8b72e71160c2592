"""Optimizers by Kohya's names, each from its library, with `optimizer_args` "key=value key=value"."""
from __future__ import annotations

import ast
import importlib
import logging

import torch

from .faults import TrainingFault

logger = logging.getLogger(__name__)


def parse_optimizer_args(text) -> dict:
    """'weight_decay=0.01 betas=0.9,0.999 decouple=True' → {weight_decay: 0.01, betas: (0.9, 0.999), ...}.

    Values are Python literals (as sd-scripts reads them); anything else stays a string.
    """
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    items = text if isinstance(text, (list, tuple)) else str(text).split()
    args = {}
    for item in items:
        if "=" not in item:
            raise TrainingFault(f"optimizer_args: {item!r} is not key=value",
                                'Write the arguments as space-separated key=value, e.g. "weight_decay=0.01 '
                                'betas=0.9,0.999".')
        key, value = item.split("=", 1)
        try:
            args[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args[key.strip()] = value.strip()
    return args


def _bnb(cls_name: str):
    try:
        bnb = importlib.import_module("bitsandbytes.optim")
    except Exception as exc:  # ImportError or a broken CUDA setup inside bitsandbytes
        raise TrainingFault(f"{cls_name} needs bitsandbytes, which could not be loaded: {exc}",
                            "pip install bitsandbytes, or choose the AdamW optimizer.") from exc
    return getattr(bnb, cls_name)


def _adamw(params, lr, args, device):
    if "fused" not in args and "foreach" not in args:
        # one fused kernel per step instead of a loop over parameters (CUDA and, in recent torch, CPU)
        args = {**args, "fused": _fused_ok(params, device)}
    return torch.optim.AdamW(params, lr=lr, **args)


def _fused_ok(params, device) -> bool:
    if device.type not in ("cuda", "cpu"):
        return False
    dtypes = {p.dtype for g in params for p in (g["params"] if isinstance(g, dict) else [g])}
    return dtypes <= {torch.float32, torch.float16, torch.bfloat16}


def _sgd(params, lr, args, device, nesterov=False):
    if nesterov:
        args = {"momentum": 0.9, **args, "nesterov": True}
    return torch.optim.SGD(params, lr=lr, **args)


def _adafactor(params, lr, args, device):
    from transformers.optimization import Adafactor

    # sd-scripts' default: relative steps, the given learning rate becomes AdafactorSchedule's initial lr
    args = {"relative_step": True, "scale_parameter": True, "warmup_init": False, **args}
    if args["relative_step"]:
        for group in params:
            if isinstance(group, dict):
                group.pop("lr", None)
        return Adafactor(params, lr=None, **args)
    return Adafactor(params, lr=lr, **args)


def _prodigy(params, lr, args, device):
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise TrainingFault("The Prodigy optimizer needs the optional package prodigyopt, which is not installed.",
                            "pip install prodigyopt (or pip install 'kohya-studio[prodigy]'), or choose AdamW.") from None
    if lr <= 0.1:
        logger.warning("Prodigy is usually run with learning_rate 1.0 (it finds the step size itself)")
    return Prodigy(params, lr=lr, **args)


OPTIMIZERS = {
    "adamw": _adamw,
    "adamw8bit": lambda p, lr, a, d: _bnb("AdamW8bit")(p, lr=lr, **a),
    "pagedadamw": lambda p, lr, a, d: _bnb("PagedAdamW")(p, lr=lr, **a),
    "pagedadamw8bit": lambda p, lr, a, d: _bnb("PagedAdamW8bit")(p, lr=lr, **a),
    "pagedadamw32bit": lambda p, lr, a, d: _bnb("PagedAdamW32bit")(p, lr=lr, **a),
    "lion": lambda p, lr, a, d: _bnb("Lion")(p, lr=lr, **a),
    "lion8bit": lambda p, lr, a, d: _bnb("Lion8bit")(p, lr=lr, **a),
    "pagedlion8bit": lambda p, lr, a, d: _bnb("PagedLion8bit")(p, lr=lr, **a),
    "sgd": _sgd,
    "sgdnesterov": lambda p, lr, a, d: _sgd(p, lr, a, d, nesterov=True),
    "sgdnesterov8bit": lambda p, lr, a, d: _bnb("SGD8bit")(p, lr=lr, **{"momentum": 0.9, **a, "nesterov": True}),
    "adafactor": _adafactor,
    "prodigy": _prodigy,
}


def build_optimizer(name: str, param_groups, lr: float, optimizer_args="", device=torch.device("cpu")):
    """The optimizer for `param_groups` (dicts with params/lr, as the network prepares them).

    `name` is one of Kohya's names (case-insensitive) or a dotted class path such as
    `bitsandbytes.optim.AdEMAMix8bit`.
    """
    args = parse_optimizer_args(optimizer_args)
    key = (name or "AdamW").replace("_", "").lower()
    if key in OPTIMIZERS:
        builder = OPTIMIZERS[key]
    elif "." in (name or ""):
        builder = _dotted(name)
    else:
        raise TrainingFault(f"Unknown optimizer {name!r}",
                            "Choose one of AdamW, AdamW8bit, PagedAdamW8bit, Lion, Lion8bit, SGD, SGDNesterov, "
                            "Adafactor, Prodigy, or give a full class path like bitsandbytes.optim.AdEMAMix8bit.")
    try:
        optimizer = builder(param_groups, lr, args, device)
    except TypeError as exc:  # a wrong key in optimizer_args
        raise TrainingFault(f"optimizer_args do not fit {name}: {exc}",
                            "Check the key names in optimizer_args against the optimizer's documentation.") from exc
    logger.info("optimizer: %s(%s)", type(optimizer).__name__, ", ".join(f"{k}={v}" for k, v in args.items()))
    return optimizer


def _dotted(path: str):
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise TrainingFault(f"Cannot import the optimizer class {path}: {exc}",
                            "Install the package that provides it or fix the class path.") from exc
    return lambda p, lr, a, d: cls(p, lr=lr, **a)


def uses_relative_step(optimizer) -> bool:
    """Adafactor with relative_step computes its own step size (needs AdafactorSchedule)."""
    return type(optimizer).__name__ == "Adafactor" and optimizer.defaults.get("relative_step", False)
