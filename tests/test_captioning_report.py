"""Captioning says what it did: a run that wrote nothing is not a success, and without a network the
hub is not asked for half a minute."""
from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from kohya_gui.tabs.utilities import end_line


def _folder(tmp_path, captioned: bool):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 90, 120)).save(folder / f"{i}.png")
        if captioned:
            (folder / f"{i}.txt").write_text("a caption")
    return folder


def _run(*args, env_offline=True):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1") if env_offline else None
    return subprocess.run([sys.executable, "-m", "captioning", *args], capture_output=True, text=True, env=env)


def test_all_images_already_captioned_is_reported_as_nothing_written(tmp_path):
    folder = _folder(tmp_path, captioned=True)
    proc = _run("wd14", str(folder), "--model_dir", str(tmp_path / "taggers"))
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == ("result: 0 captions written: all 4 images already have one — choose Overwrite or "
                         "Append to replace or extend them")
    assert end_line(0, lines).startswith("⚠ 0 captions written")


def test_an_empty_folder_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run("wd14", str(tmp_path / "empty"), "--model_dir", str(tmp_path / "taggers"))
    assert "0 captions written: no image files in" in proc.stdout


def test_offline_without_a_tagger_fails_with_the_files_to_get(tmp_path):
    folder = _folder(tmp_path, captioned=False)
    proc = _run("wd14", str(folder), "--model_dir", str(tmp_path / "taggers"))
    assert proc.returncode == 1 and "offline" in proc.stderr and "model.onnx" in proc.stderr
    verdict = end_line(1, (proc.stdout + proc.stderr).splitlines())
    assert verdict.startswith("❌ failed (exit code 1): Tagger") and "offline" in verdict


def test_no_network_answer_means_offline_without_asking_the_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset, but the hub's address does not answer: no download is tried (huggingface_hub
    would retry for about half a minute)."""
    import socket

    import huggingface_hub

    from captioning import hub
    from captioning.wd14 import TaggerNotFoundError, resolve_tagger

    with socket.socket() as s:                  # a port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    hub._reachable.cache_clear()

    def no_download(*_a, **_k):
        raise AssertionError("the hub was asked although it cannot be reached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    try:
        assert hub.hub_offline() is True
        with pytest.raises(TaggerNotFoundError, match="offline"):
            resolve_tagger(tmp_path / "taggers", "vit-v3")
    finally:
        hub._reachable.cache_clear()
