"""BLIP and BLIP-2 captioning with transformers, from a hub id or a local folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .images import open_rgb_on_white
from .results import CaptionRun
from .runner import ProgressFn, caption_folder

DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"
DEFAULT_BLIP2 = "Salesforce/blip2-opt-2.7b"
DTYPES = ("auto", "float32", "float16", "bfloat16")
# kohya make_captions.py (BLIP) and the kohya_ss GUI BLIP-2 tab defaults
KIND_DEFAULTS = {
    "blip": dict(min_length=5, max_length=75, num_beams=1, beam_penalty=1.0, sample_penalty=1.1),
    "blip-2": dict(min_length=20, max_length=40, num_beams=5, beam_penalty=1.5, sample_penalty=1.0),
}


@dataclass
class Captioner:
    kind: str  # "blip" or "blip-2"
    model: object
    processor: object
    device: str
    dtype: object  # torch.dtype
    source: str


def _resolve_device(device: str) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA GPU; use device='cpu'")
    return device


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_captioner(model: str = DEFAULT_BLIP, device: str = "auto", dtype: str = "auto") -> Captioner:
    """Load BLIP or BLIP-2 (told apart by config.json's model_type) with its processor."""
    from transformers import AutoConfig

    local = Path(model).expanduser()
    is_local = local.is_dir()
    looks_local = model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or model[1:2] == ":"
    if not is_local and (looks_local or local.exists()):
        raise FileNotFoundError(f"Captioning model folder not found: {model} (give a folder or a hub id owner/name)")
    source = str(local) if is_local else model
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour it when set later (GUI, tests)
    # and without a network answer ask only the local cache (no half a minute of hub retries)
    from .hub import hub_offline

    offline = is_local or hub_offline()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except Exception as exc:
        where = (
            f"{local} must hold config.json, the weights and the processor files (save_pretrained layout)"
            if is_local
            else f"{model!r} is not in the Hugging Face cache and could not be downloaded"
            f"{' (offline: HF_HUB_OFFLINE is set or no network answered)' if offline else ''}; run "
            f"`huggingface-cli download {model}` where there is internet, or pass --model to a local folder"
        )
        raise FileNotFoundError(f"Cannot load captioning model: {where}. ({type(exc).__name__})") from exc
    kind = config.model_type
    if kind == "blip":
        from transformers import BlipForConditionalGeneration as ModelCls
        from transformers import BlipProcessor as ProcCls
    elif kind == "blip-2":
        from transformers import Blip2ForConditionalGeneration as ModelCls
        from transformers import Blip2Processor as ProcCls
    else:
        raise ValueError(f"{source} is a {kind!r} model; BLIP ('blip') or BLIP-2 ('blip-2') is needed")
    device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    processor = ProcCls.from_pretrained(source, local_files_only=offline)
    import transformers

    # transformers renamed torch_dtype= to dtype= in 4.56; pyproject allows older releases
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    net = ModelCls.from_pretrained(source, local_files_only=offline, **{key: torch_dtype}).to(device).eval()
    return Captioner(kind, net, processor, device, torch_dtype, source)


def join_parts(prefix: str, content: str, postfix: str) -> str:
    """The kohya_ss GUI's add_pre_postfix: single spaces, empty parts left out."""
    return " ".join(p.strip() for p in (prefix, content, postfix) if p and p.strip())


def generation_kwargs(
    kind: str,
    beam_search: bool,
    num_beams: int | None,
    top_p: float,
    temperature: float,
    min_length: int | None,
    max_length: int | None,
    repetition_penalty: float | None,
    length_penalty: float,
) -> dict:
    d = KIND_DEFAULTS[kind]
    lo = d["min_length"] if min_length is None else min_length
    hi = d["max_length"] if max_length is None else max_length
    if lo < 0 or hi < 1 or lo > hi:
        raise ValueError(f"min_length={lo} / max_length={hi}: need 0 <= min_length <= max_length")
    # BLIP counts the whole decoded text (kohya); BLIP-2's decoder also sees the image tokens, so new tokens
    kw = dict(min_length=lo, max_length=hi) if kind == "blip" else dict(min_new_tokens=lo, max_new_tokens=hi)
    if beam_search:
        kw.update(
            num_beams=d["num_beams"] if num_beams is None else num_beams,
            do_sample=False,
            repetition_penalty=d["beam_penalty"] if repetition_penalty is None else repetition_penalty,
        )
        if kw["num_beams"] > 1:
            kw["length_penalty"] = length_penalty
    else:
        kw.update(
            do_sample=True,
            top_p=top_p,
            temperature=temperature,
            num_beams=1,
            repetition_penalty=d["sample_penalty"] if repetition_penalty is None else repetition_penalty,
        )
    return kw


def caption_images(
    folder: str | os.PathLike,
    captioner: Captioner | None = None,
    *,
    model: str = DEFAULT_BLIP,
    beam_search: bool = True,
    num_beams: int | None = None,
    top_p: float = 0.9,
    temperature: float = 1.0,
    min_length: int | None = None,
    max_length: int | None = None,
    repetition_penalty: float | None = None,
    length_penalty: float = 1.0,
    text_prompt: str = "",
    prefix: str = "",
    postfix: str = "",
    caption_extension: str = ".txt",
    existing: str = "skip",
    recursive: bool = False,
    batch_size: int = 1,
    max_data_loader_n_workers: int = 2,
    seed: int | None = 42,
    device: str = "auto",
    dtype: str = "auto",
    progress: ProgressFn | None = None,
) -> CaptionRun:
    """Caption every image in `folder` with BLIP / BLIP-2 into `<stem><caption_extension>`.

    beam_search=False uses nucleus sampling (top_p, temperature). Lengths left as None take the
    model kind's defaults (BLIP 5..75 tokens as kohya, BLIP-2 20..40 new tokens as the kohya_ss GUI).
    `text_prompt` conditions the caption (e.g. "a photography of", or "Question: ... Answer:" for
    BLIP-2); the prompt is removed from the written caption.
    """
    import torch

    def setup(run: CaptionRun):
        nonlocal captioner
        if captioner is None:
            captioner = load_captioner(model, device, dtype)
        gen = generation_kwargs(
            captioner.kind, beam_search, num_beams, top_p, temperature,
            min_length, max_length, repetition_penalty, length_penalty,
        )  # fmt: skip
        if seed is not None:
            torch.manual_seed(seed)
        return open_rgb_on_white, lambda imgs: _caption_batch(captioner, imgs, gen, text_prompt, prefix, postfix), batch_size

    return caption_folder(
        folder,
        setup,
        caption_extension=caption_extension,
        existing=existing,
        separator=", ",
        recursive=recursive,
        batch_size=batch_size,
        workers=max_data_loader_n_workers,
        progress=progress,
    )


def _caption_batch(c: Captioner, images: list, gen: dict, text_prompt: str, prefix: str, postfix: str) -> list[str]:
    import torch

    kwargs = {"images": images, "return_tensors": "pt"}
    if text_prompt:
        kwargs["text"] = [text_prompt] * len(images)
    inputs = c.processor(**kwargs).to(c.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(c.dtype)
    with torch.inference_mode():
        out = c.model.generate(**inputs, **gen)
    texts = c.processor.batch_decode(out, skip_special_tokens=True)
    prompt = text_prompt.strip().lower()
    captions = []
    for t in texts:
        t = t.strip()
        if prompt and t.lower().startswith(prompt):  # BLIP echoes a conditional prompt
            t = t[len(prompt) :].strip()
        captions.append(join_parts(prefix, t, postfix))
    return captions
