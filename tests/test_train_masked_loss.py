"""Masked loss as sd-scripts' --alpha_mask / Kohya_ss's "Masked loss": each image's transparency says where the
model learns. The mask follows the image through resize, crop and flip, is cached beside the latents (and a cache
made without masks never stands in for one), weighs each latent pixel's loss, and a LoRA trained with it learns
nothing from what is transparent — for SD and FLUX.1 alike. Kohya_ss JSONs import it, sd-scripts exports it, and a
masked_loss with no mask to use is refused with the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from test_data_helpers import batches, make_cfg, tiny_vae, trainer_data
from trainer.data.augment import render_masked
from trainer.data.buckets import Placement
from trainer.data.images import load_rgb, load_rgb_and_alpha
from trainer.train.diffusion import mask_at, per_sample_loss
from trainer.train.flow_matching import FlowMatchingObjective


def rgba(path, colour, alpha, size=64):
    """An RGBA PNG: `colour` (RGB triple or an [H, W, 3] array) under the alpha `alpha` (0..255 or [H, W])."""
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[..., :3] = colour
    pixels[..., 3] = alpha
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def left_half(size=64):
    alpha = np.zeros((size, size), np.uint8)
    alpha[:, : size // 2] = 255
    return alpha


# --- the loss -------------------------------------------------------------------------------------

def test_the_loss_of_a_pixel_is_weighted_by_the_mask_shrunk_to_the_latent_grid():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 64, 64)
    mask[:, :, :32] = 1.0  # the left half of each image counts
    mask[1, :4, 32:40] = 0.5  # a half-transparent strip covers half of one latent pixel's 8×8 area
    weights = mask_at(mask, (8, 8))
    assert weights.shape == (2, 1, 8, 8) and weights[1, 0, 0, 4] == 0.25 and weights[0, 0, 0, 0] == 1.0
    want = (((pred - target) ** 2) * weights).mean(dim=(1, 2, 3))  # sd-scripts: mask, then mean over all pixels
    assert torch.allclose(per_sample_loss(pred, target, "l2", mask=mask), want)
    # what the mask hides does not count: a prediction wrong only there has the same loss
    hidden = pred.clone()
    hidden[0, :, :, 4:] += 5.0
    assert torch.equal(per_sample_loss(hidden, target, "l2", mask=mask)[0], per_sample_loss(pred, target, "l2",
                                                                                            mask=mask)[0])
    assert not torch.equal(per_sample_loss(hidden, target)[0], per_sample_loss(pred, target)[0])
    assert torch.allclose(per_sample_loss(pred, target, "l2", mask=torch.ones(2, 64, 64)),
                          per_sample_loss(pred, target, "l2"))


@pytest.mark.parametrize("loss_type", ["l2", "l1", "huber"])
def test_flow_matching_masks_the_unpacked_latents_the_same_way(loss_type):
    torch.manual_seed(1)
    latents, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    pred = noise - latents + 0.1 * torch.randn(2, 16, 8, 8)
    t = torch.tensor([300.0, 700.0])
    mask = torch.zeros(2, 64, 64)
    mask[:, 32:] = 1.0  # the lower half
    obj = FlowMatchingObjective(loss_type=loss_type)
    off = pred.clone()
    off[:, :, :4] += 3.0  # wrong only in the masked-out upper half
    assert torch.equal(obj.loss(off, latents, noise, t, mask=mask), obj.loss(pred, latents, noise, t, mask=mask))
    assert not torch.equal(obj.loss(off, latents, noise, t), obj.loss(pred, latents, noise, t))


# --- images and the data path ---------------------------------------------------------------------

def test_the_alpha_channel_becomes_a_mask_that_follows_resize_crop_and_flip(tmp_path):
    path = rgba(tmp_path / "cut.png", (10, 200, 30), left_half(128), size=128)
    image, alpha = load_rgb_and_alpha(path)
    assert np.asarray(image)[0, -1].tolist() == [10, 200, 30]  # colour under the transparency as stored
    assert np.asarray(load_rgb(path))[0, -1].tolist() == [255, 255, 255]  # (without masks: put on white)
    placement = Placement(bucket=(48, 64), resized=(64, 64), crop_ltrb=(8, 0, 56, 64), ar_error=0.0)
    _, crop, mask = render_masked(image, alpha, placement)
    assert mask.shape == (64, 48) and crop == (8, 0, 56, 64)
    assert mask[:, :24].eq(1).all() and mask[:, 24:].eq(0).all()  # resized 128→64, cropped 8 px off the left
    _, crop, flipped = render_masked(image, alpha, placement, flip=True)
    assert torch.equal(flipped, torch.flip(mask, dims=[1])) and crop == (8, 0, 56, 64)
    Image.new("RGB", (128, 128), (1, 2, 3)).save(tmp_path / "opaque.png")
    image, alpha = load_rgb_and_alpha(tmp_path / "opaque.png")
    assert alpha is None and render_masked(image, alpha, placement)[2].eq(1).all()  # no alpha: counts everywhere


@pytest.fixture
def cut_outs(tmp_path):
    """A concept folder of a half-transparent cut-out and an opaque JPEG-like RGB image."""
    folder = tmp_path / "images" / "2_cat"
    rgba(folder / "a_cut.png", (200, 40, 40), left_half())
    Image.new("RGB", (64, 64), (40, 40, 200)).save(folder / "b_plain.png")
    return folder


def masked_data(tmp_path, **kw):
    opts = dict(train_data_dir=str(tmp_path / "images"), resolution="64", cache_latents=True,
                cache_latents_to_disk=True, train_batch_size=2)
    opts.update(kw)
    dataset, steps = trainer_data(make_cfg(**opts), tiny_vae(0))
    return dataset, steps, dataset.latents.stats if dataset.latents else None


def test_masks_are_cached_beside_the_latents_reused_and_a_plain_cache_never_stands_in(tmp_path, cut_outs):
    _, _, stats = masked_data(tmp_path)
    assert stats["computed"] == 2 and (cut_outs / "a_cut.png.64x64.latents.safetensors").is_file()
    dataset, steps, stats = masked_data(tmp_path, alpha_mask=True)
    assert (stats["computed"], stats["reused"]) == (2, 0)  # written without masks: encoded again
    masked_file = cut_outs / "a_cut.png.64x64.alpha.latents.safetensors"
    with safe_open(str(masked_file), "pt") as fh:
        assert json.loads(fh.metadata()["kohya_studio_latent_cache"])["alpha_mask"] is True
    assert load_file(str(masked_file))["mask"].shape == (32, 32)  # the tiny VAE halves each side
    by_name = {p.split("/")[-1]: m for b in batches(steps, 1) for p, m in zip(b["paths"], b["alpha_masks"])}
    assert by_name["a_cut.png"][:, :16].eq(1).all() and by_name["a_cut.png"][:, 16:].eq(0).all()
    assert by_name["b_plain.png"].eq(1).all()
    _, _, stats = masked_data(tmp_path, alpha_mask=True)
    assert (stats["computed"], stats["reused"]) == (0, 2)
    _, _, stats = masked_data(tmp_path, alpha_mask=False)
    assert (stats["computed"], stats["reused"]) == (0, 2)  # the plain entries are still there


def test_cached_and_uncached_batches_weigh_the_latent_pixels_alike(tmp_path, cut_outs):
    _, steps, _ = masked_data(tmp_path, alpha_mask=True, flip_aug=True, cache_latents=False,
                              cache_latents_to_disk=False)
    raw = batches(steps, 1)[0]
    _, steps, _ = masked_data(tmp_path, alpha_mask=True, flip_aug=True)
    cached = batches(steps, 1)[0]
    assert raw["paths"] == cached["paths"] and raw["alpha_masks"].shape == (2, 64, 64)
    assert torch.allclose(mask_at(raw["alpha_masks"], (32, 32)), mask_at(cached["alpha_masks"], (32, 32)))


def test_a_dataset_toml_subset_with_alpha_mask_is_masked_and_the_others_count_everywhere(tmp_path, cut_outs):
    other = tmp_path / "more"
    rgba(other / "c_cut.png", (0, 0, 0), left_half())
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = "{cut_outs}"\n'
                    f'alpha_mask = true\n[[datasets.subsets]]\nimage_dir = "{other}"\n', encoding="utf-8")
    dataset, steps, _ = masked_data(tmp_path, dataset_config=str(toml), masked_loss=True)
    subsets = [s.spec for s in dataset.scan.datasets[0].subsets]
    assert [s.alpha_mask for s in subsets] == [True, False]
    assert not any("alpha_mask" in p.message for p in dataset.scan.problems)
    masks = {p.split("/")[-1]: m for b in batches(steps, 1) for p, m in zip(b["paths"], b["alpha_masks"])}
    assert masks["c_cut.png"].eq(1).all() and not masks["a_cut.png"].eq(1).all()


# --- config: errors, import, export ----------------------------------------------------------------

def test_masked_loss_without_any_mask_is_refused_with_the_fix(tmp_path, cut_outs):
    from trainer.config import validate_values
    from trainer.data import preflight

    _, problems = validate_values("lora", {"masked_loss": True})
    assert [p.field for p in problems if p.level == "error"] == ["masked_loss"]
    assert "tick alpha_mask (use each image's transparency as the mask)" in problems[0].message
    assert not validate_values("lora", {"masked_loss": True, "alpha_mask": True})[1]
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{cut_outs}"\n', encoding="utf-8")
    report = preflight(make_cfg(dataset_config=str(toml), masked_loss=True, resolution="64"))
    assert not report.ok
    error = next(e for e in report.errors if e["field"] == "masked_loss")
    assert "alpha_mask = true" in error["hint"]
    toml.write_text(toml.read_text() + "alpha_mask = true\n", encoding="utf-8")
    assert preflight(make_cfg(dataset_config=str(toml), masked_loss=True, resolution="64")).ok


def test_a_kohya_json_with_masked_loss_imports_and_sd_scripts_gets_it_back(tmp_path):
    import trainer.config as tc
    from test_config_kohya_import import KOHYA_JSON

    from trainer.config.sd_scripts_export import sd_scripts_export

    data = json.load(open(KOHYA_JSON))
    data.update({"masked_loss": True, "additional_parameters": "--alpha_mask"})
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert loaded.config.masked_loss and loaded.config.alpha_mask
    assert not any("mask" in k for k in loaded.ignored_keys)
    exported = sd_scripts_export(loaded.config).toml_data
    assert exported["masked_loss"] is True and exported["alpha_mask"] is True
    data["additional_parameters"] = ""
    path.write_text(json.dumps(data))
    with pytest.raises(tc.ConfigError, match="tick alpha_mask"):
        tc.load_config_file(path)


# --- training ---------------------------------------------------------------------------------------

def two_image_dataset(root, hidden_seed: int):
    """One opaque image (the same in every dataset) and one fully transparent image whose colours differ by
    `hidden_seed`: with alpha masks the model is given those colours but must learn nothing from them."""
    concept = root / "1_toy"
    rgba(concept / "a_opaque.png", (220, 60, 20), 255)
    (concept / "a_opaque.txt").write_text("toy, orange\n", encoding="utf-8")
    noise = np.random.default_rng(hidden_seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgba(concept / "b_hidden.png", noise, 0)
    (concept / "b_hidden.txt").write_text("toy, hidden\n", encoding="utf-8")
    return root


def test_a_lora_trained_with_alpha_masks_learns_nothing_from_what_is_transparent(tmp_path, tiny_model_dir):
    from test_train_support import lora_config, lora_tensors, run_trainer, write_config

    def train(name, seed, **options):
        data = two_image_dataset(tmp_path / f"data_{name}", seed)
        config = lora_config(tiny_model_dir("sd1"), data, tmp_path / name, epoch=2, save_every_n_epochs=0, **options)
        rc, _, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
        assert rc == 0, err[-3000:]
        return tmp_path / name / "toy.safetensors"

    a = train("masked_a", 1, masked_loss=True, alpha_mask=True)
    b = train("masked_b", 2, masked_loss=True, alpha_mask=True)
    plain = train("plain_b", 2, cache_latents=False)
    wa, wb, wp = lora_tensors(a), lora_tensors(b), lora_tensors(plain)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-exact on CPU
    assert any(not torch.equal(wb[k], wp[k]) for k in wb)  # unmasked, the hidden image is learned
    with safe_open(str(a), "pt") as fh:
        assert fh.metadata()["ss_masked_loss"] == "True"
    with safe_open(str(plain), "pt") as fh:
        assert fh.metadata()["ss_masked_loss"] == "False"


def test_a_tiny_flux_lora_trains_with_alpha_masks(tmp_path):
    from test_flux_lora import flux_config
    from test_train_support import run_trainer, write_config

    from trainer.models.tiny_dit import write_tiny_flux

    files = write_tiny_flux(tmp_path / "flux", layout="kohya")
    data = two_image_dataset(tmp_path / "data", 3)
    rgba(data / "1_toy" / "c_half.png", (30, 160, 90), left_half())
    config = flux_config(files, data, tmp_path / "out", masked_loss=True, alpha_mask=True, cache_latents_to_disk=True)
    rc, events, err = run_trainer(write_config(config, tmp_path / "flux.json"))
    assert rc == 0, err[-3000:]
    assert (tmp_path / "out" / "toy.safetensors").is_file()
    assert (data / "1_toy" / "c_half.png.64x64.alpha.latents.safetensors").is_file()
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert losses and all(np.isfinite(v) for v in losses)


def test_captured_steps_mask_the_loss_as_normal_steps_do():
    """CUDA-graph steps take the mask as one more input (no GPU here: the Rerun backend replays by calling)."""
    from accelerate.state import AcceleratorState
    from test_train_step import batch, build

    from trainer.config import config_for
    from trainer.train.graphs import CapturedSteps, Rerun, make_step_fn
    from trainer.train.loop import train_step

    g = torch.Generator().manual_seed(3)
    plain = batch(torch.randn(2, 4, 8, 8, generator=g) * 4, ["toy, red", "toy, blue"])
    masked = dict(plain, alpha_masks=torch.zeros(2, 8, 8))
    masked["alpha_masks"][0, :, :4] = 1.0  # a quarter of the step's latent pixels count

    def losses(captured: bool, schedule):
        AcceleratorState._reset_state(True)
        ctx, _ = build(optimizer="AdamW", lr=1e-3)
        step = (make_step_fn(ctx, config_for("lora", cuda_graphs="on"), print, backend=Rerun()) if captured
                else (lambda m, s: train_step(ctx, m, s)))
        assert isinstance(step, CapturedSteps) == captured
        out = [float(step(m, i)) for i, m in enumerate(schedule)]
        assert not captured or (step.captures == 1 and step.off_reason is None)
        AcceleratorState._reset_state(True)
        return out

    eager = losses(False, [[masked]] * 4)
    assert losses(True, [[masked]] * 4) == pytest.approx(eager, rel=2e-3)  # steps 3-4 replay a captured graph
    unmasked = losses(False, [[plain]])
    assert eager[0] == pytest.approx(unmasked[0] / 4, rel=0.5)  # same weights, noise and timesteps at step 0
