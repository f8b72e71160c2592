"""The Model section names the family of the chosen checkpoint before training, without torch."""
import pytest

from kohya_gui.modelinfo import detect_family


@pytest.mark.parametrize("family,layout", [("sd1", "single_file"), ("sd2", "single_file"),
                                           ("sdxl", "single_file"), ("sdxl", "diffusers")])
def test_the_family_is_read_from_the_file_header_or_folder(tiny_model_dir, family, layout):
    found, text = detect_family(str(tiny_model_dir(family, layout)))
    assert found == family and text.startswith("Detected:")


def test_hub_ids_are_guessed_and_missing_paths_named():
    assert detect_family("stabilityai/stable-diffusion-xl-base-1.0")[0] == "sdxl"
    found, text = detect_family("models/checkpoints/missing.safetensors")
    assert found is None and "does not exist" in text
