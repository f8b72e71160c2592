"""Latent cache: reused when nothing changed, recomputed when the image, bucket, flip or VAE changed."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from test_data_helpers import batches, make_cfg, make_concept, make_image, tiny_vae, trainer_data, tree_snapshot
from trainer.data import DatasetError
from trainer.data.augment import render
from trainer.data.images import load_rgb

VAE = tiny_vae(0)


def cached(tmp_path, vae=VAE, progress=None, **kw):
    opts = dict(train_data_dir=str(tmp_path / "images"), resolution="64", cache_latents=True,
                cache_latents_to_disk=True, train_batch_size=2)
    opts.update(kw)
    dataset, _ = trainer_data(make_cfg(**opts), vae, on_progress=progress)
    return dataset, dataset.latents.stats


@pytest.fixture
def images(tmp_path):
    return make_concept(tmp_path / "images", "2_cat", 2, size=(64, 64))


def test_cache_files_sit_beside_the_images_and_are_reused_next_run(tmp_path, images):
    dataset, stats = cached(tmp_path)
    assert (stats["computed"], stats["reused"]) == (2, 0)
    assert (images / "img000.png.64x64.latents.safetensors").is_file()
    dataset, stats = cached(tmp_path)
    assert (stats["computed"], stats["reused"]) == (2 - 2, 2)
    batch = dataset[0]
    assert "images" not in batch and batch["latents"].shape == (2, 4, 32, 32)  # tiny VAE halves each side


def test_cached_latents_are_the_vae_posterior_of_the_bucket_image(tmp_path, images):
    dataset, _ = cached(tmp_path, flip_aug=True, vae_batch_size=2)
    item = dataset.scan.items[0]
    pixels = render(load_rgb(item.path), item.placement)[0][None]
    dist = VAE.encode(pixels).latent_dist
    entry = dataset.latents.get(item)
    assert torch.allclose(entry.mean, dist.mean[0], atol=1e-5)
    assert torch.allclose(entry.logvar, dist.logvar[0], atol=1e-5)
    flipped = VAE.encode(torch.flip(pixels, dims=[3])).latent_dist
    assert torch.allclose(entry.mean_flipped, flipped.mean[0], atol=1e-5)


def test_image_edited_with_same_size_and_name_is_recomputed(tmp_path, images):
    dataset, _ = cached(tmp_path)
    before = load_file(str(images / "img000.png.64x64.latents.safetensors"))["mean"]
    make_image(images / "img000.png", (64, 64), seed=999)  # same name, same size, new pixels
    dataset, stats = cached(tmp_path)
    assert (stats["computed"], stats["reused"]) == (1, 1)
    after = load_file(str(images / "img000.png.64x64.latents.safetensors"))["mean"]
    assert not torch.allclose(before, after)


def test_touched_but_unchanged_image_is_not_recomputed(tmp_path, images):
    cached(tmp_path)
    st = os.stat(images / "img001.png")
    os.utime(images / "img001.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, stats = cached(tmp_path)
    assert stats["computed"] == 0


def test_changed_vae_recomputes_everything(tmp_path, images):
    cached(tmp_path)
    _, stats = cached(tmp_path, vae=tiny_vae(1))
    assert (stats["computed"], stats["reused"]) == (2, 0)


def test_turning_flip_on_recomputes_and_turning_it_off_reuses(tmp_path, images):
    cached(tmp_path)
    dataset, stats = cached(tmp_path, flip_aug=True)
    assert stats["computed"] == 2
    assert "mean_flipped" in load_file(str(images / "img000.png.64x64.latents.safetensors"))
    _, stats = cached(tmp_path, flip_aug=False)
    assert (stats["computed"], stats["reused"]) == (0, 2)  # flipped entries hold the plain latents too


def test_changed_bucket_gets_its_own_entry(tmp_path, images):
    cached(tmp_path)
    _, stats = cached(tmp_path, resolution="32")
    assert stats["computed"] == 2
    assert (images / "img000.png.32x32.latents.safetensors").is_file()


def test_cache_folder_with_spaces_and_japanese_characters_leaves_the_dataset_untouched(tmp_path):
    root = tmp_path / "学習 データ"
    make_concept(root, "1_猫 ちゃん", 2, size=(48, 64))
    before = tree_snapshot(root)
    cache = tmp_path / "キャッシュ dir"
    calls = []
    dataset, stats = cached(tmp_path, train_data_dir=str(root), latent_cache_dir=str(cache),
                            progress=lambda done, total: calls.append((done, total)))
    assert stats["computed"] == 2 and tree_snapshot(root) == before
    files = list(cache.rglob("*.latents.safetensors"))
    assert len(files) == 2 and all("猫 ちゃん" in f.parent.name for f in files)
    assert calls[0] == (0, 2) and calls[-1] == (2, 2) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    _, stats = cached(tmp_path, train_data_dir=str(root), latent_cache_dir=str(cache))
    assert stats["reused"] == 2


def test_memory_cache_writes_nothing_and_samples_fresh_latents_each_epoch(tmp_path, images):
    before = tree_snapshot(tmp_path)
    dataset, stats = cached(tmp_path, cache_latents_to_disk=False)
    assert stats["computed"] == 2 and tree_snapshot(tmp_path) == before
    dataset.set_epoch(1)
    first = dataset[0]["latents"]
    dataset.set_epoch(2)
    second = dataset[0]["latents"]
    assert first.shape == second.shape and not torch.equal(first, second)


def test_image_broken_between_scan_and_caching_is_left_out_not_fatal(tmp_path, images):
    from trainer.data import scan_dataset
    cfg = make_cfg(train_data_dir=str(tmp_path / "images"), resolution="64", cache_latents=True,
                   train_batch_size=2)
    scan = scan_dataset(cfg)
    (images / "img001.png").write_bytes(b"broken now")
    dataset, steps = trainer_data(cfg, VAE, scan=scan)
    assert dataset.latents.stats["failed"] == 1
    served = batches(steps, 1)
    assert served and all(b["latents"].shape[0] == 2 and all("img000" in p for p in b["paths"]) for b in served)


def test_cache_refuses_augmentations_that_would_make_it_stale(tmp_path, images):
    with pytest.raises(DatasetError, match="color_aug"):
        cached(tmp_path, color_aug=True)
