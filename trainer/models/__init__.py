"""Stable Diffusion base models: loading (single file, diffusers folder, hub id), family detection,
offline configs/tokenizers, saving back, prompt encoding and tiny test models.

Public API (see docs/model_loading.md):
    load_base_model(path_or_id, *, family=None, v_parameterization=None, vae=None, dtype=torch.float32,
                    config_dir=None, tokenizer_cache_dir=None, cache_dir=None) -> BaseModel
    save_single_file(model, path, dtype=torch.float16, *, family=None, v_prediction=None, ...) -> Path
    save_diffusers(model, folder, *, family=None, v_prediction=None, dtype=None) -> Path
    encode_prompt(base, input_ids_per_encoder, clip_skip=None) -> (hidden_states, pooled | None)
    tokenize_prompt(base, captions, max_token_length=None) -> [input_ids per encoder]
    trainer.models.tiny: build_tiny_components(family, seed), write_tiny_model(family, out, layout, seed)
"""

from trainer.models.checkpoint_io import CheckpointError
from trainer.models.loader import BaseModel, load_base_model
from trainer.models.saving import save_diffusers, save_single_file
from trainer.models.text import encode_prompt, sdxl_time_ids, tokenize_prompt

__all__ = ["BaseModel", "CheckpointError", "encode_prompt", "load_base_model", "save_diffusers",
           "save_single_file", "sdxl_time_ids", "tokenize_prompt"]
