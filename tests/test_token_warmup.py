"""A user turns on sd-scripts' token warm-up (token_warmup_min / token_warmup_step): early steps train on the first
few tags of each caption, later steps on more, until the warm-up ends — the same captions at the same steps after a
resume and with loader workers."""
from __future__ import annotations

import io
import json
import random

import pytest
from safetensors import safe_open

import trainer.config as tc
from test_data_helpers import make_cfg, make_concept, trainer_data
from test_train_support import lora_config, make_dataset
from test_train_text_cache import fresh_accelerator_state, run_in_process  # noqa: F401 (a fixture)
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.data.captions import process_caption
from trainer.data.options import CaptionOptions

TAGS = "sks, a, b, c, d, e"


def caption_at(step, caption=TAGS, total_steps=0, seed=0, **opts):
    options = CaptionOptions(**{"keep_tokens": 1, "token_warmup_step": 10, **opts})
    return process_caption(caption, options, random.Random(seed), 1, step, total_steps)


def test_captions_grow_from_token_warmup_min_tags_to_all_of_them_by_token_warmup_step():
    # sd-scripts: keep floor(step * (5 - min) / warmup) + min of the 5 tags after keep_tokens
    assert [caption_at(s) for s in (0, 3, 5, 9, 10, 50)] == [
        "sks, a", "sks, a, b", "sks, a, b, c", "sks, a, b, c, d", TAGS, TAGS]
    assert caption_at(0, token_warmup_min=3) == "sks, a, b, c"
    assert caption_at(None) == TAGS, "a caption built outside a run (no step) is whole"
    # below 1 it is a share of the run: 0.5 of 20 steps = 10
    assert caption_at(5, token_warmup_step=0.5, total_steps=20) == caption_at(5)


def test_the_warmup_cuts_in_file_order_before_shuffling_and_keeps_both_fixed_parts():
    marked = "photo ||| a, b, c, d ||| by artist"
    assert caption_at(0, marked, keep_tokens=0, keep_tokens_separator="|||") == "photo, a, by artist"
    # step 4 of 10 with token_warmup_min 2: the first 3 tags after "sks", in any order
    shuffled = {caption_at(4, token_warmup_min=2, shuffle_caption=True, seed=s) for s in range(20)}
    assert len(shuffled) > 1 and {frozenset(c.split(", ")) for c in shuffled} == {frozenset("sks a b c".split())}


def _warmup_captions(tmp_path, **overrides):
    """{global step: captions} of a 3-epoch run, 2 steps an epoch of 2 accumulated batches."""
    captions = {i: "sks, " + ", ".join(f"t{i}{k}" for k in range(9)) for i in range(4)}
    make_concept(tmp_path / "img", "1_toy", 4, size=(64, 64), captions=captions)
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), resolution="64", epoch=3, gradient_accumulation_steps=2,
                   keep_tokens=1, token_warmup_step=0.5, cache_latents=False, **overrides)
    dataset, steps = trainer_data(cfg)
    dataset.set_total_steps(6)  # what the run plans: the warm-up lasts floor(0.5 * 6) = 3 steps
    seen = {}
    for epoch in (1, 2, 3):
        for n, group in enumerate(steps.epoch(epoch)):
            seen[(epoch - 1) * 2 + n] = [c for batch in group for c in batch["captions"]]
    resumed = [c for group in steps.epoch(2, skip_steps=1) for batch in group for c in batch["captions"]]
    return seen, resumed


def test_each_batch_gets_the_captions_of_the_step_it_trains_in_with_or_without_workers_and_after_a_resume(
        tmp_path):
    seen, resumed = _warmup_captions(tmp_path / "a")
    tags = {step: sorted(c.count(",") for c in captions) for step, captions in seen.items()}
    # 1 + floor(step * 8 / 3) of the 9 tags after "sks"; both batches of a step alike
    assert tags == {0: [1, 1], 1: [3, 3], 2: [6, 6], 3: [9, 9], 4: [9, 9], 5: [9, 9]}
    assert resumed == seen[3]
    with_workers, _ = _warmup_captions(tmp_path / "b", max_data_loader_n_workers=2)
    assert with_workers == seen


def test_token_warmup_is_refused_with_cached_text_encoder_outputs_and_read_from_every_source(tmp_path):
    _, problems = tc.validate_values("lora", {"token_warmup_step": 100, "cache_text_encoder_outputs": True,
                                              "network_train_unet_only": True})
    [problem] = [p for p in problems if p.field == "cache_text_encoder_outputs"]
    assert "token_warmup_step" in problem.message
    data = json.load(open("tests/data/kohya_lora_v26.json"))
    data["additional_parameters"] = "--token_warmup_step 0.1 --token_warmup_min 2"
    (tmp_path / "kohya.json").write_text(json.dumps(data))
    loaded = tc.load_config_file(tmp_path / "kohya.json")
    assert (loaded.config.token_warmup_step, loaded.config.token_warmup_min) == (0.1, 2)
    assert not loaded.ignored_keys
    exported = sd_scripts_export(loaded.config).toml_data
    assert (exported["token_warmup_step"], exported["token_warmup_min"]) == (0.1, 2)
    # a dataset TOML sets it per subset, over the options
    make_concept(tmp_path / "img", "toy", 1, size=(64, 64))
    (tmp_path / "d.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "img" / "toy"}"\n'
                                     "token_warmup_step = 50\ntoken_warmup_min = 3\n", encoding="utf-8")
    from trainer.data.dataset_toml import load_dataset_config

    [spec], problems = load_dataset_config(tmp_path / "d.toml", make_cfg(token_warmup_step=5))
    caption = spec.subsets[0].caption
    assert (caption.token_warmup_step, caption.token_warmup_min) == (50, 3) and not problems


def test_a_lora_run_with_token_warmup_trains_its_first_steps_on_shorter_captions(
        tmp_path, tiny_model_dir, monkeypatch, fresh_accelerator_state):  # noqa: F811
    concept = make_dataset(tmp_path / "data", images=2) / "1_toy"
    for i, image in enumerate(sorted(concept.glob("*.png"))):  # named with a face box, as sd-scripts' tool writes
        image.rename(concept / f"toy{i}_40_24_16_16.png")
        image.with_suffix(".txt").unlink()
        (concept / f"toy{i}_40_24_16_16.txt").write_text("toy, t1, t2, t3, t4, t5, t6, t7\n", encoding="utf-8")
    config = lora_config(tiny_model_dir("sd1"), tmp_path / "data", tmp_path / "out", epoch=3, save_every_n_epochs=0,
                         keep_tokens=1, token_warmup_step=0.5, cache_latents=False, face_crop_aug_range="2.0,4.0")
    events, seen, _ = run_in_process(monkeypatch, config)

    plan = next(e for e in events if e["type"] == "plan")
    assert plan["total_steps"] == 6  # the warm-up: floor(0.5 * 6) = 3 steps
    assert [c.count(",") + 1 for c in seen["captions"]] == [2, 4, 6, 8, 8, 8]
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as f:
        assert f.metadata()["ss_face_crop_aug_range"] == "(2.0, 4.0)"
