"""VAE override (Kohya's ``--vae``): a single file (original or diffusers keys) or a diffusers folder."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.models.checkpoint_io import CheckpointError, read_checkpoint


def load_vae(path: str | Path, base, *, dtype: torch.dtype = torch.float32):
    """An ``AutoencoderKL`` for ``base`` (a ``BaseModel``); keeps the base family's latent scaling."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from trainer.models.single_file import assign_weights

    path = Path(path).expanduser()
    scaling = base.vae.config.scaling_factor
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else ""
        if not (path / sub / "config.json").is_file():
            raise CheckpointError(f"{path}: not a VAE folder (config.json missing) nor a diffusers model folder with vae/")
        vae = AutoencoderKL.from_pretrained(path, subfolder=sub or None, torch_dtype=dtype)
    elif path.is_file():
        state_dict, _ = read_checkpoint(path)
        config = dict(base.vae.config)
        if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state_dict):
            converted = state_dict  # already diffusers keys (diffusion_pytorch_model.safetensors)
        elif any(k.startswith(("encoder.down.", "first_stage_model.encoder.", "vae.encoder.")) for k in state_dict):
            converted = convert_ldm_vae_checkpoint(state_dict, config)
        else:
            raise CheckpointError(f"{path} does not contain VAE weights (no encoder/decoder keys). "
                                  "Choose a VAE .safetensors/.ckpt file or a diffusers VAE folder.")
        with init_empty_weights():
            vae = AutoencoderKL.from_config(config)
        assign_weights(vae, converted, dtype, path, "VAE")
    else:
        raise CheckpointError(f"{path}: VAE file or folder not found")
    vae.register_to_config(scaling_factor=scaling)
    return vae.eval().requires_grad_(False)
