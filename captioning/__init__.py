"""Captioning and dataset tools: WD14 tagger (onnxruntime), BLIP/BLIP-2 and GIT (transformers), caption files,
Kohya folder preparation, repeat balancing, aspect-ratio grouping and the step/epoch calculator.

Plain functions for the GUI and `python -m captioning ...`; each returns a structured result.
Heavy libraries (onnxruntime, torch, transformers) load only when a model is actually needed.
"""

from importlib import import_module

_EXPORTS = {
    "tag_images": "wd14", "load_tagger": "wd14", "resolve_tagger": "wd14", "KNOWN_TAGGERS": "wd14",
    "TaggerNotFoundError": "wd14", "TagOptions": "tags", "select_tags": "tags",
    "caption_images": "blip", "load_captioner": "blip", "load_git": "git", "group_images": "aspect_groups",
    "write_caption": "writer", "CaptionRun": "results",
    "prepare_training_folders": "dataset_tools", "plan_balance": "dataset_tools", "apply_balance": "dataset_tools",
    "scan_concepts": "steps", "steps_from_epochs": "steps", "epochs_from_steps": "steps",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'captioning' has no attribute {name!r}")
