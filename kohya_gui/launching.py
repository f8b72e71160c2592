"""From a checked config to a queued job: the run folder, the exact command, the overwrite guard.

Every job gets `<workspace>/runs/<id>/` holding `settings.json` (the form as saved by the schema),
`config.toml` (what the trainer reads), `events.jsonl` and `trainer.log`, so each run can be
reproduced and inspected after the fact.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from trainer.config import save_config_json, save_trainer_toml
from trainer.output_names import model_ext, output_path, output_pattern

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


def existing_outputs(config) -> list[Path]:
    """Files and folders a run with this config would collide with (the trainer refuses to start
    over them): the final model, epoch/step/stopped files and their -state folders. The names are
    the trainer's own (trainer/output_names.py)."""
    out_dir = Path(config.output_dir or "").expanduser()
    name = config.output_name or "last"
    if not out_dir.is_dir():
        return []
    ext = model_ext(config)
    pattern = output_pattern(name, ext)
    found = [p for p in out_dir.iterdir() if p.name.startswith(name) and pattern.fullmatch(p.name)]
    final = output_path(out_dir, name, ext, "final")
    return sorted(found, key=lambda p: (p != final, p.name))     # the final model first


def move_aside(paths: list[Path], config) -> Path | None:
    """A confirmed overwrite: the earlier results move into `NAME.replaced-<time>/` beside them
    (nothing is deleted), so the trainer finds the names free and the user still has the old files."""
    if not paths:
        return None
    out_dir = Path(getattr(config, "output_dir", "") or "").expanduser()
    name = getattr(config, "output_name", "") or "last"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir / f"{name}.replaced-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = out_dir / f"{name}.replaced-{stamp}-{n}"
    target.mkdir()
    for path in paths:
        if path.exists():
            os.replace(path, target / path.name)
    return target


def overwrite_message(paths: list[Path]) -> str:
    shown = "\n".join(f"- `{p}`" for p in paths[:8])
    more = f"\n- … and {len(paths) - 8} more" if len(paths) > 8 else ""
    return (f"### ⚠ This run would replace {len(paths)} existing file(s)\n{shown}{more}\n\n"
            "Press **Confirm and start** to move them into a `NAME.replaced-<time>` folder beside them "
            "(nothing is deleted) and train again, or **Cancel** and change the output name or folder.")


def enqueue(queue: JobQueue, config, *, python: str = sys.executable, start: bool = True) -> Job:
    """Write the run folder and add the job; it starts at once when the queue is idle (and `start`)."""
    name = f"{config.training_type}: {getattr(config, 'output_name', '') or 'last'}"
    job_id, run_dir = queue.new_run_dir(getattr(config, "output_name", "") or config.training_type)
    save_config_json(config, run_dir / "settings.json")
    toml_path = save_trainer_toml(config, run_dir / "config.toml")
    argv = trainer_argv(config, Path(toml_path), python)
    return queue.add(name, config.training_type, argv, run_dir, job_id=job_id, start=start)
