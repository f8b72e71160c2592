"""GIT captioning (Microsoft's GenerativeImage2Text, e.g. microsoft/git-large-textcaps) with
transformers, beside BLIP — kohya's make_captions_by_git.py, same option names.

GIT-TextCaps likes to read text in images ("a sign with the words 'open'"); `remove_words`
(kohya's default) drops those phrases so the caption describes the picture, not its lettering.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .blip import _resolve_device, _resolve_dtype, join_parts
from .images import open_rgb_on_white
from .results import CaptionRun
from .runner import ProgressFn, caption_folder

DEFAULT_GIT = "microsoft/git-large-textcaps"
# "... with the words 'x'", "... that says x", "a sign that reads x": text read off the image
_QUOTED = r"(?:\"[^\"]*\"|'[^']*'|\w+)"
WORD_PATTERNS = [
    re.compile(rf"\s*\b(?:has|with|and)\s+the\s+(?:words?|letters?|name|text)\s+{_QUOTED}"
               rf"(?:\s+(?:is|reads|that\s+says|that\s+reads|saying|that\s+states|that\s+is)\s+{_QUOTED})?", re.I),
    re.compile(rf"\s*\b(?:with\s+a\s+sign\s+)?that\s+(?:says|reads|states)\s+{_QUOTED}", re.I),
    re.compile(rf"\s*\b(?:saying|reading)\s+{_QUOTED}", re.I),
]


def remove_words(caption: str) -> str:
    """The caption without the phrases that quote text read off the image."""
    for pattern in WORD_PATTERNS:
        caption = pattern.sub("", caption)
    return re.sub(r"\s{2,}", " ", caption).strip()


@dataclass
class GitCaptioner:
    model: object
    processor: object
    device: str
    dtype: object
    source: str


def load_git(model_id: str = DEFAULT_GIT, device: str = "auto", dtype: str = "auto") -> GitCaptioner:
    """A GIT model (config model_type "git") and its processor, from a hub id or a local folder."""
    from pathlib import Path

    from transformers import AutoConfig, AutoProcessor, GitForCausalLM

    local = Path(model_id).expanduser()
    is_local = local.is_dir()
    if not is_local and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or local.exists()):
        raise FileNotFoundError(f"GIT model folder not found: {model_id} (give a folder or a hub id owner/name)")
    source = str(local) if is_local else model_id
    offline = is_local or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except Exception as exc:
        raise FileNotFoundError(
            f"Cannot load the GIT model {model_id!r}: it is not a save_pretrained folder and not in the Hugging "
            f"Face cache. Run `huggingface-cli download {model_id}` where there is internet, or pass a local "
            f"folder. ({type(exc).__name__})") from exc
    if config.model_type != "git":
        raise ValueError(f"{source} is a {config.model_type!r} model; GIT ('git') is needed (BLIP has its own tool)")
    device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    processor = AutoProcessor.from_pretrained(source, local_files_only=offline)
    net = GitForCausalLM.from_pretrained(source, local_files_only=offline, dtype=torch_dtype).to(device).eval()
    return GitCaptioner(net, processor, device, torch_dtype, source)


def caption_images(folder: str | os.PathLike, captioner: GitCaptioner | None = None, *, model_id: str = DEFAULT_GIT,
                   max_length: int = 50, remove_words_: bool = True, prefix: str = "", postfix: str = "",
                   caption_extension: str = ".caption", existing: str = "skip", recursive: bool = False,
                   batch_size: int = 1, max_data_loader_n_workers: int = 2, device: str = "auto",
                   dtype: str = "auto", progress: ProgressFn | None = None) -> CaptionRun:
    """Caption every image in `folder` with GIT (greedy decoding up to `max_length` tokens)."""
    if max_length < 1:
        raise ValueError(f"max_length={max_length} must be at least 1")

    def setup(run: CaptionRun):
        nonlocal captioner
        if captioner is None:
            captioner = load_git(model_id, device, dtype)
        return open_rgb_on_white, lambda imgs: _caption_batch(captioner, imgs, max_length, remove_words_,
                                                              prefix, postfix), batch_size

    return caption_folder(folder, setup, caption_extension=caption_extension, existing=existing, separator=", ",
                          recursive=recursive, batch_size=batch_size, workers=max_data_loader_n_workers,
                          progress=progress)


def _caption_batch(c: GitCaptioner, images: list, max_length: int, strip_words: bool, prefix: str,
                   postfix: str) -> list[str]:
    import torch

    pixels = c.processor(images=images, return_tensors="pt").pixel_values.to(c.device, c.dtype)
    with torch.inference_mode():
        out = c.model.generate(pixel_values=pixels, max_length=max_length, do_sample=False, num_beams=1)
    texts = c.processor.batch_decode(out, skip_special_tokens=True)
    return [join_parts(prefix, remove_words(t) if strip_words else t.strip(), postfix) for t in texts]
