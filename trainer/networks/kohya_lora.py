"""Standard and Kohya LoCon (sd-scripts networks.lora) built from a training config: the registry's
"lora" builder, also used by Kohya DyLoRA and LoRA-FA (same file layout, another module class)."""
from __future__ import annotations

import logging

from .lora_module import LoRAModule
from .naming import target_filter_for
from .network import LoRANetwork, create_network, create_network_from_weights
from .options import BLOCK_OPTIONS

logger = logging.getLogger(__name__)


def config_dropouts(config) -> dict:
    return dict(dropout=config.network_dropout or None,
                rank_dropout=config.rank_dropout or None,
                module_dropout=config.module_dropout or None)


def config_blocks(config) -> dict[str, str]:
    """The block-wise options that are set, as sd-scripts' network_args strings."""
    return {k: getattr(config, k).strip() for k in BLOCK_OPTIONS if getattr(config, k).strip()}


def build_from_config(base, config, kind) -> LoRANetwork:
    """Standard / Kohya LoCon from a training config (registry entry point); loads `network_weights`."""
    return build_lora_like(base, config, kind)


def build_lora_like(base, config, kind, module_class: type = LoRAModule, module_kwargs=None,
                    extra_args=None) -> LoRANetwork:
    unet_only = bool(config.network_train_unet_only)
    te_only = bool(config.network_train_text_encoder_only)
    dropouts = config_dropouts(config)
    weights = config.network_weights
    if weights and config.dim_from_weights:  # ranks from the file, modules of this type (LoRA-FA keeps A frozen)
        return create_network_from_weights(weights, base, module_class=module_class, module_kwargs=module_kwargs,
                                           network_module=kind.network_module, **dropouts)
    blocks = config_blocks(config)
    conv = kind.uses_conv_dim
    network = create_network(
        base, network_dim=config.network_dim, network_alpha=config.network_alpha,
        conv_dim=config.conv_dim if conv else 0, conv_alpha=config.conv_alpha if conv else None,
        train_unet=not te_only, train_text_encoder=not unet_only, blocks=blocks, module_class=module_class,
        module_kwargs=module_kwargs, network_module=kind.network_module,
        extra_args={**blocks, **dict(extra_args or {})}, target_filter=target_filter_for(base.family, config),
        **dropouts)
    if weights:
        result = network.load_weights(weights)
        logger.info("continuing from %s: %d modules loaded", weights, len(result.loaded))
    return network
