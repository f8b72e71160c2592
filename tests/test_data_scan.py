"""Concept folders (N_name), captions, regularization folders and Kohya's dataset TOML."""
from __future__ import annotations

import pytest

from test_data_helpers import make_cfg, make_concept, make_image
from trainer.data import DatasetError, scan_dataset


def concepts(result):
    return {s.spec.label: s for ds in result.datasets for s in ds.subsets}


def test_seed_layout_one_concept_with_caption(tmp_path):
    """dataset/images/1_character_name/image001.png + image001.txt, exactly as the seed shows it."""
    folder = tmp_path / "dataset" / "images" / "1_character_name"
    make_image(folder / "image001.png")
    (folder / "image001.txt").write_text("character_name, smiling", encoding="utf-8")
    result = scan_dataset(make_cfg(train_data_dir=str(tmp_path / "dataset" / "images")))
    c = concepts(result)["1_character_name"]
    assert c.spec.num_repeats == 1 and c.spec.class_tokens == "character_name" and not c.spec.is_reg
    item = result.items[c.items[0]]
    assert item.caption == "character_name, smiling" and item.caption_source == "file"


def test_repeats_and_class_tokens_come_from_the_folder_name(tmp_path):
    make_concept(tmp_path, "10_sks dog", 3, captions={0: "sks dog on grass"})
    make_concept(tmp_path, "3_style_x", 2)
    result = scan_dataset(make_cfg(train_data_dir=str(tmp_path)))
    c = concepts(result)
    assert c["10_sks dog"].spec.num_repeats == 10 and c["10_sks dog"].samples == 30
    assert c["3_style_x"].spec.class_tokens == "style_x" and c["3_style_x"].samples == 6
    assert (c["10_sks dog"].captions_found, c["10_sks dog"].captions_missing) == (1, 2)
    captions = sorted(result.items[i].caption for i in c["10_sks dog"].items)
    assert captions == ["sks dog", "sks dog", "sks dog on grass"]  # missing captions -> class tokens


def test_folder_without_repeats_prefix_is_an_error_showing_the_expected_layout(tmp_path):
    make_concept(tmp_path, "my character", 2)
    with pytest.raises(DatasetError) as err:
        scan_dataset(make_cfg(train_data_dir=str(tmp_path)))
    text = str(err.value)
    assert "'my character'" in text and "1_my character" in text and "1_character_name/" in text


def test_zero_repeats_folder_is_an_error(tmp_path):
    make_concept(tmp_path, "0_dog", 2)
    with pytest.raises(DatasetError, match="0 repeats") as err:
        scan_dataset(make_cfg(train_data_dir=str(tmp_path)))
    assert "1_dog" in str(err.value)


def test_pointing_at_the_image_folder_itself_explains_the_parent_rule(tmp_path):
    make_image(tmp_path / "img1.png")
    make_image(tmp_path / "img2.png")
    with pytest.raises(DatasetError, match="holds 2 images directly") as err:
        scan_dataset(make_cfg(train_data_dir=str(tmp_path)))
    assert "1_character_name" in str(err.value)


def test_missing_train_data_dir_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(make_cfg(train_data_dir=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match="not set"):
        scan_dataset(make_cfg())


def test_caption_files_with_the_other_extension_are_pointed_out(tmp_path):
    folder = make_concept(tmp_path, "5_cat", 2)
    (folder / "img000.caption").write_text("a cat", encoding="utf-8")
    result = scan_dataset(make_cfg(train_data_dir=str(tmp_path), caption_extension=".txt"))
    assert any("set caption_extension to .caption" in p.hint for p in result.of("warning"))
    result = scan_dataset(make_cfg(train_data_dir=str(tmp_path), caption_extension=".caption"))
    assert concepts(result)["5_cat"].captions_found == 1


def test_subfolders_are_read_only_when_recursive(tmp_path):
    folder = make_concept(tmp_path, "2_cat", 1)
    make_image(folder / "more" / "deep.png")
    assert len(scan_dataset(make_cfg(train_data_dir=str(tmp_path))).items) == 1
    assert len(scan_dataset(make_cfg(train_data_dir=str(tmp_path), recursive=True)).items) == 2


def test_regularization_folders_use_the_same_convention(tmp_path):
    make_concept(tmp_path / "img", "10_sks dog", 2)
    make_concept(tmp_path / "reg", "1_dog", 5)
    result = scan_dataset(make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg")))
    reg = concepts(result)["1_dog"]
    assert reg.spec.is_reg and len(reg.items) == 5 and all(result.items[i].is_reg for i in reg.items)


def test_paths_with_spaces_and_japanese_characters_work(tmp_path):
    """The seed warns these break Kohya_ss; here they must not."""
    root = tmp_path / "my data" / "学習 画像"
    folder = root / "4_キャラ 名前"
    make_image(folder / "画像 001.png")
    (folder / "画像 001.txt").write_text("キャラ, 笑顔", encoding="utf-8")
    result = scan_dataset(make_cfg(train_data_dir=str(root)))
    c = concepts(result)["4_キャラ 名前"]
    assert c.spec.class_tokens == "キャラ 名前" and c.samples == 4
    assert result.items[0].caption == "キャラ, 笑顔"


def test_latent_cache_folder_inside_the_dataset_is_not_a_concept(tmp_path):
    make_concept(tmp_path, "1_dog", 1)
    (tmp_path / "cache").mkdir()
    result = scan_dataset(make_cfg(train_data_dir=str(tmp_path), latent_cache_dir=str(tmp_path / "cache")))
    assert len(result.items) == 1


def write_toml(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_dataset_toml_levels_inherit_and_folder_names_are_not_parsed(tmp_path):
    make_concept(tmp_path, "5_mychar", 2)
    make_concept(tmp_path, "reg_girl", 3)
    toml = write_toml(tmp_path / "dataset.toml", """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".caption"

[[datasets]]
resolution = [768, 512]
batch_size = 4
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "5_mychar"
  class_tokens = "mychar girl"
  keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "reg_girl"
  is_reg = true
  class_tokens = "girl"
  num_repeats = 2
""")
    result = scan_dataset(make_cfg(dataset_config=str(toml), train_data_dir="ignored"))
    ds = result.datasets[0]
    assert ds.spec.resolution == (768, 512) and ds.spec.batch_size == 4 and ds.spec.enable_bucket
    mychar, reg = ds.subsets
    assert mychar.spec.num_repeats == 1, "in a config file the 5_ prefix is not parsed (Kohya's rule)"
    assert mychar.spec.caption.keep_tokens == 2 and mychar.spec.caption.shuffle_caption
    assert mychar.spec.caption_extension == ".caption" and mychar.spec.class_tokens == "mychar girl"
    assert reg.spec.is_reg and reg.spec.num_repeats == 2 and reg.spec.caption.keep_tokens == 1


def test_dataset_toml_unknown_key_names_the_closest_valid_one(tmp_path):
    make_concept(tmp_path, "imgs", 1)
    toml = write_toml(tmp_path / "d.toml", '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "imgs"\nnum_repeat = 3\n')
    with pytest.raises(DatasetError, match="unknown key 'num_repeat'") as err:
        scan_dataset(make_cfg(dataset_config=str(toml)))
    assert "num_repeats" in str(err.value)


def test_dataset_toml_syntax_error_is_reported_with_the_file(tmp_path):
    toml = write_toml(tmp_path / "bad.toml", "[[datasets]\n")
    with pytest.raises(DatasetError, match="cannot be parsed"):
        scan_dataset(make_cfg(dataset_config=str(toml)))


def test_a_dataset_toml_subset_turns_wildcards_on_and_reads_every_caption_line(tmp_path):
    make_concept(tmp_path, "1_dog", 1, captions={0: "one\ntwo\n"})
    toml = write_toml(tmp_path / "dataset.toml", """
[[datasets]]
  [[datasets.subsets]]
  image_dir = "1_dog"
  enable_wildcard = true
""")
    result = scan_dataset(make_cfg(dataset_config=str(toml), train_data_dir="ignored"))
    assert result.datasets[0].subsets[0].spec.caption.enable_wildcard
    assert result.items[0].caption == "one\ntwo"
    plain = scan_dataset(make_cfg(train_data_dir=str(tmp_path)))
    assert plain.items[0].caption == "one"
