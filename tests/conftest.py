"""Shared fixtures: tiny Stable Diffusion models written in their real on-disk layouts.

``tiny_model_dir(family, layout="single_file", seed=0, suffix=".safetensors") -> Path``
    A session-scoped factory. ``family`` is "sd1", "sd2" (v-prediction) or "sdxl"; ``layout`` is
    "single_file" (original CompVis/SGM keys; ``suffix`` ".safetensors" or ".ckpt") or "diffusers"
    (a diffusers folder with model_index.json). Each (family, layout, seed, suffix) is generated once
    per test session by ``trainer.models.tiny.write_tiny_model`` and cached in a temporary folder, so
    the returned path is SHARED: treat it as read-only (copy it if a test must modify it).

    def test_something(tiny_model_dir):
        base = load_base_model(tiny_model_dir("sdxl"))

For the modules without files use ``trainer.models.tiny.build_tiny_components(family, seed)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trainer.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[tuple, Path] = {}

    def make(family: str, layout: str = "single_file", seed: int = 0, suffix: str = ".safetensors") -> Path:
        key = (family, layout, seed, suffix if layout == "single_file" else "")
        if key not in cache:
            name = f"tiny-{family}-seed{seed}"
            out = root / (name + suffix if layout == "single_file" else name)
            cache[key] = write_tiny_model(family, out, layout=layout, seed=seed)
        return cache[key]

    return make


# Modules whose tests build on each other or share an expensive module fixture run whole in one worker
# (`--dist loadfile`, without reordering). The longest goes first so the other worker takes everything else
# meanwhile: the browser suite is a day in the studio, its steps in order.
FIRST = ("test_e2e_browser.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: the rest keeps its order
