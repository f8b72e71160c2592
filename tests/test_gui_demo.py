"""Every training tab has its Demo: the LoRA demo's tiny model and images, with each tab's own settings,
written as a config the user can open — and it trains on a CPU."""
from __future__ import annotations

import json

import pytest

from kohya_gui import demo
from test_train_support import trainer_cli
from trainer.config import load_config_file


@pytest.fixture(scope="module")
def lora_demo(tmp_path_factory):
    from trainer.train.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo") / "demo")


@pytest.mark.parametrize("training_type", ["dreambooth", "textual_inversion", "finetune"])
def test_each_tab_gets_a_valid_demo_config_beside_the_lora_one(lora_demo, training_type):
    path = demo.write_type_demo(lora_demo, training_type)
    assert path == lora_demo.with_name(f"demo_{training_type}.json")
    config = load_config_file(path).config
    lora = json.loads(lora_demo.read_text())
    assert config.training_type == training_type
    assert config.pretrained_model_name_or_path == lora["pretrained_model_name_or_path"]
    assert config.output_name != lora["output_name"], "each tab writes its own result"
    if training_type == "finetune":
        assert config.train_data_dir.endswith("10_toy"), "fine-tuning reads the images themselves"
    before = path.read_text()
    assert demo.write_type_demo(lora_demo, training_type) == path and path.read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("training_type", ["textual_inversion", "finetune"])
def test_the_demo_trains_on_a_cpu(lora_demo, training_type):
    path = demo.write_type_demo(lora_demo, training_type)
    proc = trainer_cli("run", str(path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["type"] == "done" and done["outputs"]
