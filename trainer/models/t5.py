"""T5 encoder (FLUX.1 / SD3 text encoder) from a config dict, and its tokenizer offline."""
from __future__ import annotations

from pathlib import Path

from trainer.models.tokenizers import TokenizerUnavailableError


def build_t5_encoder(config: dict):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")})
    return T5EncoderModel(cfg)


def load_t5_tokenizer(folder: Path, spec: dict | None = None, *, tokenizer_cache_dir: Path | None = None):
    """The folder's own tokenizer (tiny models ship one), else the published one from a local cache."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file():
        return T5TokenizerFast.from_pretrained(folder)
    source = (spec or {}).get("source", "google/t5-v1_1-xxl")
    candidates = []
    if tokenizer_cache_dir:
        candidates.append(Path(tokenizer_cache_dir) / source.replace("/", "_"))
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, "tokenizer.json")  # the hub cache, no network
    if isinstance(found, str):
        candidates.append(Path(found).parent)
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file():
            return T5TokenizerFast.from_pretrained(c)
    raise TokenizerUnavailableError(
        f"The T5 tokenizer '{source}' is needed and is not available offline. Fix: load the model's diffusers "
        f"folder (it has tokenizer_2/), or download it once with `huggingface-cli download {source} "
        "tokenizer.json tokenizer_config.json special_tokens_map.json spiece.model`"
        + (f", or copy those files into {Path(tokenizer_cache_dir) / source.replace('/', '_')}/" if tokenizer_cache_dir
           else "") + ".")
