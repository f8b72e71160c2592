"""Caption files and Kohya's caption transforms, reproducible under a fixed seed."""
from __future__ import annotations

import random

from trainer.data.captions import process_caption, read_caption
from trainer.data.options import CaptionOptions

TAGS = "sks dog, sitting, grass, sunny day, red collar, looking at viewer"


def run(caption=TAGS, seed=0, epoch=1, **opts) -> str:
    return process_caption(caption, CaptionOptions(**opts), random.Random(seed), epoch)


def tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def test_caption_is_unchanged_without_transforms():
    assert run() == TAGS


def test_prefix_and_suffix_are_added_with_a_space():
    assert run("a dog", caption_prefix="photo of", caption_suffix="high quality") == "photo of a dog high quality"


def test_shuffle_keeps_the_first_keep_tokens_tags_and_permutes_the_rest():
    results = {run(seed=s, shuffle_caption=True, keep_tokens=1) for s in range(20)}
    assert len(results) > 5, "shuffling should produce different orders for different seeds"
    for r in results:
        assert tags(r)[0] == "sks dog"
        assert sorted(tags(r)) == sorted(tags(TAGS))


def test_same_seed_gives_the_same_caption():
    a = run(seed=7, shuffle_caption=True, caption_tag_dropout_rate=0.3, keep_tokens=1)
    b = run(seed=7, shuffle_caption=True, caption_tag_dropout_rate=0.3, keep_tokens=1)
    assert a == b


def test_keep_tokens_separator_fixes_a_prefix_and_a_suffix_part():
    caption = "sks dog, 1boy ||| grass, sunny, tree ||| masterpiece"
    for s in range(10):
        out = tags(run(caption, seed=s, shuffle_caption=True, keep_tokens_separator="|||"))
        assert out[:2] == ["sks dog", "1boy"] and out[-1] == "masterpiece"
        assert sorted(out[2:-1]) == ["grass", "sunny", "tree"]


def test_keep_tokens_separator_never_reaches_the_text_encoder_without_shuffle():
    out = run("sks dog ||| grass, tree", keep_tokens_separator="|||")
    assert out == "sks dog, grass, tree"


def test_caption_dropout_rate_empties_whole_captions_at_the_given_rate():
    assert run(caption_dropout_rate=1.0) == ""
    dropped = sum(run(seed=s, caption_dropout_rate=0.5) == "" for s in range(400))
    assert 150 < dropped < 250


def test_caption_dropout_every_n_epochs_drops_on_multiples_counting_from_one():
    got = [run(epoch=e, caption_dropout_every_n_epochs=2) == "" for e in range(1, 6)]
    assert got == [False, True, False, True, False]


def test_tag_dropout_drops_only_the_shufflable_tags():
    out = run(keep_tokens=2, caption_tag_dropout_rate=1.0)
    assert out == "sks dog, sitting"
    kept = [len(tags(run(seed=s, keep_tokens=1, caption_tag_dropout_rate=0.5))) - 1 for s in range(200)]
    assert 400 < sum(kept) < 600  # 5 droppable tags, half kept on average (~500)


def test_secondary_separator_groups_move_and_drop_as_one_tag():
    caption = "sks dog, red;;;collar, grass, tree"
    for s in range(10):
        out = run(caption, seed=s, shuffle_caption=True, keep_tokens=1, secondary_separator=";;;")
        assert "red,collar" in out and ";;;" not in out


def test_caption_file_first_non_empty_line_is_used(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("\n  first line, tags  \nsecond line\n", encoding="utf-8")
    assert read_caption(p) == ("first line, tags", None)


def test_utf8_bom_is_not_part_of_the_caption(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffsks dog".encode("utf-8"))
    assert read_caption(p) == ("sks dog", None)


def test_non_utf8_captions_are_read_with_a_fallback_and_a_warning(tmp_path):
    """Notepad's ANSI (cp1252) and Japanese Shift-JIS captions still read correctly, with a warning."""
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café, crème brûlée, naïve".encode("cp1252"))
    text, warning = read_caption(latin)
    assert text == "café, crème brûlée, naïve"
    assert "not UTF-8" in warning and "UTF-8" in warning
    japanese = tmp_path / "jp.txt"
    japanese.write_bytes("1girl, 猫耳, 少女, 笑顔".encode("shift_jis"))
    text, warning = read_caption(japanese)
    assert text == "1girl, 猫耳, 少女, 笑顔" and "Shift-JIS" in warning


def test_a_utf16_caption_without_a_bom_is_decoded_and_the_user_told(tmp_path):
    from trainer.data.captions import read_caption

    for codec in ("utf-16-le", "utf-16-be"):
        path = tmp_path / f"{codec}.txt"
        path.write_bytes("a photo of sks dog, 日本".encode(codec))  # Windows "Unicode" without its BOM
        text, warning = read_caption(path)
        assert text == "a photo of sks dog, 日本" and "\x00" not in text
        assert "UTF-16" in warning and "UTF-8" in warning


def test_a_huge_caption_is_cut_once_with_a_warning_naming_the_limit(tmp_path):
    from trainer.data.captions import MAX_CAPTION_CHARS, read_caption

    path = tmp_path / "long.txt"
    path.write_text("tag, " * 2_000_000, encoding="utf-8")  # 10 MB: was tokenized again at every step
    text, warning = read_caption(path)
    assert len(text) <= MAX_CAPTION_CHARS and text.startswith("tag, tag")
    assert f"{MAX_CAPTION_CHARS}" in warning and "max_token_length" in warning


def test_with_wildcards_each_use_draws_one_line_of_a_multi_line_caption_file(tmp_path):
    """sd-scripts' enable_wildcard: several captions per image, one per use; without it the first line."""
    p = tmp_path / "a.txt"
    p.write_text("a red dog\n\n  a dog on grass \na {sitting|running} dog\n", encoding="utf-8")
    assert read_caption(p) == ("a red dog", None)
    text, _ = read_caption(p, all_lines=True)
    assert text == "a red dog\na dog on grass\na {sitting|running} dog"
    drawn = {run(text, seed=s, enable_wildcard=True, caption_prefix="photo,") for s in range(60)}
    assert drawn == {"photo, a red dog", "photo, a dog on grass", "photo, a sitting dog", "photo, a running dog"}
    assert run(text) == "a red dog", "without enable_wildcard only the first line counts"
    assert run("{a|b}") == "{a|b}", "and braces are plain text"


def test_wildcards_come_from_the_seeded_draws_and_caption_dropout_still_wins():
    text = "{red|green|blue} ball, {big|small}"
    assert run(text, seed=3, enable_wildcard=True) == run(text, seed=3, enable_wildcard=True)
    assert all(run(text, seed=s, enable_wildcard=True, caption_dropout_every_n_epochs=1) == "" for s in range(5))
    shuffled = run(text, seed=4, enable_wildcard=True, shuffle_caption=True)
    assert "{" not in shuffled and len(tags(shuffled)) == 2


def test_wildcard_captions_cannot_be_cached_as_text_encoder_outputs():
    from trainer.config import ConfigError, parse_config

    try:
        parse_config("lora", {"enable_wildcard": True, "cache_text_encoder_outputs": True,
                              "network_train_unet_only": True})
    except ConfigError as err:
        assert "enable_wildcard" in str(err) and "cache_text_encoder_outputs" in str(err)
    else:
        raise AssertionError("wildcards with cached text-encoder outputs must be refused")
