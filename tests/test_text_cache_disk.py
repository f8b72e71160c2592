"""FLUX.1's text-encoder outputs cached on disk: a second run reads them instead of running CLIP-L and T5, and a
changed caption, T5 max token length, T5 mask or encoder weight is encoded again (tiny FLUX, CPU, in-process)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer.config import validate_values
from trainer.config.kohya_import import import_kohya_json
from trainer.data.te_cache import CACHE_SUFFIX
from trainer.models import text_flux
from trainer.train.text import TextConditioner

CAPTIONS = ["a red circle", "a blue square on grass"]


@pytest.fixture(scope="module")
def flux():
    """The tiny FLUX.1's CLIP-L and T5 (as build_tiny_flux makes them, without the transformer and AE)."""
    from trainer.models.components import build_text_encoder
    from trainer.models.registry import get_architecture
    from trainer.models.t5 import build_t5_encoder, load_t5_tokenizer
    from trainer.models.tokenizers import load_tokenizer

    arch = get_architecture("tiny-flux")
    torch.manual_seed(0)
    encoders = [build_text_encoder(arch.config("text_encoder")).eval(),
                build_t5_encoder(arch.config("text_encoder_2")).eval()]
    tokenizers = [load_tokenizer(arch.path / "tokenizer"), load_t5_tokenizer(arch.path / "tokenizer_2")]
    return SimpleNamespace(text_encoders=encoders, tokenizers=tokenizers, extra={"variant": "dev"})


def conditioner(flux, t5_length=16, mask=False, encoders=None):
    """What build_text makes for a FLUX run, with T5 forwards counted."""
    cfg = SimpleNamespace(t5xxl_max_token_length=t5_length, apply_t5_attn_mask=mask)
    base = SimpleNamespace(**{**vars(flux), "text_encoders": encoders or flux.text_encoders})
    text = TextConditioner("flux", base.text_encoders, base.tokenizers,
                           tokenize=lambda captions: text_flux.tokenize(base, captions, cfg))
    text.t5_calls = []
    handle = base.text_encoders[1].register_forward_hook(lambda m, args, out: text.t5_calls.append(args[0].shape[0]))
    return text, handle


def cache(flux, folder, captions=CAPTIONS, **kw):
    text, handle = conditioner(flux, **kw)
    try:
        assert text.cache_outputs(captions, disk_dir=folder)
    finally:
        handle.remove()
    return text


def test_a_second_run_reads_the_outputs_from_disk_without_running_t5(flux, tmp_path):
    first = cache(flux, tmp_path)
    assert first.cache.stats == {"reused": 0, "computed": 2} and len(list(tmp_path.glob(f"*{CACHE_SUFFIX}"))) == 2
    second = cache(flux, tmp_path)
    assert second.cache.stats == {"reused": 2, "computed": 0} and second.t5_calls == []
    for caption in CAPTIONS:  # the same bytes come back (a file round trip, no recomputation)
        for name in ("hidden", "pooled"):
            assert torch.equal(first.cache.rows[caption][name], second.cache.rows[caption][name])
    hidden, pooled = second(CAPTIONS)
    assert hidden.shape[:2] == (2, 16) and pooled.shape[0] == 2


def test_a_changed_caption_is_encoded_again_and_the_others_are_reused(flux, tmp_path):
    cache(flux, tmp_path)
    changed = cache(flux, tmp_path, captions=[CAPTIONS[0], "a blue square on sand"])
    assert changed.cache.stats == {"reused": 1, "computed": 1} and changed.t5_calls == [1]


@pytest.mark.parametrize("change", [dict(t5_length=8), dict(mask=True)])
def test_a_changed_t5_length_or_mask_recomputes_every_caption(flux, tmp_path, change):
    cache(flux, tmp_path)
    again = cache(flux, tmp_path, **change)
    assert again.cache.stats == {"reused": 0, "computed": 2}
    assert again.cache.rows[CAPTIONS[0]]["hidden"].shape[0] == change.get("t5_length", 16)


def test_other_encoder_weights_recompute_and_a_broken_file_is_replaced(flux, tmp_path):
    import copy

    cache(flux, tmp_path)
    t5 = copy.deepcopy(flux.text_encoders[1])
    with torch.no_grad():
        next(t5.parameters()).add_(0.5)
    assert cache(flux, tmp_path, encoders=[flux.text_encoders[0], t5]).cache.stats["computed"] == 2
    for path in tmp_path.glob(f"*{CACHE_SUFFIX}"):
        path.write_bytes(path.read_bytes()[:100])  # a run killed mid-write by another tool
    assert cache(flux, tmp_path).cache.stats == {"reused": 0, "computed": 2}
    assert cache(flux, tmp_path).cache.stats == {"reused": 2, "computed": 0}


def test_the_disk_cache_implies_the_cache_and_train_t5xxl_refuses_it_in_words():
    config, problems = validate_values("lora", {"cache_text_encoder_outputs_to_disk": True,
                                                "network_train_unet_only": True})
    assert config.cache_text_encoder_outputs is True, "as sd-scripts: caching to disk caches"
    _, problems = validate_values("lora", {"cache_text_encoder_outputs_to_disk": True, "train_t5xxl": True,
                                           "network_train_unet_only": True})
    t5 = [p for p in problems if p.field == "train_t5xxl"]
    assert t5 and "cannot be cached" in t5[0].message and "untick" in t5[0].message
    _, problems = validate_values("lora", {"train_t5xxl": True, "network_train_unet_only": True})
    assert any(p.field == "train_t5xxl" and "network_train_unet_only" in p.message for p in problems)
    config, problems = validate_values("lora", {"train_t5xxl": True, "flux1_checkbox": True})
    assert config is not None and not [p for p in problems if p.field == "train_t5xxl"]


def test_kohya_ss_flux_disk_cache_key_imports():
    data = {"flux1_checkbox": True, "flux1_cache_text_encoder_outputs": True,
            "flux1_cache_text_encoder_outputs_to_disk": True, "network_train_unet_only": True}
    values, _, _ = import_kohya_json(data, "lora")
    assert values["cache_text_encoder_outputs_to_disk"] is True and values["cache_text_encoder_outputs"] is True
