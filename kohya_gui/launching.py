"""From a checked config to a queued job: the run folder, the exact command, the overwrite guard.

Every job gets `<workspace>/runs/<id>/` holding `settings.json` (the form as saved by the schema),
`config.toml` (what the trainer reads), `events.jsonl` and `trainer.log`, so each run can be
reproduced and inspected after the fact.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from trainer.config import save_config_json, save_trainer_toml

from .jobqueue import JobQueue, Job


def trainer_argv(config, config_path: Path, python: str = sys.executable) -> list[str]:
    """The trainer command for a saved config; uses the trainer's own builder when present
    (it adds `accelerate launch` for several GPUs), else `python -m trainer run CONFIG`."""
    try:
        from trainer.train.launch import build_launch_command
    except ImportError:
        return [python, "-m", "trainer", "run", str(config_path)]
    try:
        argv = build_launch_command(config, config_path)
    except TypeError:          # a builder that takes only the config path
        argv = build_launch_command(config_path)
    return [str(a) for a in argv]


def command_text(argv: list[str]) -> str:
    return shlex.join(argv)


def runnable_commands(config, python: str = sys.executable) -> tuple[str, str]:
    """'Print training command': this trainer's command and kohya's sd-scripts one, each reading a
    config file written (time-stamped, never over an earlier one) into the output folder.
    Returns (both commands, the sd-scripts TOML)."""
    from trainer.config import save_trainer_toml, write_sd_scripts_files

    toml_path, sd_command = write_sd_scripts_files(config, config.output_dir)
    ours = toml_path.with_name(toml_path.name.replace("config_", "kohya-studio_", 1))
    save_trainer_toml(config, ours)
    text = (f"# kohya-studio\n{command_text(trainer_argv(config, ours, python))}\n\n"
            f"# kohya's sd-scripts (run from the kohya_ss folder, where sd-scripts/ is)\n{sd_command}")
    return text, toml_path.read_text(encoding="utf-8")


def model_extension(config) -> str:
    fmt = getattr(config, "save_model_as", "safetensors")
    return {"ckpt": ".ckpt", "pt": ".pt", "safetensors": ".safetensors"}.get(fmt, "")


def existing_outputs(config) -> list[Path]:
    """Files a run with this config would overwrite: the final model and epoch/step files."""
    out_dir = Path(getattr(config, "output_dir", "") or "")
    name = getattr(config, "output_name", "") or "last"
    if not out_dir.is_dir():
        return []
    ext = model_extension(config)
    found = []
    final = out_dir / f"{name}{ext}"
    if final.exists():
        found.append(final)
    if ext:
        found += sorted(p for p in out_dir.glob(f"{name}-*{ext}") if p.is_file())
    return found


def overwrite_message(paths: list[Path]) -> str:
    shown = "\n".join(f"- `{p}`" for p in paths[:8])
    more = f"\n- … and {len(paths) - 8} more" if len(paths) > 8 else ""
    return (f"### ⚠ This run would overwrite {len(paths)} existing file(s)\n{shown}{more}\n\n"
            "Press **Overwrite and start** to replace them, or **Cancel** and change the output name "
            "or folder.")


def enqueue(queue: JobQueue, config, *, python: str = sys.executable, start: bool = True) -> Job:
    """Write the run folder and add the job; it starts at once when the queue is idle (and `start`)."""
    name = f"{config.training_type}: {getattr(config, 'output_name', '') or 'last'}"
    job_id, run_dir = queue.new_run_dir(getattr(config, "output_name", "") or config.training_type)
    save_config_json(config, run_dir / "settings.json")
    toml_path = save_trainer_toml(config, run_dir / "config.toml")
    argv = trainer_argv(config, Path(toml_path), python)
    return queue.add(name, config.training_type, argv, run_dir, job_id=job_id, start=start)
