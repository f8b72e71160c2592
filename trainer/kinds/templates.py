"""Caption templates for Textual Inversion when the images have no useful captions.

"object template" describes a thing (a character, a pet, a product); "style template" describes
a look (a painter, a rendering style). ``{}`` is replaced by the learned token(s). The sentences
vary framing, size, light and quality so that the embedding learns the subject, not the words
around it.
"""
from __future__ import annotations

import random

OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "a close-up photo of the {}",
    "a cropped photo of a {}",
    "a bright photo of the {}",
    "a dark photo of a {}",
    "a blurry photo of the {}",
    "a clear photo of a {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a photo of my {}",
    "a photo of the small {}",
    "a photo of the large {}",
    "a photo of a nice {}",
    "a photo of a weird {}",
    "a rendering of a {}",
    "a rendition of the {}",
    "an image of a {}",
    "a snapshot of the {}",
    "a detailed photo of a {}",
    "a low resolution photo of the {}",
    "a well lit photo of a {}",
    "a photo of the {} on a plain background",
    "a photo of a {} seen from the side",
)

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a picture in the style of {}",
    "an illustration in the style of {}",
    "a drawing in the style of {}",
    "artwork in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a dark painting in the style of {}",
    "a small painting in the style of {}",
    "a large painting in the style of {}",
    "a good painting in the style of {}",
    "a detailed illustration in the style of {}",
    "a sketch in the style of {}",
    "a landscape in the style of {}",
    "a portrait in the style of {}",
    "a still life in the style of {}",
    "{} style artwork",
    "a scene painted by {}",
)

TEMPLATES = {"object template": OBJECT_TEMPLATES, "style template": STYLE_TEMPLATES}


def template_list(name: str) -> tuple[str, ...]:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"template must be one of {['caption', *TEMPLATES]}, got {name!r}") from None


def template_caption(name: str, words: str, rng: random.Random) -> str:
    """One random sentence of template ``name`` with ``words`` in place of ``{}``."""
    return rng.choice(template_list(name)).format(words)
