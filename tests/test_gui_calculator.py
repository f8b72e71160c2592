"""The calculator's "use my image folder" counts exactly what the trainer's scan will train on."""
from PIL import Image

from kohya_gui.tabs.calculator import calculate, count_concepts


def test_the_calculator_counts_the_concepts_the_trainer_would_train(tmp_path):
    for folder, names in {"10_mychar": ["a.png", "b.JPG", ".hidden.png", "notes.txt"],
                          "0_unused": ["c.png"], "misc": ["d.png"]}.items():
        (tmp_path / folder).mkdir()
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / folder / name, format="PNG") if name[-3:].lower() in (
                "png", "jpg") else (tmp_path / folder / name).write_text("x")
    (tmp_path / "10_mychar" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "10_mychar" / "more" / "e.png")
    assert count_concepts(str(tmp_path)) == [("10_mychar", 2, 10)]
    assert count_concepts(str(tmp_path), recursive=True) == [("10_mychar", 3, 10)]
    assert calculate(25, 1, 20, 1, 1, False, 0).startswith("**500 steps**")
