"""Frozen base weights in 8-bit floats (`fp8_base`, as Kohya's --fp8_base): half the memory of bf16.

Every plain nn.Linear / nn.Conv2d keeps its `.weight` shape, but the weight now holds float8_e4m3fn
values scaled per output channel (scale = amax / 448, fp32, in `.weight_scale`). The bits are stored
in a uint8 tensor, viewed as float8_e4m3fn when read: a uint8 tensor is not floating point, so
`Module.to(dtype)` (Textual Inversion casts its text encoders) cannot widen it back, and diffusers'
`unet.dtype` (the SDXL pipeline casts prompt embeddings to it) still reports the compute dtype.

The module's `forward` (an instance attribute, which a LoRA then wraps) widens the weight to the
compute dtype for this layer only. While gradients flow, a custom autograd Function saves only the
8-bit weight and its scale and widens again in backward: saving the widened weight would keep a
compute-dtype copy of every layer alive until backward, and nothing would be saved during training.
The input is not saved either: the base weights are frozen, so only the input's gradient is needed.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
_STORAGE = torch.uint8  # same bytes as FP8, but not a floating-point dtype


@dataclass
class Fp8Report:
    """What `to_fp8` converted: bytes of the weights before and after (scales included)."""

    layers: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after

    def __add__(self, other: "Fp8Report") -> "Fp8Report":
        return Fp8Report(self.layers + other.layers, self.bytes_before + other.bytes_before,
                         self.bytes_after + other.bytes_after)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel float8_e4m3fn values and their fp32 scales (weight ≈ values · scale)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=tuple(range(1, w.dim())))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # an all-zero row stays zero
    q = (w / _per_row(scale, w.dim())).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def widen(stored: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight in `dtype`: one allocation; the in-place multiply by the fp32 scale rounds once."""
    return stored.view(FP8).to(dtype).mul_(_per_row(scale, stored.dim()))


def is_fp8(module: nn.Module) -> bool:
    return getattr(module, "weight_scale", None) is not None and module.weight.dtype == _STORAGE


def fp8_weight(module: nn.Module) -> torch.Tensor:
    """The stored 8-bit weight as float8_e4m3fn (no copy)."""
    return module.weight.view(FP8)


def to_fp8(module: nn.Module, compute_dtype: torch.dtype) -> Fp8Report:
    """Store every plain Linear / Conv2d weight inside `module` in fp8, in place. Call it before a LoRA
    is applied: the LoRA wraps whatever forward the layer has when it is applied."""
    report = Fp8Report()
    # transformers marks layers its code reads the weight dtype of (T5's `wo`, FLUX/SD3's text encoder): keep them
    wide = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, layer in module.named_modules():
        if type(layer) not in (nn.Linear, nn.Conv2d) or is_fp8(layer) or name.rsplit(".", 1)[-1] in wide:
            continue  # exact types: subclasses (bitsandbytes, LoRA-compatible layers) have their own forward
        if isinstance(layer, nn.Conv2d) and isinstance(layer.padding, str):
            continue  # 'same'/'valid' padding has no explicit input-gradient form; the U-Net uses none
        if layer.weight.requires_grad:
            raise ValueError(f"{name or type(module).__name__}: its weight trains; only frozen weights go to fp8")
        if "forward" in layer.__dict__:
            raise RuntimeError(f"{name or type(module).__name__}: its forward is already replaced (a LoRA "
                               "applied?); store the base in fp8 before applying a network")
        before = layer.weight.numel() * layer.weight.element_size()
        _convert(layer, compute_dtype)
        report.layers += 1
        report.bytes_before += before
        report.bytes_after += layer.weight.numel() * layer.weight.element_size() + layer.weight_scale.numel() * 4
    return report


def _convert(layer: nn.Module, compute_dtype: torch.dtype) -> None:
    q, scale = quantize(layer.weight)
    layer.weight = nn.Parameter(q.view(_STORAGE), requires_grad=False)  # the wide weight is freed here
    layer.weight_scale = scale  # a plain attribute: Module.to(dtype) must not round it to half precision
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(compute_dtype)
    forward = _linear_forward if isinstance(layer, nn.Linear) else _conv_forward
    layer.forward = functools.partial(forward, layer)


def _per_row(scale: torch.Tensor, dims: int) -> torch.Tensor:
    return scale.view(-1, *([1] * (dims - 1)))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _scale(layer: nn.Module) -> torch.Tensor:
    scale = layer.weight_scale
    if scale.device != layer.weight.device:  # the module was moved; the plain attribute follows lazily
        scale = layer.weight_scale = scale.to(layer.weight.device)
    return scale


def _no_autocast(device_type: str):
    """Inputs are cast by hand; autocast must not cast them again (devices without autocast: nothing)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _needs_graph(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _linear_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    dtype = _compute_dtype(x)
    if _needs_graph(x, layer.bias):
        return _Fp8Linear.apply(x, layer.weight, _scale(layer), layer.bias, dtype)
    with _no_autocast(x.device.type):
        return F.linear(x.to(dtype), widen(layer.weight, _scale(layer), dtype), _cast(layer.bias, dtype))


def _conv_forward(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:  # unbatched input, as nn.Conv2d accepts
        return _conv_forward(layer, x.unsqueeze(0)).squeeze(0)
    padding = layer.padding
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = (0, 0)
    geometry = (layer.stride, padding, layer.dilation, layer.groups)
    dtype = _compute_dtype(x)
    if _needs_graph(x, layer.bias):
        return _Fp8Conv2d.apply(x, layer.weight, _scale(layer), layer.bias, dtype, geometry)
    with _no_autocast(x.device.type):
        return F.conv2d(x.to(dtype), widen(layer.weight, _scale(layer), dtype), _cast(layer.bias, dtype), *geometry)


def _remember(ctx, x, stored, scale, bias, dtype) -> None:
    """What backward needs: the 8-bit weight itself (no new memory) and the dtypes to return."""
    ctx.save_for_backward(stored, scale)
    ctx.dtype, ctx.x_dtype = dtype, x.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _gradients(ctx, grad, input_grad, bias_grad) -> tuple:
    """(gradient of x, gradient of the bias), each only where needed: the frozen 8-bit weight gets none."""
    stored, scale = ctx.saved_tensors
    grad_x = grad_bias = None
    with _no_autocast(grad.device.type):
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(grad.to(ctx.dtype), widen(stored, scale, ctx.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = bias_grad(grad).to(ctx.bias_dtype)
    return grad_x, grad_bias


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stored, scale, bias, dtype):
        _remember(ctx, x, stored, scale, bias, dtype)
        with _no_autocast(x.device.type):
            return F.linear(x.to(dtype), widen(stored, scale, dtype), _cast(bias, dtype))

    @staticmethod
    def backward(ctx, grad):
        grad_x, grad_bias = _gradients(ctx, grad, lambda g, weight: g.matmul(weight),
                                       lambda g: g.reshape(-1, g.shape[-1]).sum(0))
        return grad_x, None, None, grad_bias, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stored, scale, bias, dtype, geometry):
        _remember(ctx, x, stored, scale, bias, dtype)
        ctx.x_shape, ctx.geometry = x.shape, geometry
        with _no_autocast(x.device.type):
            return F.conv2d(x.to(dtype), widen(stored, scale, dtype), _cast(bias, dtype), *geometry)

    @staticmethod
    def backward(ctx, grad):
        grad_x, grad_bias = _gradients(
            ctx, grad, lambda g, weight: torch.nn.grad.conv2d_input(ctx.x_shape, weight, g, *ctx.geometry),
            lambda g: g.sum((0, 2, 3)))
        return grad_x, None, None, grad_bias, None, None
