"""Self-check of a kohya-format LoRA file against a base model (after each save, "Verify LoRA").

Checks what makes A1111 / ComfyUI skip keys ("lora key not loaded") or diffusers refuse a file:
every key is `<module>.lora_down.weight|lora_up.weight|alpha`, every module name maps to a
module of the base model under the kohya naming for its family, shapes fit that module, each
module has all three tensors, values are finite, and the file is for this family. LyCORIS modules
(LoHa, LoKr, iA3, DoRA, ...) must form an adapter the clients know and rebuild through LyCORIS'
loader on their layer (lycoris_checks.py).

CLI: python -m trainer.networks.verify LORA --base MODEL [--family sd1|sd2|sdxl] (see verify.py)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from trainer.models.hashing import addnet_hash_safetensors

from .files import read_lora_file
from .lycoris_checks import ADAPTERS, adapter_of, is_plain_lora, lycoris_module_problem
from .naming import (
    DIT_FAMILIES, Target, all_targets, is_diffusers_unet_name, is_sgm_unet_name, kohya_name, names_by_part,
    resolve_base, split_key,
)

_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")
KOHYA_OFT = "OFT (sd-scripts oft_flux)"  # oft_unet_<name>.oft_blocks.<split>: one [k, n, n] tensor per split
ALL_ADAPTER_TENSORS = frozenset().union(*(req | opt for req, opt in ADAPTERS.values()))
_MAX_LISTED = 20


@dataclass
class VerifyReport:
    path: str
    family: str  # the base model's family
    file_family: str | None  # what the file says or looks like it is for
    modules: int = 0
    modules_by_part: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    adapters: dict[str, int] = field(default_factory=dict)  # modules per adapter type (LoRA, LoHa, LoKr, ...)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def to_text(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.modules_by_part.items()))
        kinds = "" if set(self.adapters) <= {"LoRA"} else " " + "/".join(sorted(self.adapters))
        head = (f"{'OK' if self.ok else 'PROBLEMS'}: {self.path} — {self.modules}{kinds} modules ({parts}) "
                f"for {self.family}")
        lines = [head]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# sd-scripts' ss_base_model_version values begin with these (flux1, chroma, sd3_5_large, sdxl_base_v1-0, sd_v2…)
VERSION_PREFIXES = (("flux", "flux"), ("chroma", "chroma"), ("sd3", "sd3"), ("sdxl", "sdxl"), ("sd_v2", "sd2"),
                    ("sd_v1", "sd1"))


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    version = (metadata or {}).get("ss_base_model_version", "")
    for prefix, family in VERSION_PREFIXES:
        if version.startswith(prefix):
            return family
    if (metadata or {}).get("ss_v2") == "True":
        return "sd2"
    return None


def guess_file_family(names: Sequence[str], metadata: Mapping[str, str]) -> str | None:
    """The family a file is for, from its metadata or else from its key names."""
    fam = family_from_metadata(metadata)
    if fam:
        return fam
    if any(n.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_", "oft_unet_")) for n in names):
        return "flux"
    if any(n.startswith("lora_unet_joint_blocks_") for n in names):
        return "sd3"
    if any(n.startswith("lora_te2_") for n in names) or any(is_sgm_unet_name(n) for n in names):
        return "sdxl"
    if any(n.startswith("lora_te_") for n in names):
        return "sd1 or sd2"
    return None


def build_name_map(targets: Sequence[Target], family: str) -> dict[str, Target]:
    """kohya name → target, plus the spellings clients also accept for this family
    (`lora_te1_` for the SD1/SD2 text encoder; diffusers-style U-Net names for SDXL)."""
    names = {t.lora_name: t for t in targets}
    for t in targets:
        if family != "sdxl" and t.part == "te":
            names.setdefault("lora_te1_" + t.lora_name[len("lora_te_"):], t)
        if family == "sdxl" and t.part == "unet":
            names.setdefault(kohya_name("lora_unet", t.path), t)
        if family in DIT_FAMILIES and t.part == "unet":  # sd-scripts' oft_flux names the same layers oft_unet_
            names.setdefault("oft_unet" + t.lora_name[len("lora_unet"):], t)
    return names


def _module_shape_problem(name: str, down: torch.Tensor, up: torch.Tensor, t: Target) -> str | None:
    m = t.module
    is_conv = isinstance(m, nn.Conv2d)
    want_ndim = 4 if is_conv else 2
    if down.dim() != want_ndim or up.dim() != want_ndim:
        kind = "Conv2d" if is_conv else "Linear"
        return (f"{name}: tensors are {down.dim()}-D/{up.dim()}-D but {t.path} is a {kind} "
                f"(needs {want_ndim}-D); the file is for a different model layout")
    rank = down.shape[0]
    if up.shape[1] != rank:
        return f"{name}: lora_up {tuple(up.shape)} does not match lora_down rank {rank}"
    if down.shape[1] != t.in_features or up.shape[0] != t.out_features:
        return (f"{name}: shape mismatch, the file has (out {up.shape[0]}, in {down.shape[1]}) but the base "
                f"layer {t.path} is (out {t.out_features}, in {t.in_features})")
    if is_conv:
        if tuple(down.shape[2:]) != tuple(m.kernel_size):
            return f"{name}: lora_down kernel {tuple(down.shape[2:])} vs base kernel {tuple(m.kernel_size)}"
        if tuple(up.shape[2:]) != (1, 1):
            return f"{name}: lora_up must be 1×1, got {tuple(up.shape[2:])}"
    return None


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    targets: Sequence[Target],
    family: str,
    path: str = "<memory>",
) -> VerifyReport:
    """Core of the self-check; also used by `LoRANetwork.load_weights`."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for key, value in state_dict.items():
        name, suffix = split_key(key)
        if suffix not in _SUFFIXES and suffix not in ALL_ADAPTER_TENSORS and not _is_oft_block(suffix):
            problems.append(f"stray key {key!r}: not .lora_down.weight/.lora_up.weight/.alpha nor a LyCORIS "
                            "tensor (diffusers refuses such files; A1111/ComfyUI skip the key)")
            continue
        modules.setdefault(name, {})[suffix] = value

    names = list(modules)
    report = VerifyReport(path, family, guess_file_family(names, metadata), len(names), names_by_part(names))
    name_map = build_name_map(targets, family)

    meta_family = family_from_metadata(metadata)
    unmapped = [n for n in names if n not in name_map]
    if meta_family and meta_family != family:
        problems.insert(0, f"wrong base model: the file says it is for {meta_family} "
                           f"(ss_base_model_version={metadata.get('ss_base_model_version')}), the base is {family}")
    elif names and len(unmapped) * 2 >= len(names) and report.file_family and report.file_family != family:
        problems.insert(0, f"wrong base model: the keys look like a {report.file_family} LoRA, the base is {family}")
    if not names:
        problems.append("no LoRA modules in the file")

    for n in unmapped[:_MAX_LISTED]:
        problems.append(f"{n}: maps to no module of the {family} base model (clients report 'lora key not loaded')")
    if len(unmapped) > _MAX_LISTED:
        problems.append(f"... and {len(unmapped) - _MAX_LISTED} more unmapped modules")

    if family == "sdxl" and any(is_sgm_unet_name(n) for n in names) and any(is_diffusers_unet_name(n) for n in names):
        problems.append("U-Net keys mix SGM (input_blocks) and diffusers (down_blocks) names; "
                        "diffusers drops the SGM ones")

    seen_targets: dict[int, str] = {}
    untrained: list[str] = []
    for name, tensors in modules.items():
        adapter = KOHYA_OFT if any(map(_is_oft_block, tensors)) else adapter_of(set(tensors)) or "LoRA"
        report.adapters[adapter] = report.adapters.get(adapter, 0) + 1
        if adapter == KOHYA_OFT:
            problems += _kohya_oft_problems(name, tensors, name_map.get(name), seen_targets)
            continue
        if not is_plain_lora(set(tensors)):
            problems += _lycoris_problems(name, tensors, name_map.get(name), seen_targets)
            continue
        missing = [s for s in ("lora_down.weight", "lora_up.weight") if s not in tensors]
        if missing:
            problems.append(f"{name}: missing {', '.join(missing)}")
            continue
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        if "alpha" not in tensors:
            problems.append(f"{name}: missing .alpha (clients then use alpha = rank, a different strength)")
        elif tensors["alpha"].numel() != 1:
            problems.append(f"{name}: alpha must be a scalar, got shape {tuple(tensors['alpha'].shape)}")
        for suffix, v in tensors.items():
            if not v.is_floating_point():
                problems.append(f"{name}.{suffix}: dtype {v.dtype} is not floating point")
            elif not bool(torch.isfinite(v).all()):
                problems.append(f"{name}.{suffix}: contains NaN/inf values (training diverged or fp16 overflow)")
        t = name_map.get(name)
        if t is None:
            continue
        if id(t.module) in seen_targets:
            problems.append(f"{name}: targets the same layer as {seen_targets[id(t.module)]}")
        seen_targets[id(t.module)] = name
        shape_problem = _module_shape_problem(name, down, up, t)
        if shape_problem:
            problems.append(shape_problem)
        elif not bool(up.abs().sum() > 0):
            untrained.append(name)
    if untrained:
        shown = ", ".join(untrained[:3]) + (", ..." if len(untrained) > 3 else "")
        warnings.append(f"{len(untrained)} of {len(names)} modules have an all-zero lora_up (untrained, no effect): "
                        f"{shown}")
    report.problems = problems
    report.warnings = warnings
    return report


def _is_oft_block(suffix: str) -> bool:
    head, _, index = suffix.partition(".")
    return head == "oft_blocks" and index.isdigit()


def _kohya_oft_problems(name, tensors, target, seen_targets) -> list[str]:
    """An oft_flux module: alpha, and one block tensor [k, n, n] per split of the layer's rows (qkv: q, k, v)."""
    if set(tensors) - {"alpha"} - {s for s in tensors if _is_oft_block(s)}:
        return [f"{name}: oft_blocks.N and alpha cannot be mixed with other adapters' tensors"]
    problems = _lycoris_problems(name, tensors, None, seen_targets)
    if "alpha" not in tensors or tensors["alpha"].numel() != 1:
        problems.append(f"{name}: needs a scalar .alpha (the rotation's constraint)")
    if target is None or problems:
        return problems
    if id(target.module) in seen_targets:
        return [f"{name}: targets the same layer as {seen_targets[id(target.module)]}"]
    seen_targets[id(target.module)] = name
    members = getattr(target.module, "members", [target.module])
    widths = [m.out_features for m in members]
    blocks = [tensors.get(f"oft_blocks.{i}") for i in range(len(widths))]
    ok = len(tensors) == len(widths) + 1 and all(b is not None and b.dim() == 3 for b in blocks)
    ok = ok and all(b.shape[1] == b.shape[2] == w // b.shape[0] and b.shape[0] == blocks[0].shape[0]
                    and w % b.shape[0] == 0 for b, w in zip(blocks, widths))
    if not ok:
        shapes = [tuple(v.shape) for k, v in sorted(tensors.items()) if k != "alpha"]
        problems.append(f"{name}: oft_blocks {shapes} do not split {target.path} (rows {widths}) into the same "
                        "number of square blocks per part")
    return problems


def _lycoris_problems(name, tensors, target, seen_targets) -> list[str]:
    problems = []
    for suffix, v in tensors.items():
        if suffix == "on_input":
            continue  # iA3's flag is an integer tensor
        if not v.is_floating_point():
            problems.append(f"{name}.{suffix}: dtype {v.dtype} is not floating point")
        elif not bool(torch.isfinite(v).all()):
            problems.append(f"{name}.{suffix}: contains NaN/inf values (training diverged or fp16 overflow)")
    if target is None or problems:
        return problems
    if id(target.module) in seen_targets:
        problems.append(f"{name}: targets the same layer as {seen_targets[id(target.module)]}")
    seen_targets[id(target.module)] = name
    problem = lycoris_module_problem(name, tensors, target.module)
    return problems + ([problem] if problem else [])


def verify_lora_file(path, unet_or_base, text_encoders=None, family: str | None = None) -> VerifyReport:
    """Check a saved LoRA file against a base model (`BaseModel`, component dict or U-Net)."""
    unet, tes, fam = resolve_base(unet_or_base, text_encoders, family)
    state_dict, metadata = read_lora_file(path)
    report = check_state_dict(state_dict, metadata, all_targets(unet, tes, fam, True), fam, str(path))
    stored = metadata.get("sshs_model_hash")
    if stored and str(path).lower().endswith(".safetensors"):
        with open(path, "rb") as fh:
            actual = addnet_hash_safetensors(fh)
        if actual != stored:
            # other tools (sd-scripts' merge at fp16, metadata editors) leave a stale hash: the tensors decide
            report.warnings.append("sshs_model_hash does not match the tensors: another tool changed the file "
                                   "after it was hashed (or it is damaged); the tensors are checked on their own")
    return report


