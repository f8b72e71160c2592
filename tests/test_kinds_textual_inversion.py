"""Textual Inversion: a user learns a new word; only its vectors change, and the embedding file works
in diffusers (and has the keys A1111 / ComfyUI read)."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from test_kinds_helpers import one_thread, train_steps  # noqa: F401  (one_thread: autouse fixture)
from trainer.config import TextualInversionConfig
from trainer.kinds import KindError, TextualInversionKind, create_kind
from trainer.kinds.embedding_files import read_embedding
from trainer.models import load_base_model
from trainer.models.text import encode_prompt, tokenize_prompt


def ti_config(**overrides):
    values = dict(token_string="mytok", init_word="dog", num_vectors_per_token=2, learning_rate=5e-2, seed=3,
                  save_precision="float", pretrained_model_name_or_path="")
    values.update(overrides)
    return TextualInversionConfig(**values)


def encode(base, prompt):
    with torch.no_grad():
        return encode_prompt(base, tokenize_prompt(base, [prompt]))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_only_the_new_token_rows_change_and_the_rest_stays_bit_identical(family, tiny_model_dir):
    """AdamW with weight decay moves every parameter it holds; the other rows must still come back exact."""
    base = load_base_model(tiny_model_dir(family))
    before = [te.get_input_embeddings().weight.detach().clone() for te in base.text_encoders]
    other_params = {n: p.detach().clone() for n, p in base.text_encoders[0].named_parameters()
                    if "token_embedding" not in n}
    kind = create_kind(ti_config())
    groups = kind.prepare(base)
    assert len(groups) == len(base.text_encoders)
    train_steps(kind, base, groups)
    for te, old, ids in zip(base.text_encoders, before, kind.token_ids):
        weight = te.get_input_embeddings().weight.detach()
        assert weight.shape[0] == old.shape[0] + 2 and ids == [old.shape[0], old.shape[0] + 1]
        assert torch.equal(weight[:old.shape[0]], old)  # bit-identical, not merely close
        assert not torch.equal(weight[ids], kind_init(base, te, ids))
    for name, p in base.text_encoders[0].named_parameters():
        if name in other_params:
            assert torch.equal(p.detach(), other_params[name]), name


def kind_init(base, te, ids):
    """The init_word ("dog") vectors the new rows started from."""
    tok = base.tokenizers[base.text_encoders.index(te)]
    dog = tok("dog", add_special_tokens=False).input_ids
    return te.get_input_embeddings().weight.detach()[[dog[0]] * len(ids)]


def test_new_rows_start_from_the_init_word(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    kind = create_kind(ti_config(init_word="red dog", num_vectors_per_token=3))
    kind.prepare(base)
    table = base.text_encoders[0].get_input_embeddings().weight.detach()
    red, dog = base.tokenizers[0]("red dog", add_special_tokens=False).input_ids
    assert torch.equal(table[kind.token_ids[0]], table[[red, dog, red]])  # repeated to 3 vectors


def _pipeline(family, tiny_model_dir):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    fresh = load_base_model(tiny_model_dir(family)).components()
    if family == "sdxl":
        return StableDiffusionXLPipeline(**{k: fresh[k] for k in (
            "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")})
    return StableDiffusionPipeline(**{k: fresh[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("family,fmt,save_as", [("sd1", "kohya", "safetensors"), ("sd1", "a1111", "pt"),
                                                ("sd2", "kohya", "pt"), ("sdxl", "kohya", "safetensors")])
def test_saved_embedding_loads_in_diffusers_and_encodes_prompts_like_the_trained_model(
        family, fmt, save_as, tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir(family))
    kind = create_kind(ti_config(embedding_format=fmt, save_model_as=save_as))
    train_steps(kind, base, kind.prepare(base), steps=2)
    path = kind.save(tmp_path / f"mytok.{kind.output_ext}", step=2)
    assert path.suffix == f".{save_as}"
    trained_hidden, trained_pooled = encode(base, kind.expand_prompt("a photo of mytok"))

    pipe = _pipeline(family, tiny_model_dir)
    before, _ = encode(SimpleNamespace(family=family, text_encoders=[pipe.text_encoder, *(
        [pipe.text_encoder_2] if family == "sdxl" else [])], tokenizers=[pipe.tokenizer, *(
            [pipe.tokenizer_2] if family == "sdxl" else [])]), "a photo of dog dog")
    if family == "sdxl":  # diffusers' documented route: each key into its own encoder
        from safetensors.torch import load_file

        state = load_file(path)
        pipe.load_textual_inversion(state["clip_l"], token="mytok", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(state["clip_g"], token="mytok", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        loaded = SimpleNamespace(family=family, text_encoders=[pipe.text_encoder, pipe.text_encoder_2],
                                 tokenizers=[pipe.tokenizer, pipe.tokenizer_2])
    else:
        pipe.load_textual_inversion(str(path), token="mytok")
        loaded = SimpleNamespace(family=family, text_encoders=[pipe.text_encoder], tokenizers=[pipe.tokenizer])
    prompt = pipe.maybe_convert_prompt("a photo of mytok", pipe.tokenizer)  # -> "mytok mytok_1"
    hidden, pooled = encode(loaded, prompt)
    assert torch.allclose(hidden, trained_hidden, atol=1e-6)
    if family == "sdxl":
        assert torch.allclose(pooled, trained_pooled, atol=1e-6)
    assert not torch.allclose(hidden, before, atol=1e-3)  # the embedding really changes the encoding


def test_file_layouts_match_what_each_client_reads(tmp_path, tiny_model_dir):
    """Kohya: emb_params [n, dim]; A1111: string_to_param/name/step/sd_checkpoint; SDXL: clip_l + clip_g."""
    from safetensors import safe_open

    model = tiny_model_dir("sd1")
    base = load_base_model(model)
    kind = create_kind(ti_config(pretrained_model_name_or_path=str(model), save_precision="fp16"))
    kind.prepare(base)
    kohya = kind.save(tmp_path / "kohya.safetensors", step=7)
    with safe_open(kohya, "pt") as fh:
        assert list(fh.keys()) == ["emb_params"]
        assert fh.get_tensor("emb_params").shape == (2, 32) and fh.get_tensor("emb_params").dtype == torch.float16
        assert fh.metadata()["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"

    a1111 = create_kind(ti_config(embedding_format="a1111", pretrained_model_name_or_path=str(model),
                                  save_model_as="pt"))
    a1111.prepare(load_base_model(model))
    data = torch.load(a1111.save(tmp_path / "a1111.pt", step=7), weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint",
                         "sd_checkpoint_name"}
    assert list(data["string_to_param"]) == ["*"] and data["string_to_param"]["*"].shape == (2, 32)
    assert (data["name"], data["step"], data["sd_checkpoint_name"]) == ("mytok", 7, model.stem)
    assert re.fullmatch(r"[0-9a-f]{10}", data["sd_checkpoint"])

    xl = create_kind(ti_config(embedding_format="a1111"))  # SDXL has one layout for every client
    xl.prepare(load_base_model(tiny_model_dir("sdxl")))
    assert xl.output_ext == "safetensors" and "changes nothing for SDXL" in xl.warnings[0]
    with safe_open(xl.save(tmp_path / "xl.safetensors"), "pt") as fh:
        assert sorted(fh.keys()) == ["clip_g", "clip_l"]
        assert fh.get_tensor("clip_l").shape[0] == fh.get_tensor("clip_g").shape[0] == 2


def test_a1111_format_is_written_as_pt_with_a_warning():
    kind = create_kind(ti_config(embedding_format="a1111", save_model_as="safetensors"))
    assert kind.output_ext == "pt"
    assert any("a1111" in w for w in kind.warnings)


@pytest.mark.parametrize("fmt,ext", [("kohya", "safetensors"), ("a1111", "pt")])
def test_training_resumes_from_an_embedding_file(fmt, ext, tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    kind = create_kind(ti_config(embedding_format=fmt, save_model_as=ext))
    train_steps(kind, base, kind.prepare(base), steps=2)
    saved = kind.save(tmp_path / f"first.{ext}", step=2)
    resumed = create_kind(ti_config(weights=str(saved)))
    resumed.prepare(load_base_model(tiny_model_dir("sd1")))
    assert torch.equal(resumed.embedding().vectors[0], kind.embedding().vectors[0])
    assert read_embedding(saved).step == 2

    wrong = create_kind(ti_config(weights=str(saved), num_vectors_per_token=3))
    with pytest.raises(KindError, match="num_vectors_per_token to 2"):
        wrong.prepare(load_base_model(tiny_model_dir("sd1")))


def test_captions_use_every_vector_and_templates_replace_captions():
    kind = TextualInversionKind(ti_config(num_vectors_per_token=3))
    assert kind.prepare_captions(["a MyTok dog", "a cat"]) == ["a mytok mytok1 mytok2 dog",
                                                               "mytok mytok1 mytok2, a cat"]
    styled = TextualInversionKind(ti_config(template="style template", num_vectors_per_token=2))
    captions = styled.prepare_captions(["ignored"] * 20)
    assert all("mytok mytok1" in c and "ignored" not in c for c in captions)
    assert len(set(captions)) > 3  # a random sentence per image


def test_bad_token_strings_are_refused_with_the_fix(tiny_model_dir):
    with pytest.raises(KindError, match="my_char"):
        TextualInversionKind(ti_config().model_copy(update={"token_string": "my char"}))
    with pytest.raises(KindError, match="token_string is empty"):
        TextualInversionKind(ti_config(token_string=" "))
    base = load_base_model(tiny_model_dir("sd1"))
    with pytest.raises(KindError, match="already in the tokenizer"):
        TextualInversionKind(ti_config(token_string="dog")).prepare(base)  # "dog" is a known word
    with pytest.raises(KindError, match="cache_text_encoder_outputs"):
        TextualInversionKind(ti_config(cache_text_encoder_outputs=True)).prepare(base)
