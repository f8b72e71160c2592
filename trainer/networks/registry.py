"""Which network a `LoRA_type` trains: kohya_ss GUI names → (sd-scripts network_module, LyCORIS algo, builder).

This module imports no torch so the config schema and the GUI can read the names; the builders are
imported only when a network is built. One entry per type, one builder module per family of types:

* ``lora``    → trainer.networks.kohya_lora (sd-scripts networks.lora: Standard, Kohya LoCon)
* ``dylora``  → trainer.networks.dylora   (sd-scripts networks.dylora: Kohya DyLoRA)
* ``lora_fa`` → trainer.networks.lora_fa  (sd-scripts networks.lora_fa: LoRA-FA)
* ``lycoris`` → trainer.networks.lycoris_net (the `lycoris-lora` package, lycoris.kohya: every LyCORIS/ type)
* ``oft_flux`` → trainer.networks.oft_flux (sd-scripts networks.oft_flux: Flux1 OFT, FLUX.1-based models only)
"""
from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass

from trainer.families import FAMILY_NAMES

# the sd-scripts module of a plain LoRA on each DiT family (its files' ss_network_module, its export)
FAMILY_LORA_MODULE = {"flux": "networks.lora_flux", "sd3": "networks.lora_sd3", "chroma": "networks.lora_flux"}


@dataclass(frozen=True)
class NetworkType:
    lora_type: str  # the kohya_ss GUI's LoRA_type value
    network_module: str  # what sd-scripts gets as --network_module (and ss_network_module)
    algo: str | None  # LyCORIS `algo` network argument
    builder: str  # "lora", "dylora", "lora_fa" or "lycoris"
    summary: str
    uses_conv_dim: bool = True  # conv_dim/conv_alpha mean something for this type
    random_ranks: bool = False  # picks the trained ranks on the CPU every step (no CUDA-graph capture)
    # trains on the DiT families (FLUX.1, SD3): its modules can run on a fused layer (qkv, linear1) that the
    # original layout packs and diffusers splits (trainer/networks/fused_lora.py, fused_lycoris.py)
    dit: bool = False
    # the only families it trains on (sd-scripts modules made for one model); None = as `dit` says
    families: tuple[str, ...] | None = None

    def trains_on(self, family: str) -> bool:
        if self.families is not None:
            return family in self.families
        return family in ("sd1", "sd2", "sdxl") or self.dit


NETWORK_TYPES: dict[str, NetworkType] = {t.lora_type: t for t in (
    NetworkType("Standard", "networks.lora", None, "lora",
                "LoRA on attention and MLP layers (kohya's own; loads everywhere, also in diffusers).", False,
                dit=True),
    NetworkType("Kohya LoCon", "networks.lora", None, "lora",
                "Standard LoRA plus the 3×3 convolutions of the ResNet blocks (conv_dim).", True),
    NetworkType("Kohya DyLoRA", "networks.dylora", None, "dylora",
                "LoRA trained at every rank up to network_dim at once (unit ranks per step); saves a plain LoRA.",
                True, True),
    NetworkType("LoRA-FA", "networks.lora_fa", None, "lora_fa",
                "LoRA with the down projection frozen at its random start: only lora_up trains (less optimizer "
                "memory); saves a plain LoRA.", False),
    NetworkType("LyCORIS/LoCon", "lycoris.kohya", "locon", "lycoris",
                "LyCORIS LoRA/LoCon: LoRA on linear and conv layers; Tucker (use_tucker) and DoRA (dora_wd).",
                True, dit=True),
    NetworkType("LyCORIS/LoHa", "lycoris.kohya", "loha", "lycoris",
                "Hadamard product of two low-rank products: more capacity per rank (hada_* keys).", True, dit=True),
    NetworkType("LyCORIS/LoKr", "lycoris.kohya", "lokr", "lycoris",
                "Kronecker product of two small factors (factor): very small files (lokr_* keys).", True, dit=True),
    NetworkType("LyCORIS/iA3", "lycoris.kohya", "ia3", "lycoris",
                "Learned per-channel scaling of the layers (weight, on_input keys): tiny, learning rate ~1e-3+.",
                False, dit=True),
    NetworkType("LyCORIS/DyLoRA", "lycoris.kohya", "dylora", "lycoris",
                "LyCORIS' DyLoRA: every rank up to network_dim trained in blocks of `unit`.", True, True),
    NetworkType("LyCORIS/GLoRA", "lycoris.kohya", "glora", "lycoris",
                "Generalized LoRA: learns a weight and an input-dependent term (a1/a2/b1/b2 keys).", True),
    NetworkType("LyCORIS/BOFT", "lycoris.kohya", "boft", "lycoris",
                "Butterfly orthogonal fine-tuning: rotates the weights (oft_blocks); keeps the weights' norms.",
                True),
    NetworkType("LyCORIS/Diag-OFT", "lycoris.kohya", "diag-oft", "lycoris",
                "Block-diagonal orthogonal fine-tuning (oft_blocks; constrain, rescaled).", True),
    NetworkType("LyCORIS/Native Fine-Tuning", "lycoris.kohya", "full", "lycoris",
                "Trains the full weight difference of every targeted layer (diff keys): large files.", False),
    NetworkType("Flux1 OFT", "networks.oft_flux", None, "oft_flux",
                "FLUX.1 orthogonal fine-tuning (sd-scripts' oft_flux): rotates the transformer's weights in "
                "network_dim blocks (oft_blocks keys); network_alpha limits the rotation.", False, dit=True,
                families=("flux", "chroma")),
)}

LORA_TYPES: tuple[str, ...] = tuple(NETWORK_TYPES)
LYCORIS_PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-transformer-only", "unet-convblock-only")

# kohya_ss GUI names that older versions wrote and that mean one of the types above
_LEGACY_NAMES = {"LoCon": "LyCORIS/LoCon", "LyCORIS/Full": "LyCORIS/Native Fine-Tuning"}
_BUILDERS = {"lora": "trainer.networks.kohya_lora", "dylora": "trainer.networks.dylora",
             "lora_fa": "trainer.networks.lora_fa", "lycoris": "trainer.networks.lycoris_net",
             "oft_flux": "trainer.networks.oft_flux"}
# the builders of sd-scripts modules that read the block-wise network_args (block_dims, down_lr_weight …)
KOHYA_BLOCK_BUILDERS = ("lora", "lora_fa")


def network_type(lora_type: str) -> NetworkType:
    try:
        return NETWORK_TYPES[_LEGACY_NAMES.get(lora_type, lora_type)]
    except KeyError:
        raise ValueError(f"LoRA_type {lora_type!r} is not one of: {', '.join(LORA_TYPES)}") from None


def kohya_lora_type(value: str) -> str | None:
    """A kohya_ss GUI `LoRA_type` value as this studio's (legacy names renamed); None when not trainable here
    (Flux1 is Standard on a FLUX.1 base, mapped by the importer; the other families' types need model families
    the studio does not have)."""
    value = _LEGACY_NAMES.get(value, value)
    return value if value in NETWORK_TYPES else None


def lora_type_for(network_module: str, network_args: dict | str | list | None = None) -> str | None:
    """The `LoRA_type` of an sd-scripts command/TOML (`network_module` + `network_args`), e.g.
    ("lycoris.kohya", ["algo=loha"]) → "LyCORIS/LoHa"; None when no type here matches."""
    args = parse_network_args(network_args)
    if network_module == "networks.lora":
        return "Kohya LoCon" if args.get("conv_dim") else "Standard"
    if network_module == "networks.dylora":
        return "Kohya DyLoRA"
    if network_module == "networks.oft_flux":
        return "Flux1 OFT"
    if network_module == "networks.lora_fa":
        return "LoRA-FA"
    if network_module == "lycoris.kohya":
        algo = args.get("algo", "lora").strip('"').lower()
        algo = "locon" if algo == "lora" else algo
        for t in NETWORK_TYPES.values():
            if t.builder == "lycoris" and t.algo == algo:
                return t.lora_type
    return None


def parse_network_args(network_args: dict | str | list | None) -> dict[str, str]:
    """sd-scripts `network_args` in any of its spellings (a TOML list, one string, a dict) as a dict."""
    if not network_args:
        return {}
    if isinstance(network_args, dict):
        return {str(k): str(v) for k, v in network_args.items()}
    items = shlex.split(network_args) if isinstance(network_args, str) else [str(a) for a in network_args]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"network_args entry {item!r} is not key=value")
        out[key.strip()] = value.strip().strip('"')
    return out


def build_network(base, config):
    """Build (not yet apply) the network `config.LoRA_type` names on `base` (a BaseModel)."""
    kind = network_type(config.LoRA_type)
    if not kind.trains_on(base.family):
        raise ValueError(dit_refusal(kind, base.family))
    module = importlib.import_module(_BUILDERS[kind.builder])
    return module.build_from_config(base, config, kind)


DIT_LORA_TYPES: tuple[str, ...] = tuple(t.lora_type for t in NETWORK_TYPES.values() if t.dit)


def types_for(family: str) -> list[str]:
    """The LoRA_type values that train on a family (a trainer.families id)."""
    return [t.lora_type for t in NETWORK_TYPES.values() if t.trains_on(family)]


def dit_refusal(kind: NetworkType, family: str, family_id: str | None = None) -> str:
    """Why `kind` does not train on `family` (its id, or a name with `family_id`), and what does."""
    choices = ", ".join(types_for(family_id or family))
    if kind.families is not None:
        return (f"LoRA_type {kind.lora_type} is sd-scripts' {kind.network_module}, made for "
                f"{'/'.join(FAMILY_NAMES[f] for f in kind.families)} models only, not the {family} family. "
                f"Choose one of: {choices}")
    if kind.lora_type == "Kohya LoCon":
        why = "it adds the U-Net's convolutions, which this transformer does not have"
    elif kind.builder == "lora_fa":
        why = "sd-scripts' networks.lora_fa is written for the U-Net families (SD1, SD2, SDXL)"
    elif kind.builder == "dylora" or kind.random_ranks:
        why = "DyLoRA's per-step ranks are not built for the fused layers (qkv, linear1) of the original layout"
    else:
        why = (f"LyCORIS' {kind.algo} modules cannot run on the fused layers (qkv, linear1) that the original "
               "layout packs and diffusers splits")
    return (f"LoRA_type {kind.lora_type} is not available for the {family} family: {why}. "
            f"Choose one of: {choices} (DoRA: LyCORIS/LoCon, LoHa or LoKr with dora_wd)")


def builder_module(lora_type: str):
    return importlib.import_module(_BUILDERS[network_type(lora_type).builder])
