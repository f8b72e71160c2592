"""The dataset the training loop sees (through the trainer's own data path): step counts, one-bucket batches, reproducible order, reg balance."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from test_data_helpers import batches, make_cfg, make_concept, make_image, trainer_data, tree_snapshot
from trainer.data import TrainDataset, preflight, scan_dataset


def build(cfg):
    return TrainDataset(scan_dataset(cfg), cfg)


def test_kohya_reference_example_step_counts_with_and_without_regularization(tmp_path):
    """sd_scripts.md 2.4: 20 images x 10 repeats, batch 2, 10 epochs -> 100 steps/epoch, 1000 steps;
    adding 100 reg images doubles it to 2000 (reg balanced to the 200 training samples)."""
    make_concept(tmp_path / "img", "10_sks dog", 20, size=(16, 16))
    make_concept(tmp_path / "reg", "1_dog", 100, size=(16, 16), seed0=100)
    base = dict(train_data_dir=str(tmp_path / "img"), resolution="64", train_batch_size=2, epoch=10)
    report = preflight(make_cfg(**base))
    assert (report.steps_per_epoch, report.total_steps) == (100, 1000)
    report = preflight(make_cfg(**base, reg_data_dir=str(tmp_path / "reg")))
    assert (report.train_samples_per_epoch, report.reg_samples_per_epoch) == (200, 200)
    assert (report.steps_per_epoch, report.total_steps) == (200, 2000)
    report = preflight(make_cfg(**base, reg_data_dir=str(tmp_path / "reg"), gradient_accumulation_steps=3,
                                max_train_steps=500))
    assert report.steps_per_epoch == math.ceil(400 / 2 / 3) and report.total_steps == 500
    assert report.epochs == math.ceil(500 / 67)


def test_step_counts_match_the_planner_and_the_batches_actually_served(tmp_path):
    plan = pytest.importorskip("trainer.plan")
    make_concept(tmp_path / "img", "3_a", 5, size=(16, 16))
    make_concept(tmp_path / "img", "2_b", 4, size=(16, 16), seed0=10)
    make_concept(tmp_path / "reg", "1_c", 7, size=(16, 16), seed0=20)
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="64",
                   train_batch_size=3, epoch=4, gradient_accumulation_steps=2)
    report = preflight(cfg)
    expected = plan.compute_plan([(5, 3), (4, 2)], [(7, 1)], epochs=4, batch_size=3, gradient_accumulation_steps=2)
    assert (report.steps_per_epoch, report.total_steps) == (expected.steps_per_epoch, expected.total_steps)
    assert report.train_samples_per_epoch + report.reg_samples_per_epoch == expected.samples_per_epoch == 46
    ds = build(cfg)
    assert len(ds.epoch_batches(2)) == expected.batches_per_epoch == 16


def test_multi_bucket_step_counts_match_the_planners_bucket_mode(tmp_path):
    plan = pytest.importorskip("trainer.plan")
    for i in range(3):
        make_image(tmp_path / "2_mix" / f"wide{i}.png", (96, 48), seed=i)
        make_image(tmp_path / "2_mix" / f"tall{i}.png", (48, 96), seed=10 + i)
    # min_bucket_reso 32 is below the page's 64 (model_copy does not validate): buckets for tiny pictures
    cfg = make_cfg(train_data_dir=str(tmp_path), resolution="64", enable_bucket=True, max_bucket_reso=128,
                   bucket_reso_steps=32, train_batch_size=4, epoch=3).model_copy(update={"min_bucket_reso": 32})
    report = preflight(cfg)
    expected = plan.compute_plan([(6, 2)], [], epochs=3, batch_size=4, bucket_sizes=[6, 6])
    assert report.bucket_samples == {"32x96": 6, "64x64": 6}  # 2:1 ties 64x64 and 96x32; first wins, as in Kohya
    assert report.steps_per_epoch == expected.steps_per_epoch == 4  # ceil(6/4) per bucket, not ceil(12/4)=3
    assert report.total_steps == 12


def test_batches_never_mix_buckets_so_batches_are_counted_per_bucket(tmp_path):
    for i in range(3):
        make_image(tmp_path / "1_mix" / f"wide{i}.png", (96, 48), seed=i)
        make_image(tmp_path / "1_mix" / f"tall{i}.png", (48, 96), seed=10 + i)
    # min_bucket_reso 32 is below the page's 64 (model_copy does not validate): buckets for tiny pictures
    cfg = make_cfg(train_data_dir=str(tmp_path), resolution="64", enable_bucket=True, max_bucket_reso=128,
                   bucket_reso_steps=32, train_batch_size=2).model_copy(update={"min_bucket_reso": 32})
    ds = build(cfg)
    assert len(ds) == 4  # ceil(3/2) + ceil(3/2), not ceil(6/2)
    for batch in (ds[i] for i in range(len(ds))):
        w, h = batch["bucket"]
        assert batch["images"].shape[2:] == (h, w)
        assert len({("wide" in p) for p in batch["paths"]}) == 1


def test_batch_contract_images_captions_reg_flags_and_loss_weights(tmp_path):
    make_concept(tmp_path / "img", "1_sks dog", 2, captions={0: "sks dog, grass"})
    make_concept(tmp_path / "reg", "1_dog", 2, seed0=50)
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="64",
                   train_batch_size=4, prior_loss_weight=0.25)
    batch = build(cfg)[0]
    assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert sorted(batch["captions"]) == ["dog", "dog", "sks dog", "sks dog, grass"]
    assert batch["is_reg"].tolist() == [c == "dog" for c in batch["captions"]]
    assert batch["loss_weights"].tolist() == [0.25 if r else 1.0 for r in batch["is_reg"].tolist()]
    assert batch["bucket"] == (64, 64) and len(batch["paths"]) == 4
    assert batch["original_sizes_hw"].tolist() == [[64, 64]] * 4


def dataset_for_order(tmp_path, seed=1, **kw):
    make_concept(tmp_path, "2_cat", 6, size=(32, 32), captions={i: "cat, a, b, c, d" for i in range(6)})
    return build(make_cfg(train_data_dir=str(tmp_path), resolution="32", train_batch_size=2, seed=seed,
                          shuffle_caption=True, keep_tokens=1, flip_aug=True, **kw))


def epoch_view(ds, epoch):
    ds.set_epoch(epoch)
    return [(b["paths"], b["captions"], b["images"].sum().item()) for b in (ds[i] for i in range(len(ds)))]


def test_epoch_order_and_captions_are_reproducible_from_seed_and_epoch(tmp_path):
    a = dataset_for_order(tmp_path)
    b = dataset_for_order(tmp_path)
    assert epoch_view(a, 1) == epoch_view(b, 1)
    assert epoch_view(a, 2) != epoch_view(a, 1)
    c = dataset_for_order(tmp_path, seed=2)
    assert epoch_view(c, 1) != epoch_view(a, 1)


def test_resume_mid_epoch_skips_the_batches_already_trained(tmp_path):
    ds = dataset_for_order(tmp_path)
    _, steps = trainer_data(make_cfg(train_data_dir=str(tmp_path), resolution="32", train_batch_size=2,
                                     seed=1, shuffle_caption=True, keep_tokens=1, flip_aug=True))
    ds.set_epoch(3)
    full = [(b["paths"], b["captions"]) for b in (ds[i] for i in range(len(ds)))]
    resumed = [(b["paths"], b["captions"]) for b in batches(steps, 3, skip_steps=4)]
    assert resumed == full[4:]
    assert list(batches(steps, 3)[0]["bucket"]) == [32, 32]  # (w, h); the DataLoader hands a tuple on as a list
    assert len(batches(steps, 3)) == len(full), "the skip applies to the resumed pass only"


def test_worker_processes_give_the_same_batches_as_the_main_process(tmp_path):
    make_concept(tmp_path, "2_cat", 4, size=(32, 32), captions={i: "cat, a, b, c" for i in range(4)})
    common = dict(train_data_dir=str(tmp_path), resolution="32", train_batch_size=2, seed=5, shuffle_caption=True)
    _, inline = trainer_data(make_cfg(**common))
    _, workers = trainer_data(make_cfg(**common, max_data_loader_n_workers=2, persistent_data_loader_workers=True))
    assert workers.loader.num_workers == 2
    for epoch in (1, 2):
        a = [(b["captions"], b["images"]) for b in batches(inline, epoch)]
        b = [(b["captions"], b["images"]) for b in batches(workers, epoch)]
        assert [x[0] for x in a] == [x[0] for x in b]
        assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))


def reg_usage(ds, epochs):
    per_epoch = []
    for e in epochs:
        used = Counter(str(ds.scan.items[i].path) for key in ds.epoch_batches(e) for i, _ in key.samples
                       if ds.scan.items[i].is_reg)
        per_epoch.append(used)
    return per_epoch


def test_surplus_regularization_images_rotate_so_all_are_used(tmp_path):
    """4 training samples, 12 reg images: 4 reg per epoch, a different seeded 4 each epoch, all 12 in 3 epochs."""
    make_concept(tmp_path / "img", "2_sks", 2, size=(16, 16))
    make_concept(tmp_path / "reg", "1_person", 12, size=(16, 16), seed0=30)
    ds = build(make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="32"))
    usage = reg_usage(ds, [1, 2, 3])
    assert [sum(u.values()) for u in usage] == [4, 4, 4]
    over_three_epochs = sum(usage, Counter())
    assert len(over_three_epochs) == 12 and set(over_three_epochs.values()) == {1}
    assert len(ds) == 8 and all(len(ds.epoch_batches(e)) == 8 for e in (1, 2, 3))


def test_scarce_regularization_images_are_repeated_evenly(tmp_path):
    make_concept(tmp_path / "img", "5_sks", 2, size=(16, 16))
    make_concept(tmp_path / "reg", "1_person", 3, size=(16, 16), seed0=30)
    ds = build(make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="32"))
    usage = reg_usage(ds, [1, 2, 3])
    assert all(sum(u.values()) == 10 for u in usage)
    assert all(set(u.values()) <= {3, 4} for u in usage)  # 10 over 3 images: 3 or 4 each, never 1 and 7


def test_a_file_deleted_mid_run_does_not_stop_the_batch(tmp_path):
    folder = make_concept(tmp_path, "1_cat", 2, size=(32, 32))
    ds = build(make_cfg(train_data_dir=str(tmp_path), resolution="32", train_batch_size=2))
    (folder / "img000.png").unlink()
    batch = ds[0]
    assert batch["images"].shape[0] == 2 and all("img001" in p for p in batch["paths"])


def test_nothing_in_the_dataset_folder_is_modified(tmp_path):
    make_concept(tmp_path / "img", "3_sks dog", 3, captions={0: "sks dog"})
    make_concept(tmp_path / "reg", "1_dog", 2, seed0=9)
    before = tree_snapshot(tmp_path)
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="64",
                   shuffle_caption=True, flip_aug=True, color_aug=True, random_crop=True)
    preflight(cfg).to_text()
    _, steps = trainer_data(cfg)
    assert batches(steps, 1)
    assert tree_snapshot(tmp_path) == before
