"""Optimizers by Kohya's names, each from the library that provides it, with `optimizer_args`.

The table below is kohya_ss's optimizer list. A library that is not installed is named with the extra
that installs it (``pip install 'kohya-studio[dadaptation]'``). A dotted class path
(``bitsandbytes.optim.AdEMAMix8bit``, ``pytorch_optimizer.CAME``) imports that class, as sd-scripts does.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import logging
import shlex
from dataclasses import dataclass, field

import torch

from .faults import TrainingFault

logger = logging.getLogger(__name__)


def parse_optimizer_args(text) -> dict:
    """'weight_decay=0.01 betas=0.9,0.999 decouple=True' → {weight_decay: 0.01, betas: (0.9, 0.999), ...}.

    Kohya_ss writes each pair quoted ('"weight_decay=0.01" "betas=0.9,0.99"'); the quotes are shell
    quoting and are removed. Values are Python literals (as sd-scripts reads them); anything else
    stays a string.
    """
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    items = list(text) if isinstance(text, (list, tuple)) else _split_args(str(text))
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


def _split_args(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: fall back to whitespace, the key=value check names the item
        return text.split()


@dataclass(frozen=True)
class OptimizerSpec:
    name: str           # Kohya's spelling
    module: str         # where the class lives
    cls: str
    extra: str = ""     # pip extra of kohya-studio that installs the library ("" = a core dependency)
    defaults: dict = field(default_factory=dict)  # sd-scripts' defaults for this name, overridable
    forced: dict = field(default_factory=dict)    # what the name means (nesterov for SGDNesterov)
    gpu_only: bool = False  # the library does not step on CPU


_BNB = "bitsandbytes.optim"
SPECS = [
    OptimizerSpec("AdamW", "torch.optim", "AdamW"),
    OptimizerSpec("AdamW8bit", _BNB, "AdamW8bit"),
    OptimizerSpec("PagedAdamW", _BNB, "PagedAdamW"),
    OptimizerSpec("PagedAdamW8bit", _BNB, "PagedAdamW8bit"),
    OptimizerSpec("PagedAdamW32bit", _BNB, "PagedAdamW32bit"),
    OptimizerSpec("Lion", _BNB, "Lion"),  # sd-scripts imports lion_pytorch; bitsandbytes' 32-bit Lion is the same rule
    OptimizerSpec("Lion8bit", _BNB, "Lion8bit"),
    OptimizerSpec("PagedLion8bit", _BNB, "PagedLion8bit"),
    OptimizerSpec("SGD", "torch.optim", "SGD"),
    OptimizerSpec("SGDNesterov", "torch.optim", "SGD", defaults={"momentum": 0.9}, forced={"nesterov": True}),
    OptimizerSpec("SGDNesterov8bit", _BNB, "SGD8bit", defaults={"momentum": 0.9}, forced={"nesterov": True}),
    OptimizerSpec("Adafactor", "transformers.optimization", "Adafactor",
                  defaults={"relative_step": True, "scale_parameter": True, "warmup_init": False}),
    OptimizerSpec("Prodigy", "prodigyopt", "Prodigy", extra="prodigy"),
    # sd-scripts: plain "DAdaptation" is the experimental DAdaptAdamPreprint
    OptimizerSpec("DAdaptation", "dadaptation.experimental", "DAdaptAdamPreprint", extra="dadaptation"),
    OptimizerSpec("DAdaptAdamPreprint", "dadaptation.experimental", "DAdaptAdamPreprint", extra="dadaptation"),
    OptimizerSpec("DAdaptAdaGrad", "dadaptation", "DAdaptAdaGrad", extra="dadaptation"),
    OptimizerSpec("DAdaptAdam", "dadaptation", "DAdaptAdam", extra="dadaptation"),
    OptimizerSpec("DAdaptAdan", "dadaptation", "DAdaptAdan", extra="dadaptation"),
    OptimizerSpec("DAdaptAdanIP", "dadaptation.experimental", "DAdaptAdanIP", extra="dadaptation"),
    OptimizerSpec("DAdaptLion", "dadaptation", "DAdaptLion", extra="dadaptation"),
    OptimizerSpec("DAdaptSGD", "dadaptation", "DAdaptSGD", extra="dadaptation"),
    OptimizerSpec("AdamWScheduleFree", "schedulefree", "AdamWScheduleFree", extra="schedulefree"),
    OptimizerSpec("RAdamScheduleFree", "schedulefree", "RAdamScheduleFree", extra="schedulefree"),
    OptimizerSpec("SGDScheduleFree", "schedulefree", "SGDScheduleFree", extra="schedulefree"),
    OptimizerSpec("bitsandbytes.optim.AdEMAMix8bit", _BNB, "AdEMAMix8bit"),
    OptimizerSpec("bitsandbytes.optim.PagedAdEMAMix8bit", _BNB, "PagedAdEMAMix8bit"),
    OptimizerSpec("prodigyplus.ProdigyPlusScheduleFree", "prodigyplus", "ProdigyPlusScheduleFree",
                  extra="prodigyplus"),
    OptimizerSpec("pytorch_optimizer.CAME", "pytorch_optimizer", "CAME", extra="came"),
    OptimizerSpec("CAME", "came_pytorch", "CAME", extra="came"),
]
OPTIMIZERS = {s.name.replace("_", "").lower(): s for s in SPECS}
# kohya_ss's dropdown, in its order (the schema's choices come from here)
KOHYA_OPTIMIZERS = tuple(s.name for s in SPECS)
# modules whose pip extra is known, for dotted paths the table does not list
_EXTRA_OF_MODULE = {s.module.split(".")[0]: s.extra for s in SPECS if s.extra}


def find_spec(name: str) -> OptimizerSpec | None:
    return OPTIMIZERS.get((name or "AdamW").replace("_", "").lower())


def _import_class(module: str, cls: str, shown: str, extra: str):
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        hint = (f"pip install 'kohya-studio[{extra}]' (or pip install {_PIP[extra]}), or choose AdamW."
                if extra else f"Install the package that provides {module}, or choose AdamW.")
        raise TrainingFault(f"The optimizer {shown} needs {module.split('.')[0]}, which is not installed "
                            f"or could not be loaded: {exc}", hint) from exc
    except AttributeError as exc:
        raise TrainingFault(f"{module} has no optimizer class {cls}: {exc}",
                            "Update that package, or fix the class path.") from exc


_PIP = {"prodigy": "prodigyopt", "dadaptation": "dadaptation", "schedulefree": "schedulefree",
        "prodigyplus": "prodigy-plus-schedule-free", "came": "pytorch-optimizer came-pytorch"}


def _fused_ok(params, device) -> bool:
    if device.type not in ("cuda", "cpu"):
        return False
    dtypes = {p.dtype for g in params for p in (g["params"] if isinstance(g, dict) else [g])}
    return dtypes <= {torch.float32, torch.float16, torch.bfloat16}


def _arguments(spec: OptimizerSpec, params, lr: float, args: dict, device) -> tuple[float | None, dict]:
    args = {**spec.defaults, **args, **spec.forced}
    if spec.name == "AdamW" and "fused" not in args and "foreach" not in args:
        # one fused kernel per step instead of a loop over parameters (CUDA and, in recent torch, CPU)
        args["fused"] = _fused_ok(params, device)
    if spec.name == "Adafactor" and args.get("relative_step"):
        # sd-scripts: relative steps compute the step size; the learning rate seeds AdafactorSchedule
        for group in params:
            if isinstance(group, dict):
                group.pop("lr", None)
        return None, args
    if (spec.name.startswith(("DAdapt", "Prodigy")) or spec.name.startswith("prodigyplus")) and lr <= 0.1:
        logger.warning("%s finds the step size itself and is usually run with learning_rate 1.0 (it is %g)",
                       spec.name, lr)
    return lr, args


def build_optimizer(name: str, param_groups, lr: float, optimizer_args="", device=torch.device("cpu")):
    """The optimizer for `param_groups` (dicts with params/lr, as the network prepares them).

    `name` is one of Kohya's names (case-insensitive) or a dotted class path such as
    `bitsandbytes.optim.AdEMAMix8bit`.
    """
    args = parse_optimizer_args(optimizer_args)
    spec = find_spec(name)
    if spec is None and "." in (name or ""):
        module, _, cls = name.rpartition(".")
        spec = OptimizerSpec(name, module, cls, extra=_EXTRA_OF_MODULE.get(module.split(".")[0], ""))
    if spec is None:
        raise TrainingFault(f"Unknown optimizer {name!r}",
                            f"Choose one of {', '.join(KOHYA_OPTIMIZERS)}, or give a full class path like "
                            "bitsandbytes.optim.AdEMAMix8bit.")
    cls = _import_class(spec.module, spec.cls, spec.name, spec.extra)
    lr_arg, kwargs = _arguments(spec, param_groups, lr, args, device)
    try:
        optimizer = cls(param_groups, lr=lr_arg, **kwargs)
    except TypeError as exc:  # a wrong key in optimizer_args
        raise TrainingFault(f"optimizer_args do not fit {spec.name}: {exc}",
                            "Check the key names in optimizer_args against the optimizer's documentation.") from exc
    if is_schedule_free(optimizer):
        optimizer.train()  # schedule-free optimizers keep two weight sequences: train mode steps them
    logger.info("optimizer: %s(%s)", type(optimizer).__name__, ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    return optimizer


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def is_schedule_free(optimizer) -> bool:
    return "ScheduleFree" in type(_inner(optimizer)).__name__


@contextlib.contextmanager
def evaluation_weights(optimizer):
    """Schedule-free optimizers hold the averaged weights only in eval mode: save and sample in it."""
    inner = _inner(optimizer)
    if not is_schedule_free(inner):
        yield
        return
    inner.eval()
    try:
        yield
    finally:
        inner.train()


def uses_relative_step(optimizer) -> bool:
    """Adafactor with relative_step computes its own step size (needs AdafactorSchedule)."""
    return type(optimizer).__name__ == "Adafactor" and optimizer.defaults.get("relative_step", False)
