"""A Kohya_ss user ticks "Weighted captions" and writes captions such as "toy, (red hair:1.3), [background]":
the text encoder reads the words, each token's output is scaled by its weight (mean restored, as sd-scripts'
get_weighted_text_embeddings), shuffling keeps a weighted group whole, and the config is checked, imported
and exported like any other option."""
from __future__ import annotations

import json
import random

import pytest
import torch
from test_train_support import lora_config, lora_tensors, make_dataset, run_trainer, write_config

import trainer.config as tc
from trainer.prompt_weights import bracket_spans, parse_weights, plain_text


# ---- the syntax ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, runs", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("a [quiet] word", [("a ", 1.0), ("quiet", 1 / 1.1), (" word", 1.0)]),
    ("(red hair:1.3), smile", [("red hair", 1.3), (", smile", 1.0)]),
    ("((nested:1.5))", [("nested", 1.5 * 1.1)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (r"\(literal\] \\", [("(literal] \\", 1.0)]),
    ("(x:1.0) and y", [("x and y", 1.0)]),                 # weight 1 merges back into the plain text
])
def test_the_a1111_syntax_gives_each_run_of_text_its_weight(text, runs):
    got = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs])


def test_unbalanced_brackets_read_as_a1111_reads_them():
    assert parse_weights("(unclosed") == [("unclosed", pytest.approx(1.1))]    # weights to the end
    assert parse_weights("smile)") == [("smile)", 1.0)]                         # a stray close is text
    assert parse_weights("[a") == [("a", pytest.approx(1 / 1.1))]
    assert parse_weights("(a:b)") == [("a:b", pytest.approx(1.1))]              # no number: ":" is text
    assert plain_text("(x:1.2.3)") == "x:1.2.3)"                                # not a number: never a crash
    assert parse_weights("") == [("", 1.0)]


def test_bracket_spans_are_the_matched_unescaped_pairs():
    text = r"a, (red hair, blue eyes:1.2), \(x, [y, z], w)"
    assert [text[a:b + 1] for a, b in bracket_spans(text)] == ["(red hair, blue eyes:1.2)", "[y, z]"]


# ---- shuffling -------------------------------------------------------------------------------------------------

def test_shuffle_and_tag_dropout_move_a_weighted_group_whole():
    from trainer.data.captions import process_caption
    from trainer.data.options import CaptionOptions

    caption = "1girl, (red hair, blue eyes:1.2), smile, [simple background], (hat)"
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.3, weighted_captions=True)
    seen = set()
    for seed in range(40):
        out = process_caption(caption, opts, random.Random(seed), 1)
        assert out.count("(") == out.count(")") and out.count("[") == out.count("]")
        tags = [t.strip() for t in out.replace("(red hair, blue eyes:1.2)", "GROUP").split(", ")]
        tags = [t.replace("GROUP", "(red hair, blue eyes:1.2)") for t in tags]
        assert tags[0] == "1girl"
        assert set(tags[1:]) <= {"(red hair, blue eyes:1.2)", "smile", "[simple background]", "(hat)"}
        seen.add(tuple(tags))
    assert len(seen) > 5
    # without weighted captions the comma splits the group, as sd-scripts does
    plain = process_caption(caption, CaptionOptions(shuffle_caption=True, keep_tokens=5), random.Random(0), 1)
    assert plain.split(", ")[1:3] == ["(red hair", "blue eyes:1.2)"]


# ---- tokens and conditioning -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parts():
    from trainer.models.tiny import build_tiny_components

    return {family: build_tiny_components(family, 0) for family in ("sd1", "sdxl")}


def conditioner(parts, family, **kwargs):
    from trainer.train.text import TextConditioner

    p = parts[family]
    encoders = [p[k] for k in ("text_encoder", "text_encoder_2") if k in p]
    tokenizers = [p[k] for k in ("tokenizer", "tokenizer_2") if k in p]
    return TextConditioner(family, encoders, tokenizers, memoize=False, **kwargs)


def test_the_encoder_reads_the_caption_without_the_syntax(parts):
    from trainer.models.text import tokenize_long, tokenize_weighted

    tok = parts["sd1"]["tokenizer"]
    ids, weights = tokenize_weighted(tok, ["toy, (red:1.5) [circle]"], 75)
    assert ids.equal(tokenize_long(tok, ["toy, red circle"], 75))
    n_toy = len(tok("toy, ", add_special_tokens=False).input_ids)
    n_red = len(tok("red", add_special_tokens=False).input_ids)
    n_circle = len(tok(" circle", add_special_tokens=False).input_ids)
    expected = [1.0] * (1 + n_toy) + [1.5] * n_red + [1.0] * 0 + [1 / 1.1] * n_circle
    assert weights[0, :len(expected)].tolist() == pytest.approx(expected)
    assert weights[0, len(expected):].eq(1).all()  # EOS and padding weigh 1


def test_weight_tokens_restores_each_captions_mean_as_sd_scripts_does():
    from trainer.models.text import weight_tokens

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 77, 16, generator=g) + 0.5           # a clear mean, as trained CLIP states have
    weights = torch.ones(2, 77)
    weights[0, 3:6] = 1.5
    weights[1, 10] = 0.5
    out = weight_tokens(hidden, weights)
    torch.testing.assert_close(out.mean(dim=(1, 2)), hidden.mean(dim=(1, 2)))
    scale = hidden.mean(dim=(1, 2)) / (hidden * weights[..., None]).mean(dim=(1, 2))   # sd-scripts' factor
    torch.testing.assert_close(out, hidden * weights[..., None] * scale[:, None, None])
    assert weight_tokens(hidden, torch.ones(2, 77)) is hidden

    # a mean of ~0 (a bias-free final layer norm): nothing to restore, the weights simply multiply
    centred = hidden - hidden.mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(weight_tokens(centred, weights), centred * weights[..., None])
    # a factor beyond 1/max .. 1/min weight (a mean that nearly cancels) is held at the bound
    tilted = centred + 0.01
    tilted[:, 3:6] -= 0.3                                          # the weighted tokens pull the mean across 0
    raw = tilted[0].mean() / (tilted[0] * weights[0, :, None]).mean()
    assert raw < 1 / 1.5
    torch.testing.assert_close(weight_tokens(tilted, weights)[0], tilted[0] * weights[0, :, None] / 1.5)


@pytest.mark.parametrize("max_token_length", [150, 225])
def test_a_weight_past_the_first_75_tokens_lands_on_its_token_in_a_later_chunk(parts, max_token_length):
    """The joined conditioning is BOS, 75 tokens per chunk, last token: the weight of the caption's 80th token
    must scale conditioning position 80 (chunk 2), nothing else."""
    from trainer.models.text import weight_tokens

    tok = parts["sd1"]["tokenizer"]
    word = tok("cat", add_special_tokens=False).input_ids
    assert len(word) == 1
    caption = "cat " * 79 + "(cat:2.0) " + "cat " * 10
    ids, weights = conditioner(parts, "sd1", max_token_length=max_token_length, weighted=True).tokens([caption])
    assert ids[0].shape == (1, 77 * (max_token_length // 75))
    assert ids[0][0, 77 + 1 + (80 - 76)] == word[0]          # token 80 is the 5th of chunk 2
    assert weights[0].shape == (1, max_token_length + 2)
    assert torch.nonzero(weights[0][0] != 1).flatten().tolist() == [80]

    plain = conditioner(parts, "sd1", max_token_length=max_token_length)
    weighted = conditioner(parts, "sd1", max_token_length=max_token_length, weighted=True)
    with torch.no_grad():
        h_plain, _ = plain([caption.replace("(cat:2.0)", "cat")])
        h_weighted, _ = weighted([caption])
    assert h_weighted.shape == (1, max_token_length + 2, h_plain.shape[-1])
    ratio = h_weighted / h_plain
    others = torch.cat([ratio[0, :80], ratio[0, 81:]]).flatten()
    scale = others.median()
    torch.testing.assert_close(others, torch.full_like(others, scale))          # one mean-restoring factor
    torch.testing.assert_close(ratio[0, 80], torch.full_like(ratio[0, 80], 2 * scale))
    torch.testing.assert_close(h_weighted, weight_tokens(h_plain, weights[0]))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_weight_one_is_bit_for_bit_the_plain_caption_and_other_weights_move_it_keeping_the_mean(parts, family):
    plain = conditioner(parts, family, max_token_length=150)
    weighted = conditioner(parts, family, max_token_length=150, weighted=True)
    with torch.no_grad():
        h_plain, p_plain = plain(["toy, red circle"])
        h_one, p_one = weighted(["toy, (red:1.0) circle"])
        h_more, p_more = weighted(["toy, (red:1.4) [circle]"])
    assert torch.equal(h_one, h_plain)
    assert not torch.allclose(h_more, h_plain)
    if family == "sdxl":  # the pooled embedding is not weighted (sd-scripts)
        assert torch.equal(p_one, p_plain) and torch.equal(p_more, p_plain)
        width = parts["sdxl"]["text_encoder"].config.hidden_size
        halves = [(h[..., :width], h[..., width:]) for h in (h_more, h_plain)]
        for weighted_half, plain_half in zip(*halves):  # each encoder's mean restored on its own
            torch.testing.assert_close(weighted_half.mean(), plain_half.mean())
    else:
        torch.testing.assert_close(h_more.mean(), h_plain.mean())


def test_cached_weighted_outputs_are_the_weighted_ones_and_keyed_by_the_weights(parts, tmp_path):
    """cache_text_encoder_outputs with weighted captions caches the weighted outputs (as sd-scripts' SDXL LoRA
    caching with is_weighted does); on disk "(red:1.2)" and "(red:1.5)" are different files, and a plain run
    never reads a weighted run's file."""
    captions = ["toy, (red:1.2) circle", "toy, (red:1.5) circle", "toy, red circle"]
    cached = conditioner(parts, "sdxl", weighted=True)
    cached.memoize = True
    assert cached.cache_outputs(captions, disk_dir=tmp_path)
    files = set(tmp_path.glob("*.te.safetensors"))
    assert len(files) == 3
    live = conditioner(parts, "sdxl", weighted=True)
    with torch.no_grad():
        torch.testing.assert_close(cached(captions)[0], live(captions)[0])
    plain = conditioner(parts, "sdxl")
    plain.memoize = True
    plain.cache_outputs(captions[2:], disk_dir=tmp_path)
    assert plain.cache.stats == {"reused": 0, "computed": 1}
    assert len(set(tmp_path.glob("*.te.safetensors")) - files) == 1


def test_a_dit_family_refuses_weighted_captions(parts):
    from trainer.train.text import TextConditioner

    with pytest.raises(ValueError, match="weighted_captions is not supported for flux"):
        TextConditioner("flux", [], [], tokenize=lambda captions: [], weighted=True)


# ---- the config ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, family", [("flux1_checkbox", "FLUX.1"), ("sd3_checkbox", "SD3")])
def test_weighted_captions_on_a_flux_or_sd3_config_is_an_error_naming_the_fix(flag, family):
    _, problems = tc.validate_values("lora", {"weighted_captions": True, flag: True})
    [problem] = [p for p in problems if p.field == "weighted_captions"]
    assert problem.level == "error" and family in problem.message and "untick weighted_captions" in problem.message
    _, problems = tc.validate_values("lora", {"weighted_captions": True, "sdxl": True,
                                              "cache_text_encoder_outputs": True, "network_train_unet_only": True})
    assert problems == []


def test_a_kohya_json_with_weighted_captions_imports_it_and_the_export_writes_it_back(tmp_path):
    from trainer.config.sd_scripts_export import sd_scripts_export

    data = json.load(open("tests/data/kohya_lora_v26.json"))
    data["weighted_captions"] = True
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert loaded.config.weighted_captions is True
    assert not any("weighted_captions" in k for k in loaded.ignored_keys)
    assert sd_scripts_export(loaded.config).toml_data["weighted_captions"] is True
    ti = sd_scripts_export(tc.TextualInversionConfig(weighted_captions=True, token_string="tok", init_word="toy"))
    assert "weighted_captions" not in ti.toml_data and any("weighted_captions" in n for n in ti.notes)


# ---- training ----------------------------------------------------------------------------------------------------

def write_captions(data, captions: list[str]):
    for txt, caption in zip(sorted((data / "1_toy").glob("*.txt")), captions):
        txt.write_text(caption + "\n", encoding="utf-8")


def train(tmp_path, model, name: str, captions: list[str], **overrides) -> dict:
    data = make_dataset(tmp_path / f"{name}-data", images=len(captions))
    write_captions(data, captions)
    config = lora_config(model, data, tmp_path / name, epoch=1, save_every_n_epochs=0, **overrides)
    rc, events, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
    assert rc == 0, err[-3000:]
    return lora_tensors(tmp_path / name / "toy.safetensors")


def test_a_caption_weighted_1_trains_exactly_as_the_plain_caption_and_other_weights_differently(
        tmp_path, tiny_model_dir):
    model = tiny_model_dir("sd1")
    plain = train(tmp_path, model, "plain", ["toy, red circle", "toy, blue square"])
    one = train(tmp_path, model, "one", ["toy, (red:1.0) circle", "(toy:1.0), blue square"], weighted_captions=True)
    more = train(tmp_path, model, "more", ["toy, (red:1.5) circle", "[toy], blue square"], weighted_captions=True)
    assert plain.keys() == one.keys() == more.keys()
    assert all(torch.equal(plain[k], one[k]) for k in plain)
    te_keys = [k for k in plain if k.startswith("lora_te")]
    assert te_keys and any(not torch.equal(plain[k], more[k]) for k in te_keys)
    assert all(torch.isfinite(t).all() for t in more.values())


def test_a_tiny_sdxl_lora_trains_on_weighted_shuffled_long_captions(tmp_path, tiny_model_dir):
    tensors = train(tmp_path, tiny_model_dir("sdxl"), "sdxl",
                    ["toy, (red hair, blue eyes:1.3), " + "circle, " * 40 + "[plain]", "toy, ((blue)) square"],
                    weighted_captions=True, shuffle_caption=True, keep_tokens=1, max_token_length=150)
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
