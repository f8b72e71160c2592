"""Writes never leave half a file or folder behind, and a failed write keeps the previous version."""
import pytest

from trainer.atomic import atomic_folder, atomic_path, atomic_write_text


def test_a_failed_file_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "settings.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "mychar-000004-state"
    with atomic_folder(folder) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("interrupted")
    assert (folder / "a.txt").read_text() == "first"
    with atomic_folder(folder) as tmp:
        (tmp / "b.txt").write_text("third")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_files_and_folders_get_the_users_umask_not_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "lora.safetensors", "x")
        with atomic_folder(tmp_path / "lora-state") as tmp:
            (tmp / "a.txt").write_text("y")
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.json", "z")
    finally:
        os.umask(old)
    # a WebUI running as another user must be able to read the LoRA (mkstemp alone gives 0600)
    assert (tmp_path / "lora.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "lora-state").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
