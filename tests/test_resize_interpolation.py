"""A user sets sd-scripts' resize_interpolation (option or dataset-TOML subset key): the images the model sees are
resized with that filter, a latent cache made with another filter is not reused, and the export/metadata say it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_data_helpers import batches, make_cfg, tiny_vae, trainer_data
from trainer.config import config_for
from trainer.config.kohya_import import import_kohya_json
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.data.errors import DatasetError


def _checkerboard(folder: Path) -> Path:
    folder.mkdir(parents=True)
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[::2, ::2] = 255  # a one-pixel pattern: averaging greys it, nearest keeps 0 and 255
    pixels[1::2, 1::2] = 255
    Image.fromarray(pixels).save(folder / "board.png")
    return folder


def test_nearest_keeps_the_pixels_where_the_default_area_filter_averages_them(tmp_path):
    _checkerboard(tmp_path / "img" / "1_board")
    images = {}
    for name in ("", "nearest"):
        cfg = make_cfg(train_data_dir=str(tmp_path / "img"), resolution="64", cache_latents=False,
                       resize_interpolation=name)
        _, steps = trainer_data(cfg)
        images[name] = batches(steps, 1)[0]["images"][0]
    assert set(images["nearest"].unique().tolist()) <= {-1.0, 1.0}           # 0 or 255, nothing between
    assert images[""].abs().max() < 0.01                                       # 2×2 area averages: mid grey


def test_a_latent_cache_made_with_another_filter_is_encoded_again(tmp_path):
    _checkerboard(tmp_path / "img" / "1_board")
    cfg = make_cfg(train_data_dir=str(tmp_path / "img"), resolution="64", cache_latents=True,
                   cache_latents_to_disk=True)
    vae = tiny_vae()
    trainer_data(cfg, vae)
    cache = next((tmp_path / "img" / "1_board").glob("*.latents.safetensors"))
    first = cache.read_bytes()
    trainer_data(cfg.model_copy(update={"resize_interpolation": "nearest"}), vae)
    assert cache.read_bytes() != first  # re-encoded from the nearest-resized pixels
    again = cache.read_bytes()
    trainer_data(cfg.model_copy(update={"resize_interpolation": "nearest"}), vae)
    assert cache.read_bytes() == again  # and then reused


def test_the_dataset_toml_key_the_export_and_the_kohya_import_carry_it(tmp_path):
    from trainer.data.dataset_toml import load_dataset_config

    _checkerboard(tmp_path / "img")
    toml = tmp_path / "d.toml"
    toml.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n'
                    'resize_interpolation = "bicubic"\n', encoding="utf-8")
    [spec], problems = load_dataset_config(toml, make_cfg())
    assert spec.subsets[0].resize_interpolation == "bicubic" and not problems
    toml.write_text(toml.read_text().replace("bicubic", "sinc"), encoding="utf-8")
    with pytest.raises(DatasetError, match="resize_interpolation 'sinc' is not one of"):
        load_dataset_config(toml, make_cfg())
    assert sd_scripts_export(config_for("lora", resize_interpolation="lanczos")).toml_data[
        "resize_interpolation"] == "lanczos"
    assert "resize_interpolation" not in sd_scripts_export(config_for("lora")).toml_data
    values, ignored, _ = import_kohya_json({"LoRA_type": "Standard", "resize_interpolation": "area"}, "lora")
    assert values["resize_interpolation"] == "area" and not ignored
