"""Frozen text encoders: a user's captions are encoded once, before training, and the encoders then stay
idle (on a GPU they leave the device); captions that change every step are still encoded per step."""
from __future__ import annotations

import io
import json
import random

import pytest
import torch
from test_train_support import lora_config, make_dataset, run_trainer, write_config


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def add_class_images(folder, images: int = 2):
    """reg_data_dir with `1_shape` class images and no caption files: their caption is the class name."""
    from trainer.train.demo import draw

    concept = folder / "1_shape"
    concept.mkdir(parents=True)
    for i in range(images):
        draw("green", "square").resize((64, 64)).save(concept / f"shape_{i}.png")
    return folder


def count_forwards(modules, counter: dict, key_of):
    for m in modules:
        m.register_forward_hook(lambda *_: counter.__setitem__(key_of(), counter.get(key_of(), 0) + 1))


def run_in_process(monkeypatch, config):
    """Train in this process; count text-encoder forwards while setting up and while training."""
    from trainer.events import EventWriter
    from trainer.train import run as run_module
    from trainer.train import setup
    from trainer.train.stop import StopSignal

    seen = {"phase": "setup", "captions": [], "text": None}
    forwards: dict[str, int] = {}
    real_build_text, real_train = setup.build_text, run_module.TrainingRun.train

    def build_text(config, base, *args, **kwargs):
        count_forwards(base.text_encoders, forwards, lambda: seen["phase"])
        text = seen["text"] = real_build_text(config, base, *args, **kwargs)
        text.register_forward_pre_hook(lambda _, args: seen["captions"].extend(args[0]))
        return text

    def train(self):
        seen["phase"] = "training"
        return real_train(self)

    monkeypatch.setattr(setup, "build_text", build_text)
    monkeypatch.setattr(run_module.TrainingRun, "train", train)
    stream = io.StringIO()
    code = run_module.run_training(config, EventWriter(stream=stream), StopSignal())
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 0, events[-1]
    return events, seen, forwards

def test_fixed_captions_are_all_encoded_before_the_first_step_and_the_encoders_then_stay_idle(
        tmp_path, tiny_model_dir, monkeypatch, fresh_accelerator_state):
    data = make_dataset(tmp_path / "data", images=4)
    config = lora_config(tiny_model_dir("sd1"), data, tmp_path / "out", epoch=2, network_train_unet_only=True,
                         reg_data_dir=str(add_class_images(tmp_path / "reg")), caption_prefix="photo of",
                         cache_text_encoder_outputs_to_disk=True)
    events, seen, forwards = run_in_process(monkeypatch, config)

    types = [e["type"] for e in events]
    text_cache = [e for e in events if e["type"] == "cache" and e["what"] == "text"]
    assert text_cache and types.index("cache") < types.index("step")
    assert text_cache[-1]["done"] == text_cache[-1]["total"] == 5  # 4 captions + the class images' one
    assert forwards.get("setup", 0) >= 1
    assert forwards.get("training", 0) == 0
    # every caption training asked for (prefixed, class images' too) came from the cache
    cached = set(seen["text"].cache.rows)
    assert set(seen["captions"]) == cached and "photo of shape" in cached
    assert len(seen["text"].encoders) == 0, "the encoders are no longer part of the trained model"
    # ...and were written to the image folder's cache for the next run (test_text_cache_disk.py: their reuse)
    assert len(list((data / ".text_encoder_cache").glob("*.te.safetensors"))) == 5
    assert seen["text"].cache.stats == {"reused": 0, "computed": 5}


def test_with_shuffle_caption_the_conditioner_still_encodes_per_step(
        tmp_path, tiny_model_dir, monkeypatch, fresh_accelerator_state):
    concept = make_dataset(tmp_path / "data", images=2) / "1_toy"
    for i, txt in enumerate(sorted(concept.glob("*.txt"))):
        txt.write_text(f"toy, tag{i}, red, round, small, shiny, plain\n", encoding="utf-8")
    config = lora_config(tiny_model_dir("sd1"), tmp_path / "data", tmp_path / "out", epoch=3,
                         network_train_unet_only=True, shuffle_caption=True, keep_tokens=1)
    events, seen, forwards = run_in_process(monkeypatch, config)

    assert not [e for e in events if e["type"] == "cache" and e["what"] == "text"]
    assert seen["text"].cache is None
    assert len(set(seen["captions"])) > 2, "shuffled captions differ between epochs"
    assert forwards.get("training", 0) >= len(set(seen["captions"]))  # each new order is encoded when it comes


def test_cache_text_encoder_outputs_names_the_subset_whose_captions_change(
        tmp_path, tiny_model_dir, monkeypatch, fresh_accelerator_state):
    data = make_dataset(tmp_path / "data", images=2)
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{data / "1_toy"}"\n'
                    'shuffle_caption = true\n', encoding="utf-8")
    config = lora_config(tiny_model_dir("sd1"), data, tmp_path / "out", epoch=1, network_train_unet_only=True,
                         cache_text_encoder_outputs=True, dataset_config=str(toml))
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 1 and events[-1]["type"] == "failed"
    assert "1_toy" in events[-1]["message"] and "shuffle_caption" in events[-1]["message"]
    assert "cache_text_encoder_outputs" in events[-1]["hint"]
    assert "step" not in [e["type"] for e in events]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cached_conditioning_equals_uncached_conditioning_for_the_same_captions(family):
    from trainer.models.tiny import build_tiny_components
    from trainer.train.text import TextConditioner

    parts = build_tiny_components(family, 0)
    encoders = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
    tokenizers = [parts[k] for k in ("tokenizer", "tokenizer_2") if k in parts]
    args = (family, encoders, tokenizers)
    captions = ["toy, red circle", "toy", "", "photo of shape, " + "blue square, " * 40]
    cached = TextConditioner(*args, clip_skip=2, max_token_length=150)
    assert cached.cache_outputs(captions, batch_size=3)
    plain = TextConditioner(*args, clip_skip=2, max_token_length=150, memoize=False)
    forwards: dict[str, int] = {}
    count_forwards(encoders, forwards, lambda: "calls")

    batch = random.Random(0).choices(captions, k=6)
    with torch.no_grad():
        hidden, pooled = cached(batch)
        assert forwards == {}, "a cached caption needs no text-encoder forward"
        want_hidden, want_pooled = plain(batch)
    torch.testing.assert_close(hidden, want_hidden)
    if family == "sdxl":
        torch.testing.assert_close(pooled, want_pooled)
    else:
        assert pooled is None and want_pooled is None

    # a caption the dataset never had (a training kind may rewrite captions) is encoded once, then kept
    forwards.clear()
    with torch.no_grad():
        new, _ = cached(["toy, a new caption", "toy"])
        calls = forwards["calls"]
        again, _ = cached(["toy, a new caption"])
        assert forwards["calls"] == calls == len(encoders)
        torch.testing.assert_close(new, plain(["toy, a new caption", "toy"])[0])
    assert torch.equal(again[0], new[0])

def test_a_run_with_cache_text_encoder_outputs_on_tiny_sdxl_finishes_and_samples(tmp_path, tiny_model_dir):
    data = make_dataset(tmp_path / "images", images=2)
    config = lora_config(tiny_model_dir("sdxl"), data, tmp_path / "out", epoch=1, cache_text_encoder_outputs=True,
                         network_train_unet_only=True, sample_every_n_epochs=1,
                         sample_prompts="toy, red circle --w 64 --h 64 --s 2")
    rc, events, err = run_trainer(write_config(config, tmp_path / "cfg.json"))
    assert rc == 0, err[-3000:]
    types = [e["type"] for e in events]
    text_cache = [e for e in events if e["type"] == "cache" and e["what"] == "text"]
    assert text_cache[-1]["done"] == text_cache[-1]["total"] == 2
    assert types.index("cache") < types.index("step") < types.index("sample") < types.index("done")
    (sample,) = [e for e in events if e["type"] == "sample"]
    assert sample["prompt"] == "toy, red circle"
    assert len(list((tmp_path / "out" / "sample").glob("toy_e000001_00_*.png"))) == 1
    assert [e["kind"] for e in events if e["type"] == "saved"] == ["final"]


def test_the_preflight_reports_a_subset_whose_captions_change_before_any_model_loads(tmp_path):
    """The studio's check before Start finds what the run would fail on, with the field to fix."""
    from trainer.data.preflight import preflight

    data = make_dataset(tmp_path / "data", images=2)
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{data / "1_toy"}"\n'
                    'shuffle_caption = true\n', encoding="utf-8")
    model = tmp_path / "model.safetensors"  # preflight checks the base model exists; it is never loaded
    model.write_bytes(b"")
    config = lora_config(str(model), data, tmp_path / "out", epoch=1, network_train_unet_only=True,
                         cache_text_encoder_outputs=True, dataset_config=str(toml))
    report = preflight(config)
    assert not report.ok
    [error] = report.errors
    assert "1_toy" in error["message"] and "shuffle_caption" in error["message"]
    assert error["field"] == "cache_text_encoder_outputs" and "untick" in error["hint"]
    assert preflight(config.model_copy(update={"cache_text_encoder_outputs": False})).ok
