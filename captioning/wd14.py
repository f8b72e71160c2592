"""WD14 (SmilingWolf) tagger on onnxruntime: find/download the model, preprocess, batch, write tags."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import open_rgb_on_white
from .results import CaptionRun
from .runner import ProgressFn, caption_folder
from .tags import Labels, TagOptions, load_labels, select_tags

log = logging.getLogger(__name__)

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
DEFAULT_MODELS_DIR = Path("models") / "taggers"
# short name -> hub repo (kohya_ss GUI list; convnextv2 v2 is its default)
KNOWN_TAGGERS = {
    "convnextv2-v2": "SmilingWolf/wd-v1-4-convnextv2-tagger-v2",
    "convnext-v2": "SmilingWolf/wd-v1-4-convnext-tagger-v2",
    "vit-v2": "SmilingWolf/wd-v1-4-vit-tagger-v2",
    "swinv2-v2": "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
    "moat-v2": "SmilingWolf/wd-v1-4-moat-tagger-v2",
    "vit-v3": "SmilingWolf/wd-vit-tagger-v3",
    "convnext-v3": "SmilingWolf/wd-convnext-tagger-v3",
    "swinv2-v3": "SmilingWolf/wd-swinv2-tagger-v3",
    "vit-large-v3": "SmilingWolf/wd-vit-large-tagger-v3",
    "eva02-large-v3": "SmilingWolf/wd-eva02-large-tagger-v3",
}
DEFAULT_REPO_ID = KNOWN_TAGGERS["convnextv2-v2"]
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class TaggerNotFoundError(FileNotFoundError):
    """The tagger files are neither on disk nor downloadable; the message says where to put them."""


def is_tagger_folder(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / TAGS_FILE).is_file()


def resolve_repo_id(repo_id: str) -> str:
    repo_id = KNOWN_TAGGERS.get(repo_id, repo_id)
    if not _REPO_RE.match(repo_id) or ".." in repo_id:
        raise ValueError(
            f"repo_id {repo_id!r} is not a Hugging Face repo id (owner/name); known taggers: "
            + ", ".join(KNOWN_TAGGERS.values())
        )
    return repo_id


def resolve_tagger(
    model_dir: str | os.PathLike | None = None,
    repo_id: str = DEFAULT_REPO_ID,
    force_download: bool = False,
    offline: bool | None = None,
) -> Path:
    """Folder holding model.onnx + selected_tags.csv.

    `model_dir` may be that folder itself, or a store (default models/taggers) in which the repo
    lives as `<owner>_<name>/` (kohya's layout). Missing files are downloaded from the hub unless
    offline (HF_HUB_OFFLINE) or unreachable, in which case the error names the files and the folder.
    """
    store = Path(model_dir) if model_dir else DEFAULT_MODELS_DIR
    if is_tagger_folder(store) and not force_download:
        return store
    repo_id = resolve_repo_id(repo_id)
    target = store / repo_id.replace("/", "_")
    if is_tagger_folder(target) and not force_download:
        return target
    if offline is None:
        from .hub import hub_offline

        offline = hub_offline()
    hint = (
        f"Put {MODEL_FILE} and {TAGS_FILE} from https://huggingface.co/{repo_id}/tree/main into "
        f"{target.resolve()} (or pass --model_dir to a folder that holds both files)."
    )
    if offline:
        raise TaggerNotFoundError(f"Tagger {repo_id} is not on disk and the hub cannot be reached (offline: "
                                  f"HF_HUB_OFFLINE is set or no network answered). {hint}")
    try:
        from huggingface_hub import hf_hub_download

        for name in (TAGS_FILE, MODEL_FILE):
            hf_hub_download(repo_id, name, local_dir=target, force_download=force_download)
    except Exception as exc:
        raise TaggerNotFoundError(
            f"Tagger {repo_id} is not on disk and could not be downloaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). {hint}"
        ) from exc
    return target


def choose_providers(available: list[str] | None = None) -> list[str]:
    """CUDA when onnxruntime-gpu offers it, then CPU (always last as the fallback)."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    order = ["CUDAExecutionProvider", "ROCMExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in order if p in available]
    return chosen or ["CPUExecutionProvider"]


@dataclass
class Tagger:
    session: object  # onnxruntime.InferenceSession
    labels: Labels
    input_name: str
    size: int  # square input side read from the model
    fixed_batch: int | None  # a positive int when the model was exported with a fixed batch
    folder: Path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)


def load_tagger(folder: str | os.PathLike, providers: list[str] | None = None, threads: int = 0) -> Tagger:
    import onnxruntime as ort

    folder = Path(folder)
    if not is_tagger_folder(folder):
        raise TaggerNotFoundError(f"{folder} must contain {MODEL_FILE} and {TAGS_FILE}")
    labels = load_labels(folder / TAGS_FILE)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(folder / MODEL_FILE), so, providers=providers or choose_providers())
    except Exception as exc:
        raise ValueError(f"{folder / MODEL_FILE} could not be loaded by onnxruntime: {exc}") from exc
    inp = session.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise ValueError(
            f"{folder / MODEL_FILE}: input {inp.name} has shape {shape}; a WD14 tagger takes NHWC "
            "[batch, size, size, 3]"
        )
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return Tagger(session, labels, inp.name, int(shape[1]), fixed, folder)


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> (size, size, 3) float32 BGR 0..255: white centred square pad, bicubic resize.

    As SmilingWolf's reference app: pad first (so the aspect ratio is kept), resize only when needed,
    no normalisation (the ONNX graph does it).
    """
    w, h = img.size
    side = max(w, h)
    if (w, h) != (side, side):
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1])


def load_for_tagger(path: Path, size: int) -> np.ndarray:
    return preprocess(open_rgb_on_white(path), size)


def tag_images(
    folder: str | os.PathLike,
    tagger: Tagger | None = None,
    *,
    model_dir: str | os.PathLike | None = None,
    repo_id: str = DEFAULT_REPO_ID,
    force_download: bool = False,
    options: TagOptions | None = None,
    caption_extension: str = ".txt",
    existing: str = "skip",
    append_tags: bool = False,
    recursive: bool = False,
    batch_size: int = 8,
    max_data_loader_n_workers: int = 2,
    providers: list[str] | None = None,
    progress: ProgressFn | None = None,
) -> CaptionRun:
    """Tag every image in `folder` and write `<image stem><caption_extension>` next to it.

    existing: "skip" (default: keep captions already there), "overwrite", or "append" (add new tags,
    no duplicates); `append_tags=True` is kohya's spelling of existing="append". The model is found
    (or downloaded) only if some image needs tagging.
    Returns a CaptionRun (counts, captions, unreadable files, tag frequency, images/s).
    """
    options = options or TagOptions()

    def setup(run: CaptionRun):
        nonlocal tagger
        if tagger is None:
            tagger = load_tagger(resolve_tagger(model_dir, repo_id, force_download), providers)
        size, bs = tagger.size, batch_size
        if tagger.fixed_batch and tagger.fixed_batch != bs:
            run.warnings.append(
                f"{tagger.folder / MODEL_FILE} was exported with a fixed batch of {tagger.fixed_batch}; "
                f"using {tagger.fixed_batch} instead of batch_size={bs}"
            )
            bs = tagger.fixed_batch

        def infer(arrays: list[np.ndarray]) -> list[list[str]]:
            return [select_tags(p, tagger.labels, options) for p in tagger.predict(np.stack(arrays))]

        return (lambda path: load_for_tagger(path, size)), infer, bs

    return caption_folder(
        folder,
        setup,
        caption_extension=caption_extension,
        existing="append" if append_tags else existing,
        separator=options.caption_separator,
        recursive=recursive,
        batch_size=batch_size,
        workers=max_data_loader_n_workers,
        progress=progress,
    )
