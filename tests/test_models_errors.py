"""Bad base-model input gets a clear message that names the file and the fix."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.models import CheckpointError, load_base_model
from trainer.models.tokenizers import TokenizerUnavailableError, find_open_clip_bpe, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_truncated_safetensors_says_the_file_is_corrupt(tmp_path, tiny_model_dir):
    bad = tmp_path / "half-downloaded.safetensors"
    data = tiny_model_dir("sd1").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half-downloaded.safetensors") as err:
        load_base_model(bad)
    assert "truncated or corrupt" in str(err.value) and "download" in str(err.value)


def test_garbage_file_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        load_base_model(bad)


def test_truncated_ckpt_says_the_file_is_corrupt(tmp_path, tiny_model_dir):
    bad = tmp_path / "cut.ckpt"
    data = tiny_model_dir("sd1", suffix=".ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.ckpt.*truncated or corrupt"):
        load_base_model(bad)


class _RunsACommand:
    """Unpickling this would call os.system — the classic malicious-checkpoint trick."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo executed > {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as fh:  # a legacy-format pickle, as old .ckpt files are
        pickle.dump({"state_dict": {"w": _RunsACommand(marker)}}, fh)
    torch.save({"state_dict": {"x": torch.zeros(1), "hook": _RunsACommand(marker)}}, tmp_path / "evil2.ckpt")
    for path in (evil, tmp_path / "evil2.ckpt"):
        with pytest.raises(CheckpointError) as err:
            load_base_model(path)
        msg = str(err.value)
        assert path.name in msg and "run Python code" in msg and ".safetensors" in msg
    assert not marker.exists()


def test_unknown_architecture_names_the_file_and_what_is_supported(tmp_path):
    other = tmp_path / "some-llm.safetensors"
    save_file({"transformer.h.0.attn.weight": torch.zeros(4, 4)}, other)
    with pytest.raises(CheckpointError, match="some-llm.safetensors") as err:
        load_base_model(other)
    assert "SD1.x/SD2.x/SDXL" in str(err.value)


def test_a_lora_given_as_base_model_is_recognised(tmp_path):
    lora = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32, 1, 1)}, lora)
    with pytest.raises(CheckpointError, match="my_lora.safetensors is a LoRA, not a base model"):
        load_base_model(lora)


def test_sd_checkpoint_with_unknown_layer_sizes_asks_for_a_config_folder(tmp_path, tiny_model_dir):
    with safe_open(tiny_model_dir("sd1"), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if ".input_blocks.11." not in k}
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, odd)
    with pytest.raises(CheckpointError, match="odd.safetensors looks like SD1.x") as err:
        load_base_model(odd)
    assert "config_dir" in str(err.value)


def test_weights_that_do_not_fit_the_given_config_are_reported(tiny_model_dir):
    from trainer.models.tiny import tiny_config_dir

    with pytest.raises(CheckpointError, match="do not fit"):
        load_base_model(tiny_model_dir("sd1"), config_dir=tiny_config_dir("sd2"))


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_base_model(tmp_path / "nope.safetensors")


def test_inpainting_checkpoint_is_refused(tmp_path):
    path = tmp_path / "inpaint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="inpainting"):
        load_base_model(path)


def test_hub_id_offline_says_what_to_download_and_where(tmp_path):
    """A real subprocess with HF_HUB_OFFLINE=1 and an empty cache, as a user without network sees it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = "from trainer.models import load_base_model; load_base_model('nonexistent-org/no-such-model')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "'nonexistent-org/no-such-model' is not in the Hugging Face cache" in proc.stderr
    assert "huggingface-cli download nonexistent-org/no-such-model" in proc.stderr
    assert str(tmp_path / "hf") in proc.stderr  # where the files must go


def test_published_tokenizer_without_any_offline_source_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.models.tokenizers.find_open_clip_bpe", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerUnavailableError) as err:
        load_tokenizer(tmp_path / "tokenizer", {"source": "openai/clip-vit-large-patch14"},
                       tokenizer_cache_dir=tmp_path / "tok-cache")
    msg = str(err.value)
    assert "open-clip-torch" in msg and "huggingface-cli download openai/clip-vit-large-patch14" in msg
    assert str(tmp_path / "tok-cache" / "openai_clip-vit-large-patch14") in msg


@pytest.mark.skipif(find_open_clip_bpe() is None, reason="open-clip-torch is not installed")
def test_sd_tokenizers_are_built_offline_from_open_clips_vocabulary(tmp_path, monkeypatch):
    """CLIP-L token ids of a known prompt; OpenCLIP (SD2/SDXL TE2) pads with '!' (id 0)."""
    monkeypatch.setenv("KOHYA_STUDIO_CACHE", str(tmp_path))
    clip_l = load_tokenizer(tmp_path / "none", {"source": "openai/clip-vit-large-patch14", "pad_token": "<|endoftext|>"})
    assert len(clip_l) == 49408
    assert clip_l("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    open_clip = load_tokenizer(tmp_path / "none", {"source": "stabilityai/stable-diffusion-2", "pad_token": "!"},
                               tokenizer_cache_dir=tmp_path / "cache")
    ids = open_clip("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[4] == 0
    assert (tmp_path / "cache" / "stabilityai_stable-diffusion-2" / "tokenizer_config.json").is_file()
    shutil.rmtree(tmp_path / "cache")


def test_diffusers_folder_without_tokenizer_files_is_reported(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("sd1", layout="diffusers"), folder)
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    with pytest.raises(CheckpointError, match=r"model/tokenizer: tokenizer files .* missing"):
        load_base_model(folder)
