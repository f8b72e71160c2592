"""LoRA ▸ LoRA tools in the page: the form becomes the same command a user would type, the tool
runs as a child process, its progress bar is read while it runs and its report is shown."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kohya_gui.tabs.lora_tools import progress_line, run_tool, tool_command, values_from_inputs
from trainer.tools.options import TOOLS, widgets

ROOT = Path(__file__).resolve().parents[1]


def raw_for(tool: str, **values) -> list:
    """Widget values in page order (empty where not given), as Gradio passes them."""
    return [values.get(w.name, w.default if w.default is not None else "") for w in widgets(TOOLS[tool].options)]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    import torch

    from trainer.models.tiny import build_tiny_components
    from trainer.networks import create_network

    c = build_tiny_components("sd1", seed=0)
    c["family"] = "sd1"
    net = create_network(c, network_dim=4, network_alpha=2)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("lora") / "mine.safetensors"
    net.save_weights(path, "float")
    return path


def test_the_form_becomes_kohyas_command_line(tmp_path):
    raw = raw_for("svd-merge", models=f"{tmp_path}/a.safetensors\n{tmp_path}/b.safetensors\n",
                  ratios="0.7, 0.3", new_rank=8, save_to=str(tmp_path / "out.safetensors"))
    values = values_from_inputs("svd-merge", raw, [tmp_path])
    argv = tool_command("py", "svd-merge", values)
    assert argv[:5] == ["py", "-m", "trainer", "lora", "svd-merge"] and argv[-1] == "--json"
    joined = " ".join(argv)
    assert f"--models {tmp_path}/a.safetensors {tmp_path}/b.safetensors" in joined
    assert "--ratios 0.7 0.3" in joined and "--new_rank 8" in joined and "--new_conv_rank" not in joined
    assert "--overwrite" not in joined


def test_a_missing_or_bad_field_is_named_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="Ratios"):
        values_from_inputs("merge", raw_for("merge", models=f"{tmp_path}/a.safetensors", ratios="half",
                                            save_to=str(tmp_path / "o.safetensors")), [tmp_path])
    (message,) = list(run_tool(sys.executable, "resize", raw_for("resize"), [tmp_path]))
    assert "Not started" in message and "LoRA file is required" in message
    (message,) = list(run_tool(sys.executable, "resize", raw_for("resize", model="/etc/passwd",
                                                                 save_to=str(tmp_path / "x.safetensors")),
                               [tmp_path]))
    assert "Not started" in message  # outside the browsable folders


def test_tqdm_progress_is_read_from_the_tools_stderr():
    tail = "resize:  10%|█         | 3/30 [00:00<00:01]\rresize:  45%|████▌     | 27/60 [00:01<00:01]"
    assert progress_line(tail) == "resize: 45% (27/60)"
    assert progress_line("WARNING something") == ""


def test_resize_runs_in_a_child_process_and_its_report_is_shown(lora, tmp_path):
    out = tmp_path / "small.safetensors"
    raw = raw_for("resize", model=str(lora), save_to=str(out), new_rank=2)
    messages = list(run_tool(sys.executable, "resize", raw, [lora.parent, tmp_path], cwd=str(ROOT)))
    assert messages[0].startswith("⏳")
    assert "Resize LoRA done" in messages[-1] and "Resized mine.safetensors" in messages[-1], messages[-1]
    assert out.is_file()

    # run again: the existing output is refused and left as it is
    before = out.read_bytes()
    messages = list(run_tool(sys.executable, "resize", raw, [lora.parent, tmp_path], cwd=str(ROOT)))
    assert "failed" in messages[-1] and "already exists" in messages[-1]
    assert out.read_bytes() == before


def test_show_reports_the_file_and_its_metadata(lora):
    messages = list(run_tool(sys.executable, "show", raw_for("show", model=str(lora)), [lora.parent], cwd=str(ROOT)))
    assert "Show LoRA done" in messages[-1] and "LoRA for sd1" in messages[-1]
    assert "ss\\_network\\_dim" in messages[-1] or "ss_network_dim" in messages[-1]


def test_every_tool_has_a_tab_and_the_new_ones_become_kohyas_commands(tmp_path):
    assert {"merge-lycoris", "extract-dylora", "extract-locon"} <= set(TOOLS)  # the page draws a tab for each tool
    raw = raw_for("merge-lycoris", base_model=f"{tmp_path}/base.safetensors",
                  lycoris_model=f"{tmp_path}/loha.safetensors", output_name=str(tmp_path / "out.safetensors"),
                  weight=0.8, is_sdxl=True)
    argv = tool_command("py", "merge-lycoris", values_from_inputs("merge-lycoris", raw, [tmp_path]))
    # kohya_ss' merge_lycoris.py: base_model lycoris_model output_name are positional, in that order
    assert argv[5:8] == [f"{tmp_path}/base.safetensors", f"{tmp_path}/loha.safetensors",
                         str(tmp_path / "out.safetensors")]
    joined = " ".join(argv)
    assert "--weight 0.8" in joined and "--is_sdxl" in joined and "--is_v2" not in joined
    raw = raw_for("extract-dylora", model=f"{tmp_path}/dy.safetensors", save_to=str(tmp_path / "dy4.safetensors"),
                  unit=2, new_rank=4)
    joined = " ".join(tool_command("py", "extract-dylora", values_from_inputs("extract-dylora", raw, [tmp_path])))
    assert f"--model {tmp_path}/dy.safetensors" in joined and "--unit 2" in joined and "--new_rank 4" in joined
    assert "--save_precision" not in joined  # empty: the file's own precision
