"""A user with face-named images (sd-scripts' tools/detect_face_rotate.py: name_<cx>_<cy>_<w>_<h>.png) sets
face_crop_aug_range: each step trains a crop around the face, zoomed at random within the range; other images are
trained as they are."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

import trainer.config as tc
from test_data_helpers import batches, make_cfg, make_image, trainer_data
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.data.buckets import Placement
from trainer.data.face_crop import face_crop_placement, face_from_name


def test_the_face_box_is_read_from_the_last_four_numbers_of_the_file_name():
    assert face_from_name(Path("dir/girl_01_320_180_96_120.png")) == (320, 180, 96, 120)
    for name in ("cat.png", "a_b_c_d.png", "my_cat_in_the_park.png", "x_0_50_20_20.png", "x_5_5_0_0.png"):
        assert face_from_name(Path(name)) is None, name


def place(face, aug_range, size=(512, 512), bucket=(128, 128), random_crop=False, seed=0):
    placement = Placement(bucket, size, (0, 0, *bucket), 0.0)
    return face_crop_placement(size, face, placement, aug_range, random_crop, random.Random(seed))


def test_the_crop_is_the_bucket_around_the_face_zoomed_so_its_short_side_is_low_to_high_face_sizes():
    # a fixed range: the 64-pixel face's crop is 2 faces wide at scale 1, centred on the face (sd-scripts)
    assert place((400, 100, 64, 48), (2.0, 2.0)) == Placement((128, 128), (512, 512), (336, 36, 464, 164), 0.0)
    # a range: scale 0.5..1.0 at random; the face stays centred within the ±face/20 nudge, the crop inside
    scales, nudges = set(), set()
    for seed in range(30):
        p = place((256, 200, 64, 64), (2.0, 4.0), seed=seed)
        scale = p.resized[0] / 512
        scales.add(round(scale, 2))
        assert 0.5 - 1e-3 <= scale <= 1.0 and p.resized[1] == p.resized[0]
        left, top, right, bottom = p.crop_ltrb
        assert (right - left, bottom - top) == (128, 128) and left >= 0 and right <= p.resized[0]
        nudges.add((left + 64 - int(256 * scale + 0.5), top + 64 - int(200 * scale + 0.5)))
    assert len(scales) > 10 and len(nudges) > 5 and {n for pair in nudges for n in pair} <= set(range(-4, 4))
    # never smaller than the bucket, whatever the face: a face as large as the image keeps the cover scale
    big = place((256, 256, 500, 500), (2.0, 4.0), size=(512, 256), bucket=(128, 64))
    assert big.resized == (128, 64) and big.crop_ltrb == (0, 0, 128, 64)


def test_a_face_named_image_trains_a_crop_around_its_face_and_the_others_train_whole(tmp_path):
    folder = tmp_path / "img" / "1_face"
    pixels = np.zeros((256, 256, 3), np.uint8)
    pixels[:, :] = (0, 0, 255)
    pixels[48:80, 48:80] = (255, 0, 0)  # the face: 32 pixels around (64, 64)
    folder.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "me_64_64_32_32.png")
    make_image(folder / "other.png", (64, 64), seed=1)
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), resolution="64", train_batch_size=1,
                   face_crop_aug_range="2.0,2.0")
    dataset, steps = trainer_data(cfg)
    rows = {Path(b["paths"][0]).name: b for b in batches(steps, 1)}
    face = rows["me_64_64_32_32.png"]
    # the 64-pixel crop at scale 1 is centred on the face: red in the middle, where the whole image is blue
    assert face["images"][0, :, 32, 32].tolist() == [1.0, -1.0, -1.0]
    assert face["images"][0, :, 4, 4].tolist() == [-1.0, -1.0, 1.0]
    assert face["original_sizes_hw"].tolist() == [[64, 64]] and face["crop_top_lefts"].tolist() == [[0, 0]]
    _, plain_steps = trainer_data(cfg.model_copy(update={"face_crop_aug_range": ""}))
    whole = {Path(b["paths"][0]).name: b for b in batches(plain_steps, 1)}
    assert whole["me_64_64_32_32.png"]["images"][0, :, 32, 32].tolist() == [-1.0, -1.0, 1.0]
    assert rows["other.png"]["images"].equal(whole["other.png"]["images"])


def test_face_crop_is_refused_with_cached_latents_and_a_bad_range_names_the_fix(tmp_path):
    _, problems = tc.validate_values("lora", {"face_crop_aug_range": "2.0,4.0", "cache_latents": True})
    [problem] = [p for p in problems if p.field == "face_crop_aug_range"]
    assert "cached latents" in problem.message and "clear face_crop_aug_range" in problem.message
    for bad in ("2.0", "4,2", "a,b"):
        _, problems = tc.validate_values("lora", {"face_crop_aug_range": bad, "cache_latents": False})
        assert [p.field for p in problems if p.level == "error"] == ["face_crop_aug_range"], bad
        assert '"2.0,4.0"' in problems[0].message
    config = tc.LoraConfig(face_crop_aug_range="2.0,4.0", cache_latents=False)
    assert sd_scripts_export(config).toml_data["face_crop_aug_range"] == "2.0,4.0"
    # a dataset TOML writes it as sd-scripts' list, per subset; cached latents refuse it there too
    make_image(tmp_path / "img" / "me_64_64_32_32.png", (128, 128))
    (tmp_path / "d.toml").write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = '
                                     f'"{tmp_path / "img"}"\nface_crop_aug_range = [2.0, 4.0]\n', encoding="utf-8")
    from trainer.data.preflight import preflight  # the function (the package name can be the submodule)
    from trainer.data.dataset_toml import load_dataset_config

    [spec], problems = load_dataset_config(tmp_path / "d.toml", make_cfg())
    assert spec.subsets[0].face_crop_aug_range == (2.0, 4.0) and not problems
    report = preflight(make_cfg(dataset_config=str(tmp_path / "d.toml"), cache_latents=True))
    assert [e["field"] for e in report.errors] == ["face_crop_aug_range"]
