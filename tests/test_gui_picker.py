"""The in-page file browser only shows folders under the allowed roots; traversal is refused."""
from __future__ import annotations

import os

import pytest

from kohya_gui.picker import PathRefused, confine, list_folder, normalize_roots, parent_within
from kohya_gui.tabs.picker_panel import PickerPanel


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    (root / "images" / "10_mychar").mkdir(parents=True)
    (root / "images" / "10_mychar" / "a.png").write_bytes(b"png")
    (root / "images" / "notes.txt").write_text("x")
    (root / "images" / ".hidden").mkdir()
    (root / "config.json").write_text("{}")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "id_rsa").write_text("key")
    return root, outside, normalize_roots([root])


def test_paths_inside_the_roots_are_accepted(tree):
    root, _, roots = tree
    assert confine(str(root / "images"), roots) == (root / "images").resolve()
    assert confine("images/10_mychar", roots) == (root / "images" / "10_mychar").resolve()
    assert confine("", roots) == roots[0]


@pytest.mark.parametrize("attempt", ["../secret", "images/../../secret", "/etc", "~/"])
def test_traversal_outside_the_roots_is_refused(tree, attempt):
    _, _, roots = tree
    with pytest.raises(PathRefused, match="outside the folders this GUI may browse"):
        confine(attempt, roots)


def test_a_symlink_pointing_outside_is_refused(tree):
    root, outside, roots = tree
    os.symlink(outside, root / "escape")
    with pytest.raises(PathRefused):
        list_folder(str(root / "escape"), roots)


def test_listing_shows_folders_first_and_hides_dotfiles(tree):
    root, _, roots = tree
    real, entries = list_folder(str(root / "images"), roots)
    assert real == (root / "images").resolve()
    assert [e.label for e in entries] == ["📁 10_mychar/", "📄 notes.txt (1 B)"]
    _, only_dirs = list_folder(str(root / "images"), roots, want="dir")
    assert [e.name for e in only_dirs] == ["10_mychar"]
    _, jsons = list_folder(str(root), roots, suffixes=(".json",))
    assert [e.name for e in jsons] == ["images", "config.json"]


def test_up_stops_at_the_root(tree):
    root, _, roots = tree
    assert parent_within(roots[0], roots) == roots[0]
    assert parent_within((root / "images").resolve(), roots) == roots[0]


def test_panel_listing_reports_refusals_in_the_page(tree):
    _, outside, roots = tree
    panel = PickerPanel.__new__(PickerPanel)       # the pure parts, without building widgets
    panel.roots, panel.targets = roots, {}
    folder, choices, message = panel.listing(str(outside), "train_data_dir")
    assert folder == "" and choices == [] and message.startswith("⛔")
    folder, choices, message = panel.listing(str(roots[0]), "train_data_dir")
    assert folder == str(roots[0]) and choices
    assert panel.start_folder(str(outside / "id_rsa")) == roots[0], "never opens outside the roots"
