"""Tag post-processing: what a user sees in the caption for given tagger scores."""

import numpy as np
import pytest

from captioning.tags import KAOMOJIS, Labels, TagOptions, escape, load_labels, mcut_threshold, parse_replacements, select_tags
from captioning.tiny import write_tags_csv

# model-output order as in a real selected_tags.csv: 4 ratings, general tags, character tags
NAMES = ["general", "sensitive", "questionable", "explicit",
         "1girl", "long_hair", "smile", "^_^", "(o)_(o)", "hat", "solo",
         "hatsune_miku_(vocaloid)", "kagamine_rin"]  # fmt: skip
CATS = [9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 4, 4]
LABELS = Labels(NAMES, np.array(CATS))


def scores(d):
    p = np.zeros(len(NAMES), np.float32)
    for k, v in d.items():
        p[NAMES.index(k)] = v
    return p


BASE = {"general": 0.7, "sensitive": 0.2, "1girl": 0.99, "long_hair": 0.5, "smile": 0.36, "hat": 0.34,
        "hatsune_miku_(vocaloid)": 0.9, "kagamine_rin": 0.4}  # fmt: skip


def test_tags_at_or_above_the_shared_threshold_are_kept_highest_first():
    tags = select_tags(scores(BASE), LABELS, TagOptions(thresh=0.35))
    assert tags == ["1girl", "long hair", "smile", "hatsune miku (vocaloid)", "kagamine rin"]
    exactly = select_tags(scores({"smile": 0.35}), LABELS, TagOptions(thresh=0.35))
    assert exactly == ["smile"]  # kohya compares with >=


def test_general_and_character_thresholds_are_separate_and_above_one_turns_a_category_off():
    opts = TagOptions(general_threshold=0.45, character_threshold=0.85)
    assert select_tags(scores(BASE), LABELS, opts) == ["1girl", "long hair", "hatsune miku (vocaloid)"]
    no_chars = TagOptions(character_threshold=1.01)
    assert "hatsune miku (vocaloid)" not in select_tags(scores(BASE), LABELS, no_chars)


def test_model_order_keeps_the_csv_order_as_kohya_does():
    tags = select_tags(scores({"smile": 0.9, "1girl": 0.5, "long_hair": 0.7}), LABELS, TagOptions(order="model"))
    assert tags == ["1girl", "long hair", "smile"]
    by_conf = select_tags(scores({"smile": 0.9, "1girl": 0.5, "long_hair": 0.7}), LABELS, TagOptions())
    assert by_conf == ["smile", "long hair", "1girl"]


def test_mcut_cuts_at_the_largest_gap_and_character_mcut_never_goes_below_0_15():
    assert mcut_threshold(np.array([0.9, 0.85, 0.3, 0.2])) == pytest.approx(0.575)
    p = scores({"1girl": 0.9, "long_hair": 0.85, "smile": 0.3, "hat": 0.2, "kagamine_rin": 0.12})
    assert select_tags(p, LABELS, TagOptions(general_mcut_enabled=True)) == ["1girl", "long hair"]
    # characters: largest gap is between 0.12 and 0, midpoint 0.06 -> floored to 0.15 -> nothing
    assert select_tags(p, LABELS, TagOptions(thresh=2, character_mcut_enabled=True)) == []


def test_character_tags_first_and_rating_first_or_last():
    p = scores(BASE)
    assert select_tags(p, LABELS, TagOptions(character_tags_first=True))[:2] == ["hatsune miku (vocaloid)", "kagamine rin"]
    first = select_tags(p, LABELS, TagOptions(use_rating_tags=True))
    last = select_tags(p, LABELS, TagOptions(use_rating_tags_as_last_tag=True))
    assert first[0] == "general" and last[-1] == "general"
    assert "sensitive" not in first
    with pytest.raises(ValueError, match="exclusive"):
        TagOptions(use_rating_tags=True, use_rating_tags_as_last_tag=True)


def test_undesired_tags_are_dropped_however_the_user_spells_them():
    opts = TagOptions(undesired_tags="long hair, Hatsune_Miku_(vocaloid)")
    assert select_tags(scores(BASE), LABELS, opts) == ["1girl", "smile", "kagamine rin"]


def test_always_first_tags_move_to_the_front_and_prefix_postfix_are_always_added():
    opts = TagOptions(always_first_tags="smile, long_hair, hat", prefix_tags="sks", postfix_tags="best, 1girl")
    tags = select_tags(scores(BASE), LABELS, opts)
    # hat was not detected so it is not added; 1girl in the postfix is not duplicated
    assert tags == ["sks", "smile", "long hair", "1girl", "hatsune miku (vocaloid)", "kagamine rin", "best"]


def test_underscores_become_spaces_except_in_kaomoji():
    p = scores({"^_^": 0.9, "(o)_(o)": 0.8, "long_hair": 0.7})
    assert select_tags(p, LABELS, TagOptions()) == ["^_^", "(o)_(o)", "long hair"]
    assert select_tags(p, LABELS, TagOptions(remove_underscore=False)) == ["^_^", "(o)_(o)", "long_hair"]
    assert "(o)_(o)" in KAOMOJIS


def test_escaping_parentheses_for_a1111_prompts():
    p = scores({"hatsune_miku_(vocaloid)": 0.9, "(o)_(o)": 0.8})
    assert select_tags(p, LABELS, TagOptions(escape_parentheses=True)) == [
        r"\(o\)_\(o\)",
        r"hatsune miku \(vocaloid\)",
    ]
    assert escape(r"a \(b\)") == r"a \(b\)"  # already escaped stays as is


def test_tag_replacement_with_escaped_commas_and_semicolons():
    assert parse_replacements(r"1girl,one girl;smile,grin\, happy\;") == [("1girl", "one girl"), ("smile", "grin, happy;")]
    opts = TagOptions(tag_replacement="1girl,one girl;long_hair,very long hair")
    assert select_tags(scores(BASE), LABELS, opts)[:2] == ["one girl", "very long hair"]
    with pytest.raises(ValueError, match="source,replacement"):
        TagOptions(tag_replacement="a,b,c")


def test_character_tag_expand_splits_the_series_out():
    opts = TagOptions(character_tag_expand=True, thresh=0.8)
    assert select_tags(scores(BASE), LABELS, opts) == ["1girl", "hatsune miku", "vocaloid"]


def test_selected_tags_csv_is_parsed_as_real_csv(tmp_path):
    path = tmp_path / "selected_tags.csv"
    write_tags_csv(path, [("general", 9), ('say "hi", please', 0), ("miku", 4)])
    labels = load_labels(path)
    assert labels.names == ["general", 'say "hi", please', "miku"]
    assert list(labels.categories) == [9, 0, 4]
    bad = tmp_path / "bad.csv"
    bad.write_text("tag_id,label\n1,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv.*category"):
        load_labels(bad)


def test_scores_that_do_not_match_the_tag_list_name_both_files():
    with pytest.raises(ValueError, match="different taggers"):
        select_tags(np.zeros(5), LABELS, TagOptions())
