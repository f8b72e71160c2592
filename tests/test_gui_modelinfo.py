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


def test_a_hub_id_downloaded_before_is_read_from_the_hub_cache(tmp_path, tiny_model_dir, monkeypatch):
    """A fine-tune whose name says nothing: its family comes from the copy an earlier run downloaded."""
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--my-finetune" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir("sdxl", "diffusers"), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found, text = detect_family("someone/my-finetune")
    assert found == "sdxl" and "hub cache" in text


def test_a_hub_name_that_does_not_tell_the_family_leaves_it_unknown(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    assert detect_family("lodestones/Chroma1-HD")[0] == "chroma"  # not FLUX.1, though Chroma is FLUX-based
    assert detect_family("stable-diffusion-v1-5/stable-diffusion-v1-5")[0] == "sd1"
    assert detect_family("stabilityai/stable-diffusion-2-1-base")[0] == "sd2"
    found, text = detect_family("Lykon/dreamshaper-8")
    assert found is None and "detects it from the download at start" in text  # not a silent SD1.x guess
