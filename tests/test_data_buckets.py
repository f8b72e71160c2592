"""Aspect-ratio buckets: the same bucket sets and assignments as Kohya's sd-scripts."""
from __future__ import annotations

import pytest

from trainer.data.buckets import BucketManager, make_bucket_resolutions
from trainer.data.options import DatasetSpec


def kohya_reference_buckets(side: int, lo=256, hi=1024, step=64) -> set[tuple[int, int]]:
    """Written from the description in sd_scripts.md section 2.5, independently of trainer.data:
    max_area = W*H; the square floor(sqrt(area)/step)*step; for w in lo..hi by step:
    h = min(hi, floor(area / w / step) * step), kept (both ways round) when h >= lo."""
    area = side * side
    square = int((area ** 0.5) / step) * step
    out = {(square, square)}
    for w in range(lo, hi + 1, step):
        h = min(hi, int(area / w / step) * step)
        if h >= lo:
            out |= {(w, h), (h, w)}
    return out


@pytest.mark.parametrize("side", [512, 768, 1024])
def test_bucket_set_matches_kohya_with_default_limits(side):
    """A user training at 512/768/1024 with default limits gets exactly Kohya's buckets."""
    ours = make_bucket_resolutions((side, side), 256, 1024, 64)
    assert set(ours) == kohya_reference_buckets(side)
    assert all(w * h <= side * side and w % 64 == 0 and h % 64 == 0 for w, h in ours)


def test_512_buckets_are_the_17_listed_in_the_reference():
    portrait = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576)]
    expected = set(portrait) | {(h, w) for w, h in portrait} | {(512, 512)}
    assert set(make_bucket_resolutions((512, 512))) == expected
    assert len(expected) == 17


def test_1024_default_max_gives_25_buckets_and_sdxl_2048_step_32_gives_81():
    assert len(make_bucket_resolutions((1024, 1024), 256, 1024, 64)) == 25
    assert len(make_bucket_resolutions((1024, 1024), 256, 2048, 32)) == 81


def manager(**kw) -> BucketManager:
    spec = dict(resolution=(512, 512), enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1024,
                bucket_reso_steps=64, bucket_no_upscale=False)
    spec.update(kw)
    return BucketManager(DatasetSpec(**spec))


def test_wide_image_goes_to_closest_aspect_bucket_and_is_centre_cropped():
    p = manager().place(1000, 500)  # aspect 2.0: 704x320 (2.2) is closer than 640x384 (1.67)
    assert p.bucket == (704, 320)
    assert p.resized == (704, 352)  # covers the bucket: width fits, height overflows
    assert p.crop_ltrb == (0, 16, 704, 336)


def test_exact_bucket_size_is_preferred():
    p = manager().place(448, 576)
    assert p.bucket == (448, 576) and p.resized == (448, 576) and p.crop_ltrb == (0, 0, 448, 576)


def test_small_image_is_upscaled_to_cover_its_bucket():
    p = manager().place(100, 100)
    assert p.bucket == (512, 512) and p.resized == (512, 512)


def test_bucket_no_upscale_keeps_small_images_and_crops_to_the_step():
    p = manager(bucket_no_upscale=True).place(300, 200)
    assert p.resized == (300, 200) and p.bucket == (256, 192)
    assert p.crop_ltrb == (22, 4, 278, 196)


def test_bucket_no_upscale_downscales_large_images_to_the_area():
    p = manager(bucket_no_upscale=True).place(2000, 1000)
    assert p.resized == (640, 320) and p.bucket == (640, 320)


def test_without_buckets_every_image_is_cropped_to_the_resolution():
    m = BucketManager(DatasetSpec(resolution=(512, 768), enable_bucket=False))
    for size in [(1000, 500), (300, 900), (512, 768)]:
        p = m.place(*size)
        assert p.bucket == (512, 768)
        assert p.resized[0] >= 512 and p.resized[1] >= 768


def test_bucket_limits_that_exclude_the_resolution_are_reported_with_the_fix(tmp_path):
    from test_data_helpers import make_cfg, make_concept
    from trainer.data import DatasetError, scan_dataset

    make_concept(tmp_path, "1_cat", 1)
    with pytest.raises(DatasetError, match="max_bucket_reso 512 is below") as err:
        scan_dataset(make_cfg(train_data_dir=str(tmp_path), resolution="1024", enable_bucket=True,
                              max_bucket_reso=512))
    assert "raise max_bucket_reso to 1024" in str(err.value)
