"""CLIP tokenizers without network access.

Order of sources for a tokenizer folder (``tokenizer`` / ``tokenizer_2``) of an architecture:
1. the folder itself when it holds ``vocab.json`` (diffusers folders, tiny test configs);
2. ``tokenizer_cache_dir/<repo id with / -> _>`` (Kohya's ``--tokenizer_cache_dir`` layout);
3. the Hugging Face hub cache (``local_files_only``), e.g. after any earlier online run;
4. open_clip's ``bpe_simple_vocab_16e6.txt.gz`` when the ``open-clip-torch`` package is installed —
   the same 49,408-token vocabulary CLIP-L and OpenCLIP use — written once to a user cache folder;
5. otherwise an error naming what to download and where to put it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from trainer.models.clip_bpe import read_open_clip_merges, write_tokenizer_folder

log = logging.getLogger(__name__)
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# The hub repo (and subfolder) each published tokenizer comes from.
HUB_SUBFOLDER = {"stabilityai/stable-diffusion-2": "tokenizer"}


class TokenizerUnavailableError(RuntimeError):
    pass


def load_tokenizer(folder: Path, spec: dict | None = None, *, tokenizer_cache_dir: Path | None = None):
    """A ``CLIPTokenizer`` for ``folder`` (step 1) or the published tokenizer ``spec`` describes."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(folder)
    if not spec:
        raise TokenizerUnavailableError(f"{folder} has no vocab.json/merges.txt and no known source to build it from")
    source, pad = spec["source"], spec.get("pad_token", "<|endoftext|>")
    if tokenizer_cache_dir:
        cached = Path(tokenizer_cache_dir) / source.replace("/", "_")
        if (cached / "vocab.json").is_file():
            return CLIPTokenizer.from_pretrained(cached, pad_token=pad)
    cached = _hub_cache_folder(source, HUB_SUBFOLDER.get(source))
    if cached is not None:
        return CLIPTokenizer.from_pretrained(cached, pad_token=pad)
    bpe = find_open_clip_bpe()
    if bpe is not None:
        out = _user_cache() / "tokenizers" / f"{source.replace('/', '_')}-from-open_clip"
        if not (out / "vocab.json").is_file():
            log.info("building the %s tokenizer from %s", source, bpe)
            write_tokenizer_folder(read_open_clip_merges(bpe), out, pad_token=pad)
        tok = CLIPTokenizer.from_pretrained(out)
        if tokenizer_cache_dir:  # like Kohya: populate the cache dir for the next run
            tok.save_pretrained(Path(tokenizer_cache_dir) / source.replace("/", "_"))
        return tok
    sub = HUB_SUBFOLDER.get(source)
    files = " ".join(f"{sub}/{f}" if sub else f for f in TOKENIZER_FILES)
    where = f" or copy them into {Path(tokenizer_cache_dir) / source.replace('/', '_')}/" if tokenizer_cache_dir else ""
    raise TokenizerUnavailableError(
        f"The CLIP tokenizer '{source}' is needed to load this checkpoint and is not available offline. "
        f"Fix: install the open_clip package (`pip install --no-deps open-clip-torch`, it ships the BPE vocabulary), "
        f"or download it once with `huggingface-cli download {source} {files}` (goes to the Hugging Face cache){where}.")


def _hub_cache_folder(repo_id: str, subfolder: str | None) -> Path | None:
    """The cached folder holding the repo's vocab.json + merges.txt, without any network access.
    (``from_pretrained(local_files_only=True)`` is not enough: transformers 5 then returns an empty
    tokenizer instead of failing.)"""
    from huggingface_hub import try_to_load_from_cache

    prefix = f"{subfolder}/" if subfolder else ""
    found = [try_to_load_from_cache(repo_id, prefix + name) for name in ("vocab.json", "merges.txt")]
    if all(isinstance(f, str) for f in found):
        return Path(found[0]).parent
    return None


def find_open_clip_bpe() -> Path | None:
    """open_clip's BPE file, located without importing open_clip (its import pulls torchvision)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / OPEN_CLIP_BPE
        if path.is_file():
            return path
    return None


def _user_cache() -> Path:
    base = os.environ.get("KOHYA_STUDIO_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(base) / "kohya_studio" if "KOHYA_STUDIO_CACHE" not in os.environ else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
