"""Masked loss from a folder of mask images (sd-scripts' conditioning_data_dir): each training image's mask is the
image of the same name in the mask folder (one sub-folder per concept folder, or a flat folder), its red channel /
255. It follows the image through resize, crop and flip, is cached beside the latents and read again when the mask
file changes, and a LoRA trained with it learns nothing where the mask is black. A missing mask is refused by name;
the option imports from Kohya_ss JSONs and exports to sd-scripts."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from test_data_helpers import batches, make_cfg, make_image, tiny_vae, trainer_data
from trainer.data import preflight
from trainer.data.augment import render_masked
from trainer.data.buckets import Placement
from trainer.data.images import load_masked
from trainer.data.scan import scan_dataset
from trainer.train.diffusion import mask_at


def mask_png(path, red, size=(64, 64), mode="RGB"):
    """A mask image whose red channel is `red` (0..255 or an [H, W] array); green and blue are its inverse, so a
    reader that took any other channel (or a mean) would get it wrong."""
    w, h = size
    red = np.broadcast_to(np.asarray(red, np.uint8), (h, w))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(np.ascontiguousarray(red), "L").save(path)
    else:
        pixels = np.stack([red, 255 - red, 255 - red], axis=-1)
        Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(path)
    return path


def left_half(size=(64, 64), value=255):
    w, h = size
    red = np.zeros((h, w), np.uint8)
    red[:, : w // 2] = value
    return red


@pytest.fixture
def masked_concepts(tmp_path):
    """images/10_cat (a.png, b.jpg) with masks/10_cat/a.webp (left half) and b.png (greyscale 128), images/2_dog/c.png
    whose mask lies directly in masks/ (no 2_dog sub-folder), and a stray mask nothing uses."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    make_image(images / "10_cat" / "a.png", seed=1)
    make_image(images / "10_cat" / "b.jpg", seed=2)
    make_image(images / "2_dog" / "c.png", seed=3)
    mask_png(masks / "10_cat" / "a.webp", left_half())
    mask_png(masks / "10_cat" / "b.png", 128, mode="L")
    mask_png(masks / "c.png", 255)
    mask_png(masks / "10_cat" / "zzz_orphan.png", 0)
    return images, masks


def mask_data(images, masks, **kw):
    opts = dict(train_data_dir=str(images), conditioning_data_dir=str(masks), masked_loss=True, resolution="64",
                cache_latents=True, cache_latents_to_disk=True, train_batch_size=3)
    opts.update(kw)
    dataset, steps = trainer_data(make_cfg(**opts), tiny_vae(0))
    return dataset, steps, dataset.latents.stats if dataset.latents else None


def masks_by_name(steps) -> dict[str, torch.Tensor]:
    """Each image's loss mask as batched; a batch of unmasked images only has none (it counts everywhere)."""
    out = {}
    for b in batches(steps, 1):
        masks = b.get("alpha_masks", torch.ones(len(b["paths"]), 64, 64))
        out.update((p.split("/")[-1], m) for p, m in zip(b["paths"], masks))
    return out


# --- finding the masks -----------------------------------------------------------------------------

def test_each_image_finds_its_mask_by_name_in_its_concept_sub_folder_or_the_flat_folder(masked_concepts):
    images, masks = masked_concepts
    scan = scan_dataset(make_cfg(train_data_dir=str(images), conditioning_data_dir=str(masks), masked_loss=True,
                                 resolution="64"))
    found = {item.path.name: item.mask_path for item in scan.items}
    assert found == {"a.png": masks / "10_cat" / "a.webp", "b.jpg": masks / "10_cat" / "b.png",
                     "c.png": masks / "c.png"}
    assert all(s.spec.masked for s in scan.datasets[0].subsets)
    orphan = [p for p in scan.problems if "match no training image" in p.message]
    assert len(orphan) == 1 and "zzz_orphan.png" in orphan[0].message and orphan[0].level == "warning"


def test_a_mask_folder_inside_the_image_folder_is_not_a_concept_folder(tmp_path):
    images = tmp_path / "images"
    make_image(images / "1_cat" / "a.png")
    mask_png(images / "masks" / "a.png", 255)
    scan = scan_dataset(make_cfg(train_data_dir=str(images), conditioning_data_dir=str(images / "masks"),
                                 resolution="64"))
    assert [s.spec.label for s in scan.datasets[0].subsets] == ["1_cat"] and not scan.of("error")


def test_regularisation_images_count_everywhere(tmp_path, masked_concepts):
    images, masks = masked_concepts
    make_image(tmp_path / "reg" / "1_cat" / "r.png", seed=9)
    dataset, steps, _ = mask_data(images, masks, reg_data_dir=str(tmp_path / "reg"), cache_latents=False,
                                  cache_latents_to_disk=False, train_batch_size=1)
    reg = [s.spec for s in dataset.scan.datasets[0].subsets if s.spec.is_reg]
    assert reg and reg[0].conditioning_data_dir is None and not reg[0].masked
    by_name = masks_by_name(steps)
    assert by_name["r.png"].eq(1).all() and not by_name["a.png"].eq(1).all()


# --- the mask's values and placement ----------------------------------------------------------------

def test_the_red_channel_is_the_mask_and_it_follows_resize_crop_and_flip(tmp_path):
    image = make_image(tmp_path / "img.png", size=(128, 128))
    mask = mask_png(tmp_path / "m.png", left_half((64, 64), value=204), size=(64, 64))  # half size: stretched
    rgb, red = load_masked(image, mask)
    assert rgb.size == red.size == (128, 128)
    placement = Placement(bucket=(48, 64), resized=(64, 64), crop_ltrb=(8, 0, 56, 64), ar_error=0.0)
    _, _, out = render_masked(rgb, red, placement)
    assert out.shape == (64, 48)
    assert torch.allclose(out[:, :23], torch.tensor(0.8)) and out[:, 25:].eq(0).all()  # 204/255, cropped 8 px
    _, _, flipped = render_masked(rgb, red, placement, flip=True)
    assert torch.equal(flipped, torch.flip(out, dims=[1]))
    grey = mask_png(tmp_path / "grey.png", 51, size=(128, 128), mode="L")
    assert np.asarray(load_masked(image, grey)[1]).max() == 51  # a greyscale mask's own value


def test_cached_and_uncached_batches_weigh_the_latent_pixels_alike(masked_concepts):
    images, masks = masked_concepts
    _, steps, _ = mask_data(images, masks, flip_aug=True, cache_latents=False, cache_latents_to_disk=False)
    raw = batches(steps, 1)[0]
    _, steps, _ = mask_data(images, masks, flip_aug=True)
    cached = batches(steps, 1)[0]
    assert raw["paths"] == cached["paths"] and raw["alpha_masks"].shape == (3, 64, 64)
    assert torch.allclose(mask_at(raw["alpha_masks"], (32, 32)), mask_at(cached["alpha_masks"], (32, 32)))
    by_name = masks_by_name(steps)
    assert torch.allclose(by_name["b.jpg"], torch.tensor(128 / 255)) and by_name["c.png"].eq(1).all()


# --- the latent cache -------------------------------------------------------------------------------

def test_a_changed_mask_file_is_read_again_and_an_untouched_one_reused(masked_concepts):
    images, masks = masked_concepts
    _, _, stats = mask_data(images, masks)
    entry = images / "10_cat" / "a.png.64x64.mask.latents.safetensors"
    assert stats["computed"] == 3 and entry.is_file()
    with safe_open(str(entry), "pt") as fh:
        key = json.loads(fh.metadata()["kohya_studio_latent_cache"])
    assert key["mask_image"]["path"] == str(masks / "10_cat" / "a.webp") and key["alpha_mask"] is False
    _, _, stats = mask_data(images, masks)
    assert (stats["computed"], stats["reused"]) == (0, 3)
    os.utime(masks / "c.png", ns=(1, 1))  # touched, same content: still the same mask
    _, _, stats = mask_data(images, masks)
    assert (stats["computed"], stats["reused"]) == (0, 3)
    mask_png(masks / "10_cat" / "a.webp", 0)  # the user repaints a mask all black
    _, steps, stats = mask_data(images, masks)
    assert (stats["computed"], stats["reused"]) == (1, 2)
    assert masks_by_name(steps)["a.png"].max() < 0.01  # (lossy WebP: black to within 1/255)
    _, _, stats = mask_data(images, masks, conditioning_data_dir="", masked_loss=False)
    assert stats["computed"] == 3  # the plain entries are apart from the masked ones


# --- refusals ---------------------------------------------------------------------------------------

def test_an_image_without_a_mask_is_refused_by_name(masked_concepts):
    images, masks = masked_concepts
    make_image(images / "10_cat" / "d.png", seed=4)
    report = preflight(make_cfg(train_data_dir=str(images), conditioning_data_dir=str(masks), masked_loss=True,
                                resolution="64"))
    assert not report.ok
    error = next(e for e in report.errors if "d.png" in e["message"])
    assert error["message"] == f"no mask image for d.png in {masks / '10_cat'}"
    assert error["field"] == "conditioning_data_dir" and "add d.png" in error["hint"]


def test_a_mask_of_another_shape_is_refused(masked_concepts):
    images, masks = masked_concepts
    mask_png(masks / "10_cat" / "a.webp", 255, size=(64, 32))
    report = preflight(make_cfg(train_data_dir=str(images), conditioning_data_dir=str(masks), resolution="64"))
    assert any("a.webp is 64x32 but a.png is 64x64" in e["message"] for e in report.errors)


def test_config_rules_name_both_mask_sources(tmp_path):
    from trainer.config import validate_values

    _, problems = validate_values("lora", {"masked_loss": True})
    assert "tick alpha_mask" in problems[0].message and "set conditioning_data_dir" in problems[0].message
    assert not validate_values("lora", {"masked_loss": True, "conditioning_data_dir": str(tmp_path)})[1]
    _, problems = validate_values("finetune", {"masked_loss": True})
    assert "conditioning_data_dir" not in problems[0].message  # fine-tuning has no mask folders
    _, problems = validate_values("lora", {"alpha_mask": True, "conditioning_data_dir": str(tmp_path)})
    assert [(p.field, p.level) for p in problems] == [("conditioning_data_dir", "error")]
    _, problems = validate_values("lora", {"dataset_config": "d.toml", "conditioning_data_dir": str(tmp_path)})
    assert [(p.field, p.level) for p in problems] == [("conditioning_data_dir", "warning")]


def test_a_dataset_toml_subset_names_its_mask_folder_relative_to_the_toml(tmp_path, masked_concepts):
    images, masks = masked_concepts
    toml = tmp_path / "dataset.toml"
    toml.write_text('[general]\nconditioning_data_dir = "masks"\n[[datasets]]\nbatch_size = 2\n'
                    '[[datasets.subsets]]\nimage_dir = "images/10_cat"\nconditioning_data_dir = "masks/10_cat"\n'
                    '[[datasets.subsets]]\nimage_dir = "images/2_dog"\n', encoding="utf-8")
    dataset, steps, _ = mask_data(images, masks, dataset_config=str(toml), conditioning_data_dir="",
                                  cache_latents=False, cache_latents_to_disk=False)
    subsets = [s.spec for s in dataset.scan.datasets[0].subsets]
    assert [s.conditioning_data_dir for s in subsets] == [tmp_path / "masks" / "10_cat", None]
    assert any("[general]: conditioning_data_dir is read per subset" in p.message for p in dataset.scan.problems)
    by_name = masks_by_name(steps)
    assert not by_name["a.png"].eq(1).all() and by_name["c.png"].eq(1).all()
    toml.write_text(toml.read_text().replace('image_dir = "images/10_cat"', 'image_dir = "images/10_cat"\n'
                                             'alpha_mask = true'), encoding="utf-8")
    report = preflight(make_cfg(dataset_config=str(toml), masked_loss=True, resolution="64"))
    assert any("has both alpha_mask and conditioning_data_dir" in e["message"] for e in report.errors)
    toml.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "images/2_dog"\n', encoding="utf-8")
    report = preflight(make_cfg(dataset_config=str(toml), masked_loss=True, resolution="64"))
    error = next(e for e in report.errors if e["field"] == "masked_loss")
    assert "alpha_mask = true" in error["hint"] and "conditioning_data_dir = " in error["hint"]


# --- Kohya_ss import, sd-scripts export -------------------------------------------------------------

def test_a_kohya_json_with_a_mask_folder_imports_and_sd_scripts_gets_it_back(tmp_path):
    import trainer.config as tc
    from test_config_kohya_import import KOHYA_JSON

    from trainer.config.sd_scripts_export import sd_scripts_export

    (tmp_path / "masks").mkdir()
    data = json.load(open(KOHYA_JSON))
    data.update({"masked_loss": True, "conditioning_data_dir": str(tmp_path / "masks")})
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert loaded.config.conditioning_data_dir == str(tmp_path / "masks") and not loaded.config.alpha_mask
    assert not any("conditioning" in k for k in loaded.ignored_keys)
    export = sd_scripts_export(loaded.config)
    assert export.toml_data["conditioning_data_dir"] == str(tmp_path / "masks")
    assert export.toml_data["masked_loss"] is True
    assert any("dataset config's [[datasets.subsets]]" in n for n in export.notes)


# --- training ---------------------------------------------------------------------------------------

def two_image_dataset(root, hidden_seed: int):
    """An image the mask keeps (the same in every dataset) and one whose mask is black and whose pixels differ by
    `hidden_seed`: the model is given those pixels but must learn nothing from them."""
    concept = root / "images" / "1_toy"
    concept.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (220, 60, 20)).save(concept / "a_kept.png")
    (concept / "a_kept.txt").write_text("toy, orange\n", encoding="utf-8")
    make_image(concept / "b_hidden.png", seed=hidden_seed)
    (concept / "b_hidden.txt").write_text("toy, hidden\n", encoding="utf-8")
    mask_png(root / "masks" / "1_toy" / "a_kept.png", 255)
    mask_png(root / "masks" / "1_toy" / "b_hidden.png", 0)
    return root / "images", root / "masks"


def test_a_lora_trained_with_a_mask_folder_learns_nothing_where_the_mask_is_black(tmp_path, tiny_model_dir):
    from test_train_support import lora_config, lora_tensors, run_trainer, write_config

    def train(name, seed, masked=True, **options):
        images, masks = two_image_dataset(tmp_path / f"data_{name}", seed)
        if masked:
            options.update(masked_loss=True, conditioning_data_dir=str(masks))
        config = lora_config(tiny_model_dir("sd1"), images, tmp_path / name, epoch=2, save_every_n_epochs=0,
                             **options)
        rc, _, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
        assert rc == 0, err[-3000:]
        return tmp_path / name / "toy.safetensors"

    a = train("masked_a", 1)
    b = train("masked_b", 2)
    plain = train("plain_b", 2, masked=False, cache_latents=False)
    wa, wb, wp = lora_tensors(a), lora_tensors(b), lora_tensors(plain)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-exact on CPU
    assert any(not torch.equal(wb[k], wp[k]) for k in wb)  # unmasked, the hidden image is learned
    with safe_open(str(a), "pt") as fh:
        assert fh.metadata()["ss_masked_loss"] == "True"
