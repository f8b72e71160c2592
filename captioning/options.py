"""The captioners' options, declared once: `python -m captioning basic|wd14|blip|git --help` and the
Utilities tab's widgets are both generated from these models (trainer/tools/optionmodel.py), so the
page and the CLI show the same options with the same defaults. Names are those of kohya's scripts
(tag_images_by_wd14_tagger.py, make_captions.py, make_captions_by_git.py) and of kohya_ss's Basic
Captioning form (tools/caption.py). No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel

from trainer.tools.optionmodel import topt

DTYPE = Literal["auto", "float32", "float16", "bfloat16"]


class _Common(BaseModel):
    train_data_dir: str = topt(..., "folder with the images", kind="dir", label="Image folder", positional=True)
    caption_extension: str = topt(".txt", "suffix of the caption files", label="Caption extension",
                                  aliases=("caption_extention",))
    recursive: bool = topt(False, "also caption images in sub-folders", label="Include sub-folders")
    batch_size: int = topt(1, "images per batch", label="Batch size")
    max_data_loader_n_workers: int = topt(2, "image decoding threads", label="Image decoding threads")
    overwrite: bool = topt(False, "replace existing captions (default: keep them)",
                           label="Overwrite existing captions")
    append_tags: bool = topt(False, "add to existing captions, no duplicates (not with overwrite)",
                             label="Append to existing captions", aliases=("append",))


class Wd14Options(_Common):
    batch_size: int = topt(8, "images per batch", label="Batch size")
    model_dir: Optional[str] = topt(None, "folder with model.onnx + selected_tags.csv, or the store holding "
                                    "<owner>_<repo>/ folders (default models/taggers)", kind="dir",
                                    label="Tagger folder")
    repo_id: Optional[str] = topt(None, "hub repo or short name (e.g. eva02-large-v3)", label="Repo id")
    force_download: bool = topt(False, "download the tagger again even when it is there", label="Force download")
    thresh: float = topt(0.35, "threshold for both categories", label="Threshold")
    general_threshold: Optional[float] = topt(None, "threshold of general tags (default: threshold)",
                                              label="General threshold")
    character_threshold: Optional[float] = topt(None, "threshold of character tags (default: threshold)",
                                                label="Character threshold")
    general_mcut_enabled: bool = topt(False, "MCut per image for general tags", label="MCut general tags")
    character_mcut_enabled: bool = topt(False, "MCut (>= 0.15) for characters", label="MCut character tags")
    undesired_tags: str = topt("", "tags never written, comma separated", label="Undesired tags")
    always_first_tags: str = topt("", "tags moved to the front when detected", label="Always-first tags")
    prefix: str = topt("", "tags always written first (e.g. a trigger word)", label="Prefix")
    postfix: str = topt("", "tags always written last", label="Postfix")
    character_tags_first: bool = topt(False, "character tags before general tags", label="Character tags first")
    use_rating_tags: bool = topt(False, "rating tag first", label="Rating tag first")
    use_rating_tags_as_last_tag: bool = topt(False, "rating tag last", label="Rating tag last")
    remove_underscore: bool = topt(True, "long_hair -> long hair (not kaomoji)", label="Remove underscores")
    escape_parentheses: bool = topt(False, r"( -> \( for A1111 prompts", label="Escape parentheses")
    tag_replacement: Optional[str] = topt(None, r"'src,dst;src2,dst2' (\, and \; escape)", label="Tag replacement")
    character_tag_expand: bool = topt(False, "name_(series) -> name, series", label="Expand character tags")
    caption_separator: str = topt(", ", "text between tags", label="Separator")
    tag_order: Literal["confidence", "model"] = topt("confidence", "order of the tags", label="Tag order")
    frequency_tags: bool = topt(False, "print tag frequencies", label="Print tag frequencies")
    cpu: bool = topt(False, "use the CPU even when CUDA is available", label="Use the CPU")


class BlipOptions(_Common):
    model: str = topt("Salesforce/blip-image-captioning-large", "hub id or local folder", kind="model",
                      label="Model")
    beam_search: bool = topt(True, "beam search (else nucleus sampling)", label="Beam search")
    num_beams: Optional[int] = topt(None, "beams of the beam search (default: the model's)", label="Beams")
    top_p: float = topt(0.9, "nucleus sampling's top p", label="Top p")
    temperature: float = topt(1.0, "sampling temperature", label="Temperature")
    min_length: Optional[int] = topt(None, "BLIP 5, BLIP-2 20 (new tokens)", label="Min length")
    max_length: Optional[int] = topt(None, "BLIP 75, BLIP-2 40 (new tokens)", label="Max length")
    repetition_penalty: Optional[float] = topt(None, "penalty of repeated tokens (default: the model's)",
                                               label="Repetition penalty")
    length_penalty: float = topt(1.0, "beam search's length penalty", label="Length penalty")
    text_prompt: str = topt("", "conditional prompt, removed from the caption", label="Text prompt")
    prefix: str = topt("", "text written before the caption", label="Prefix")
    postfix: str = topt("", "text written after the caption", label="Postfix")
    seed: int = topt(42, "random seed (nucleus sampling)", label="Seed")
    device: str = topt("auto", "auto, cpu or cuda", label="Device")
    dtype: DTYPE = topt("auto", "weights' precision", label="Precision")


class GitOptions(_Common):
    caption_extension: str = topt(".caption", "suffix of the caption files", label="Caption extension",
                                  aliases=("caption_extention",))
    model_id: str = topt("microsoft/git-large-textcaps", "hub id or local folder", kind="model", label="Model")
    max_length: int = topt(50, "longest caption (tokens)", label="Max length")
    remove_words: bool = topt(True, "drop phrases quoting text read off the image (\"with the words ...\")",
                              label='Remove quoted words ("with the words …")')
    prefix: str = topt("", "text written before the caption", label="Prefix")
    postfix: str = topt("", "text written after the caption", label="Postfix")
    device: str = topt("auto", "auto, cpu or cuda", label="Device")
    dtype: DTYPE = topt("auto", "weights' precision", label="Precision")


class BasicOptions(BaseModel):
    """kohya_ss's Basic Captioning form (tools/caption.py + the GUI's prefix/postfix and find/replace)."""

    train_data_dir: str = topt(..., "folder with the images", kind="dir", label="Image folder", positional=True)
    caption_extension: str = topt(".txt", "suffix of the caption files (.txt, .caption, .cap)",
                                  label="Caption extension", aliases=("caption_extention", "caption_file_ext"))
    overwrite: bool = topt(False, "write Caption text over existing captions too (default: only where there is "
                           "none)", label="Overwrite existing captions")
    recursive: bool = topt(False, "also the images in sub-folders", label="Include sub-folders")
    caption_text: str = topt("", "caption written for images without one", label="Caption text")
    prefix: str = topt("", "added before every caption unless it starts with it (e.g. a trigger word)",
                       label="Prefix")
    postfix: str = topt("", "added after every caption unless it ends with it", label="Postfix")
    find_text: str = topt("", "text replaced in every caption (case-sensitive)", label="Find text")
    replace_text: str = topt("", "what Find text becomes (empty: removed)", label="Replacement text")


@dataclass(frozen=True)
class Captioner:
    name: str
    help: str
    options: type[BaseModel]


CAPTIONERS: dict[str, Captioner] = {c.name: c for c in (
    Captioner("basic", "write a fixed caption, add a prefix/postfix, find/replace (kohya's Basic Captioning)",
              BasicOptions),
    Captioner("wd14", "tag images with a WD14 (SmilingWolf) ONNX tagger", Wd14Options),
    Captioner("blip", "caption images with BLIP or BLIP-2 (transformers)", BlipOptions),
    Captioner("git", "caption images with GIT (transformers), kohya's make_captions_by_git", GitOptions),
)}
