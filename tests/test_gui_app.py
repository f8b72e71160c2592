"""Launch flags, network-exposure safety, the GUI defaults file, and a torch-free GUI process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kohya_gui import envcheck
from kohya_gui.cli import access_problems, build_parser, is_loopback
from kohya_gui.settings import PROJECT_ROOT, SettingsError, make_settings


def _args(*argv):
    return build_parser().parse_args(list(argv))


def test_defaults_serve_locally_on_7860():
    args = _args()
    assert (args.listen, args.server_port, args.share) == ("127.0.0.1", 7860, False)
    assert access_problems(args) == ([], None)


def test_listening_on_all_interfaces_without_a_password_warns_loudly():
    warnings, refusal = access_problems(_args("--listen", "0.0.0.0"))
    assert refusal is None and "WITHOUT a password" in warnings[0]
    assert access_problems(_args("--listen", "0.0.0.0", "--username", "u", "--password", "p")) == ([], None)


def test_share_without_credentials_is_refused():
    _, refusal = access_problems(_args("--share"))
    assert "Refusing --share" in refusal
    assert access_problems(_args("--share", "--username", "u", "--password", "p"))[1] is None
    assert "both" in access_problems(_args("--username", "u"))[1]


def test_share_refusal_from_the_command_line_exits_before_serving():
    proc = subprocess.run([sys.executable, "-m", "kohya_gui", "--share"], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT_ROOT)
    assert proc.returncode == 2 and "Refusing --share" in proc.stderr


@pytest.mark.parametrize("host,local", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                        ("0.0.0.0", False), ("192.168.1.5", False)])
def test_loopback_detection(host, local):
    assert is_loopback(host) is local


def test_gui_defaults_file_sets_roots_and_per_tab_values(tmp_path):
    data = tmp_path / "datasets"
    data.mkdir()
    cfg = tmp_path / "gui.toml"
    cfg.write_text(f'[server]\ndata_roots = ["{data}"]\n[defaults]\noutput_dir = "/out"\n'
                   '[lora]\nnetwork_dim = 16\n')
    settings = make_settings(config=str(cfg), workspace=str(tmp_path / "ws"))
    assert data.resolve() in settings.allowed_roots
    assert settings.defaults_for("lora") == {"output_dir": "/out", "network_dim": 16}
    assert settings.defaults_for("dreambooth") == {"output_dir": "/out"}


def test_broken_defaults_file_or_missing_data_root_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        make_settings(config=str(bad), workspace=str(tmp_path / "ws"))
    typo = tmp_path / "typo.toml"
    typo.write_text("[loar]\nnetwork_dim = 4\n")
    with pytest.raises(SettingsError, match="unknown section"):
        make_settings(config=str(typo), workspace=str(tmp_path / "ws"))
    with pytest.raises(SettingsError, match="is not a folder"):
        make_settings(data_roots=[str(tmp_path / "nope")], workspace=str(tmp_path / "ws"))


def test_building_the_whole_page_never_imports_torch(tmp_path):
    """The GUI process stays torch-free: the trainer, env check and captioners are subprocesses."""
    code = ("import sys\nfrom kohya_gui.app import build_app\nfrom kohya_gui.settings import make_settings\n"
            "from kohya_gui.jobqueue import JobQueue\nfrom kohya_gui.context import AppContext\n"
            f"s = make_settings(workspace={str(tmp_path / 'ws')!r})\n"
            "build_app(AppContext(s, JobQueue(s.workspace)))\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("CLEAN")


def test_environment_check_reports_python_torch_and_providers():
    info = envcheck.run_check(sys.executable)
    assert "error" not in info, info
    assert info["python"] == sys.version.split()[0]
    assert info["torch"].startswith("2.")
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    text = envcheck.to_markdown(info)
    assert "| PyTorch |" in text and "| GPU |" in text


def test_environment_check_failure_is_shown_not_raised():
    assert "failed" in envcheck.to_markdown(envcheck.run_check("/nonexistent/python"))


def test_about_gpu_line_names_card_and_vram():
    info = {"python": "3.11", "torch": "2.13", "cuda_available": True, "cuda_version": "12.8",
            "gpus": [{"index": 0, "name": "NVIDIA H200", "vram_gb": 139.8}], "onnxruntime_providers": []}
    assert "NVIDIA H200 (139.8 GB)" in envcheck.to_markdown(info)
    assert json.dumps(info)  # the check's output is plain JSON


def test_help_lists_every_launch_flag():
    text = build_parser().format_help()
    for flag in ("--listen", "--server_port", "--share", "--headless", "--inbrowser", "--username",
                 "--password", "--root_path", "--config", "--data_root"):
        assert flag in text
