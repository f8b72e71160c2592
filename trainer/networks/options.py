"""Checks of the network options that need more than one field (run with the config rules; no torch)."""
from __future__ import annotations

from typing import Any

from trainer.families import FAMILY_FLAGS, FAMILY_NAMES, chosen_family

from .blocks import check_block_options
from .registry import FAMILY_LORA_MODULE, KOHYA_BLOCK_BUILDERS, dit_refusal, network_type

BLOCK_OPTIONS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                 "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")

LYCORIS_NOT_PEFT = ("save_lora_format diffusers writes PEFT LoRA keys (lora_A/lora_B), which the LyCORIS types do "
                    "not have: choose kohya (ComfyUI, Forge and A1111 load LyCORIS files in that layout)")

DORA_NOT_FP8 = ("dora_wd (DoRA) reads the base layers' weights, which fp8_base keeps in 8 bits: turn off dora_wd or "
                "fp8_base (and fp8_base_unet)")
IA3_NOT_FP8 = ("LyCORIS/iA3 scales the base layers' weights, which fp8_base keeps in 8 bits (LyCORIS' bypass path "
               "would scale their biases too): turn off fp8_base or pick another LoRA_type")


OFT_FLUX_NOT = {  # what sd-scripts' networks.oft_flux does not have: option → why
    "network_dropout": "has no dropout", "rank_dropout": "has no dropout", "module_dropout": "has no dropout",
    "scale_weight_norms": "has no max-norm regularisation", "loraplus_lr_ratio": "has no LoRA+",
    "loraplus_unet_lr_ratio": "has no LoRA+", "loraplus_text_encoder_lr_ratio": "has no LoRA+",
    "network_train_text_encoder_only": "trains the transformer only",
    "train_t5xxl": "trains the transformer only", "fp8_base": "rebuilds each weight, which fp8_base keeps in 8 bits",
    "fp8_base_unet": "rebuilds each weight, which fp8_base_unet keeps in 8 bits",
}


def oft_flux_problems(c) -> list[tuple[str, str]]:
    """Flux1 OFT: options its sd-scripts module has no counterpart for, and its family and layout."""
    problems = [(k, f"Flux1 OFT (sd-scripts' networks.oft_flux) {why}: turn {k} off or pick another LoRA_type")
                for k, why in OFT_FLUX_NOT.items() if getattr(c, k)]
    if c.train_blocks != "all":
        problems.append(("train_blocks", "Flux1 OFT picks its layers with enable_all_linear, not train_blocks "
                         "(sd-scripts' oft_flux ignores it): set train_blocks to all"))
    if c.save_lora_format == "diffusers":
        problems.append(("save_lora_format", "the diffusers layout has PEFT LoRA keys, which OFT does not have: "
                         "choose kohya"))
    return problems


def network_option_problems(c) -> list[tuple[str, str]]:
    kind = network_type(c.LoRA_type)
    blocks = kind.builder in KOHYA_BLOCK_BUILDERS
    problems = check_block_options(c) if blocks else []
    if not blocks:
        set_blocks = [k for k in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                                  "down_lr_weight", "mid_lr_weight", "up_lr_weight") if getattr(c, k)]
        if set_blocks:
            problems.append((set_blocks[0], f"{set_blocks[0]} is an option of sd-scripts' networks.lora and lora_fa "
                             f"(Standard, Kohya LoCon, LoRA-FA); {c.LoRA_type} does not use it: clear it or pick "
                             "one of those types"))
    # kohya_ss's slider goes to 100000 because LoKr reads a huge dim as "full matrix" and iA3/full ignore it;
    # for the low-rank types a rank past the widest layer only grows the file.
    if kind.algo not in ("lokr", "ia3", "full") and c.network_dim > 1024:
        problems.append(("network_dim", f"{c.network_dim} is above 1024, wider than any SD1/SD2/SDXL layer, for "
                         f"{c.LoRA_type}; use 4–128 (only LoKr reads a huge dim, as full matrix)"))
    ticked = chosen_family(c.model_dump(include={f for f, _ in FAMILY_FLAGS}), None)
    if ticked and not kind.trains_on(ticked):
        problems.append(("LoRA_type", dit_refusal(kind, FAMILY_NAMES[ticked], ticked)))
    if kind.builder == "oft_flux":
        problems += oft_flux_problems(c)
    if kind.builder == "lycoris" and c.save_lora_format == "diffusers":
        problems.append(("save_lora_format", LYCORIS_NOT_PEFT))
    fp8 = c.fp8_base or c.fp8_base_unet
    if kind.algo in ("locon", "loha", "lokr") and c.dora_wd and fp8:
        problems.append(("dora_wd", DORA_NOT_FP8))
    if kind.algo == "ia3" and fp8:
        problems.append(("fp8_base_unet" if c.fp8_base_unet else "fp8_base", IA3_NOT_FP8))
    if kind.lora_type in ("Kohya DyLoRA", "LyCORIS/DyLoRA") and c.network_dim % max(c.unit, 1):
        problems.append(("unit", f"network_dim {c.network_dim} must be a multiple of unit {c.unit}"))
    if kind.lora_type == "Kohya DyLoRA":
        if c.conv_dim > 1 and c.conv_dim != c.network_dim:
            problems.append(("conv_dim", f"Kohya DyLoRA trains convolutions at network_dim: set conv_dim to "
                             f"{c.network_dim}, or to 1 to leave them out"))
        dropouts = [k for k in ("network_dropout", "rank_dropout", "module_dropout") if getattr(c, k)]
        if dropouts:
            problems.append((dropouts[0], "Kohya DyLoRA has no dropout (sd-scripts ignores it); set it to 0"))
    return problems


def lycoris_module_kwargs(config, algo: str) -> dict[str, Any]:
    """LyCORIS module arguments from the studio's options (kohya_ss GUI / network_args names)."""
    c = config
    kw = dict(use_tucker=c.use_tucker, use_scalar=c.use_scalar, rank_dropout_scale=c.rank_dropout_scale)
    if algo in ("locon", "loha", "lokr"):
        kw.update(weight_decompose=c.dora_wd, wd_on_out=c.wd_on_output, bypass_mode=c.bypass_mode or None)
    if algo == "lokr":
        # 0 is no factor size (the schema allows it): taken as -1, "as balanced as the layer allows"
        kw.update(factor=c.factor or -1, decompose_both=c.decompose_both)
    if algo == "dylora":
        kw.update(block_size=c.unit)
    if algo in ("diag-oft", "boft"):
        kw.update(constraint=float(c.constrain), rescaled=c.rescaled)
    if algo == "ia3":
        kw.update(train_on_input=c.train_on_input)
    return kw


def lycoris_network_args(config, kind, kwargs) -> dict[str, str]:
    """`ss_network_args` as sd-scripts writes them for lycoris.kohya (the strings kohya_ss passed)."""
    args = {"preset": config.LyCORIS_preset, "algo": kind.algo}
    if kind.uses_conv_dim:
        args.update(conv_dim=str(config.conv_dim), conv_alpha=str(config.conv_alpha))
    for key in ("rank_dropout", "module_dropout"):
        if getattr(config, key):
            args[key] = str(getattr(config, key))
    names = {"weight_decompose": "dora_wd", "wd_on_out": "wd_on_output", "block_size": "block_size",
             "constraint": "constraint"}
    for key, value in kwargs.items():
        if key == "wd_on_out" and not kwargs.get("weight_decompose"):
            continue  # only means something with DoRA
        if value not in (None, False, 0, -1, 0.0) or key == "factor":
            args[names.get(key, key)] = str(value)
    return args


def sd_scripts_network(config, family: str | None = None) -> tuple[str, list[str]]:
    """(--network_module, --network_args list) that make sd-scripts train what this config trains on `family`,
    e.g. ("lycoris.kohya", ["preset=full", "algo=loha", "conv_dim=4", ...]); also what ss_network_args records."""
    kind = network_type(config.LoRA_type)
    module = kind.network_module
    if module == "networks.lora" and family in FAMILY_LORA_MODULE:
        module = FAMILY_LORA_MODULE[family]
    args: dict[str, Any] = {}
    if kind.builder == "lycoris":
        args = lycoris_network_args(config, kind, lycoris_module_kwargs(config, kind.algo))
    elif kind.builder == "oft_flux":
        if config.enable_all_linear:  # the one network_args key kohya_ss passes to networks.oft_flux
            args["enable_all_linear"] = "True"
    else:
        conv = config.conv_dim
        if kind.lora_type == "Kohya LoCon" or (kind.builder == "dylora" and conv > 1):
            args.update(conv_dim=str(conv), conv_alpha=str(config.conv_alpha))
        if kind.builder == "dylora":
            args["unit"] = str(config.unit)
        else:
            args.update({k: getattr(config, k).strip() for k in BLOCK_OPTIONS if getattr(config, k).strip()})
            for key in ("rank_dropout", "module_dropout"):
                if getattr(config, key):
                    args[key] = str(getattr(config, key))
    return module, [f"{k}={v}" for k, v in args.items()]
