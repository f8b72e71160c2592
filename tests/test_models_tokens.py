"""Long captions (max_token_length 150/225) are split into 75-token chunks, each BOS ... EOS, as Kohya does."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from trainer.models.text import tokenize_long

clip_bpe = pytest.importorskip("trainer.models.clip_bpe")


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["sd1-pad-eos", "sdxl2-pad-bang"])
def tokenizer(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    merges = clip_bpe.learn_merges(["cat", "dog", "sitting"] * 3, 6)
    clip_bpe.write_tokenizer_folder(merges, folder, pad_token=request.param)
    return CLIPTokenizer.from_pretrained(folder)


def test_default_length_is_one_plain_77_token_row(tokenizer):
    ids = tokenize_long(tokenizer, ["a b c"], 75)
    plain = tokenizer(["a b c"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids.equal(plain)
    assert tokenize_long(tokenizer, ["a b c"], None).equal(plain)  # Kohya's None means 75


def test_a_100_token_caption_fills_two_chunks_each_wrapped_in_bos_and_eos(tokenizer):
    a = tokenizer.convert_tokens_to_ids("a</w>")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenize_long(tokenizer, [" ".join(["a"] * 100), "x"], 150)
    assert ids.shape == (2, 154)
    first, second = ids[0, :77].tolist(), ids[0, 77:].tolist()
    assert first == [bos] + [a] * 75 + [eos]
    assert second[:27] == [bos] + [a] * 25 + [eos]
    assert second[27:] == [pad] * 50  # padding after the EOS (EOS itself when pad is EOS)


def test_225_truncates_at_225_tokens_and_keeps_the_last_chunk_closed(tokenizer):
    a = tokenizer.convert_tokens_to_ids("a</w>")
    ids = tokenize_long(tokenizer, [" ".join(["a"] * 300)], 225)
    assert ids.shape == (1, 231)
    for k in range(3):
        chunk = ids[0, 77 * k: 77 * (k + 1)].tolist()
        assert chunk == [tokenizer.bos_token_id] + [a] * 75 + [tokenizer.eos_token_id]


def test_an_empty_chunk_still_starts_with_bos_eos(tokenizer):
    ids = tokenize_long(tokenizer, ["a"], 225)
    third = ids[0, 154:].tolist()
    assert third[:2] == [tokenizer.bos_token_id, tokenizer.eos_token_id]


def test_other_lengths_are_refused(tokenizer):
    with pytest.raises(ValueError, match="75, 150 or 225"):
        tokenize_long(tokenizer, ["a"], 100)


def test_text_encoder_outputs_are_cached_once_per_distinct_processed_caption(tmp_path, tokenizer):
    from test_data_helpers import make_cfg, make_concept
    from trainer.data import TrainDataset, scan_dataset
    from trainer.data.te_cache import TextEncoderOutputCache, fixed_captions

    make_concept(tmp_path, "3_sks dog", 3, size=(16, 16), captions={0: "sks dog ||| grass"})
    cfg = make_cfg(train_data_dir=str(tmp_path), resolution="32", keep_tokens_separator="|||",
                   caption_prefix="photo,")
    dataset = TrainDataset(scan_dataset(cfg), cfg)
    captions = fixed_captions(dataset)
    assert captions == ["photo, sks dog", "photo, sks dog, grass"]  # processed, not the raw file text
    calls = []

    def encode(texts):
        calls.append(list(texts))
        ids = tokenize_long(tokenizer, texts, 75)
        return {"hidden": ids.float()[:, :, None].repeat(1, 1, 2), "pooled": ids.float().sum(1, keepdim=True)}

    cache = TextEncoderOutputCache(encode, batch_size=8)
    assert cache.prepare(captions + captions) == 2 and len(calls) == 1
    batch = dataset[0]
    out = cache.get(batch["captions"])
    assert out["hidden"].shape == (1, 77, 2)
    assert torch.equal(out["hidden"], encode(batch["captions"])["hidden"])


def test_text_encoder_cache_is_refused_when_captions_change_every_step(tmp_path):
    from test_data_helpers import make_cfg, make_concept
    from trainer.data import DatasetError, TrainDataset, scan_dataset
    from trainer.data.te_cache import fixed_captions

    make_concept(tmp_path, "1_cat", 1, size=(16, 16))
    cfg = make_cfg(train_data_dir=str(tmp_path), resolution="32", shuffle_caption=True)
    with pytest.raises(DatasetError, match="shuffle_caption"):
        fixed_captions(TrainDataset(scan_dataset(cfg), cfg))
