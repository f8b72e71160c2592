"""Fine-tuning with Kohya's metadata workflow: captions/tags -> metadata JSON -> buckets (+ latents)
-> the same batches the folder-based dataset produces."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_kinds_helpers import one_thread  # noqa: F401  (autouse fixture)
from trainer.config import FinetuneConfig
from test_data_helpers import trainer_data
from trainer.data import DatasetError, TrainDataset, preflight
from trainer.kinds import KindError, create_kind
from trainer.kinds.finetune_dataset import build_bucket_metadata, scan_metadata
from trainer.kinds.finetune_metadata import merge_captions_to_metadata, merge_tags_to_metadata, read_metadata

SIZES = {"wide": (192, 64), "square": (128, 128), "tall": (64, 192)}


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, (name, size) in enumerate(SIZES.items()):
        Image.new("RGB", size, (60 * i, 100, 200)).save(images / f"{name}.png")
        (images / f"{name}.caption").write_text(f"a {name} picture\n", encoding="utf-8")
        (images / f"{name}.txt").write_text(f"{name}, blue sky", encoding="utf-8")
    return images


def ft_config(folder, **overrides):
    values = dict(train_data_dir=str(folder), resolution="128", enable_bucket=True, min_bucket_reso=64,
                  max_bucket_reso=256, bucket_reso_steps=64, bucket_no_upscale=False, train_batch_size=2,
                  dataset_repeats=2, caption_extension=".caption", output_dir=str(folder.parent / "out"),
                  output_name="ft", cache_latents=False, seed=4)
    values.update(overrides)
    return FinetuneConfig(**values)


def test_metadata_json_is_built_from_caption_and_tag_files(folder, tmp_path):
    caps = merge_captions_to_metadata(folder, ".caption", tmp_path / "meta_cap.json")
    assert caps == {"wide": {"caption": "a wide picture"}, "square": {"caption": "a square picture"},
                    "tall": {"caption": "a tall picture"}}  # every image, keyed by its name
    assert read_metadata(tmp_path / "meta_cap.json") == caps
    merged = merge_tags_to_metadata(folder, tmp_path / "meta_cap.json", tmp_path / "meta_cap_dd.json")
    assert merged["tall"] == {"caption": "a tall picture", "tags": "tall, blue sky"}
    assert json.loads((tmp_path / "meta_cap.json").read_text()) == caps  # the input file is left as it was
    full = merge_captions_to_metadata(folder, ".caption", None, full_path=True)
    assert set(full) == {str((folder / f"{n}.png").resolve()) for n in SIZES}  # Kohya's --full_path keys
    assert len(scan_metadata(ft_config(folder), in_json=_write(tmp_path / "full.json", full)).items) == 3


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_metadata_tools_refuse_to_overwrite_their_input_and_name_the_fix(folder, tmp_path):
    merge_captions_to_metadata(folder, ".caption", tmp_path / "meta.json")
    with pytest.raises(KindError, match="also the input file"):
        merge_tags_to_metadata(folder, tmp_path / "meta.json", tmp_path / "meta.json")
    with pytest.raises(KindError, match="caption_extension"):
        merge_captions_to_metadata(folder, ".cap", tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(KindError, match="line 1"):
        read_metadata(tmp_path / "broken.json")


def test_dataset_from_the_metadata_yields_bucketed_batches_with_caption_and_tags(folder, tmp_path):
    merge_captions_to_metadata(folder, ".caption", tmp_path / "cap.json")
    merge_tags_to_metadata(folder, tmp_path / "cap.json", tmp_path / "meta.json")
    cfg = ft_config(folder, in_json=str(tmp_path / "meta.json"))
    scan = scan_metadata(cfg)
    buckets = {it.path.stem: it.placement.bucket for it in scan.items}
    assert buckets == {"wide": (192, 64), "square": (128, 128), "tall": (64, 192)}
    dataset = TrainDataset(scan, cfg)
    assert dataset.samples_per_epoch() == (6, 0)  # 3 images x dataset_repeats 2
    seen = []
    for index in range(len(dataset)):
        batch = dataset[index]
        w, h = batch["bucket"]
        assert batch["images"].shape[1:] == (3, h, w)
        assert not batch["is_reg"].any() and torch.equal(batch["loss_weights"], torch.ones(len(batch["paths"])))
        for path, caption in zip(batch["paths"], batch["captions"]):
            stem = Path(path).stem
            assert caption == f"a {stem} picture, {stem}, blue sky"
            seen.append(stem)
    assert sorted(seen) == sorted(list(SIZES) * 2)
    report = preflight(cfg, scan=scan)
    assert report.ok and report.images == 3 and report.train_samples_per_epoch == 6


def test_missing_images_are_skipped_and_an_empty_result_is_an_error(folder, tmp_path):
    meta = merge_captions_to_metadata(folder, ".caption", None)
    meta["gone"] = {"caption": "deleted since"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    scan = scan_metadata(ft_config(folder, in_json=str(tmp_path / "meta.json")))
    assert len(scan.items) == 3
    assert [p.message for p in scan.of("skipped")] == ["metadata entry 'gone': no image file found"]
    (tmp_path / "none.json").write_text(json.dumps({"gone": {"caption": "x"}}))
    with pytest.raises(DatasetError, match="names no usable image"):
        scan_metadata(ft_config(folder, in_json=str(tmp_path / "none.json")))


def test_empty_in_json_builds_the_metadata_in_the_output_folder_without_overwriting(folder):
    cfg = ft_config(folder)
    kind = create_kind(cfg)
    scan = kind.scan_dataset()
    built = folder.parent / "out" / "ft_meta_cap.json"
    assert built.is_file() and len(scan.items) == 3
    kind.scan_dataset()  # same captions: the same file is reused
    assert sorted(p.name for p in built.parent.iterdir()) == ["ft_meta_cap.json"]
    (folder / "wide.caption").write_text("changed caption")
    assert "changed caption" in [it.caption for it in kind.scan_dataset().items]
    assert "a wide picture" in built.read_text()  # the earlier file is kept; a numbered one is written
    assert (built.parent / "ft-1_meta_cap.json").is_file()


def test_bucket_metadata_and_cached_latents_feed_training_batches(folder, tmp_path):
    from trainer.models.tiny import build_tiny_components

    vae = build_tiny_components("sd1")["vae"]
    merge_captions_to_metadata(folder, ".caption", tmp_path / "cap.json")
    cfg = ft_config(folder, in_json=str(tmp_path / "lat.json"), cache_latents=True, cache_latents_to_disk=True)
    meta = build_bucket_metadata(folder, tmp_path / "cap.json", tmp_path / "lat.json", cfg, vae=vae)
    assert meta["tall"]["image_size"] == [64, 192] and meta["tall"]["train_resolution"] == [64, 192]
    assert len(list(folder.glob("*.latents.safetensors"))) == 3
    dataset, _ = trainer_data(cfg, vae, scan=scan_metadata(cfg))
    assert dataset.latents.stats["reused"] == 3  # training reuses the cache the metadata step wrote
    batch = dataset[0]
    w, h = batch["bucket"]
    assert batch["latents"].shape[1:] == (4, h // 8, w // 8)


def test_command_line_merges_captions_like_kohyas_script(folder, tmp_path):
    out = tmp_path / "meta_cap.json"
    done = subprocess.run([sys.executable, "-m", "trainer.kinds.finetune_metadata", "captions", str(folder),
                           str(out), "--caption_extension", ".caption"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 images" in done.stdout and read_metadata(out)["square"] == {"caption": "a square picture"}


def test_preflight_of_a_finetune_config_reports_problems_and_writes_nothing(folder):
    """The planner/preflight path: nothing written, problems listed instead of raised."""
    kind = create_kind(ft_config(folder))
    scan = kind.scan_dataset(strict=False, write=False)
    assert len(scan.items) == 3 and not (folder.parent / "out").exists()
    report = preflight(ft_config(folder), scan=scan)
    assert (report.images, report.steps_per_epoch) == (3, 3)  # 3 buckets x 2 repeats, batch 2 -> one step each
    bad = create_kind(ft_config(folder, caption_extension=".cap")).scan_dataset(strict=False, write=False)
    assert bad.items == [] and "caption_extension" in bad.of("error")[0].message
    missing = create_kind(ft_config(folder, in_json=str(folder / "nope.json"))).scan_dataset(strict=False)
    assert "does not exist" in missing.of("error")[0].message
