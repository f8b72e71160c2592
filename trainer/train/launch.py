"""The command line that starts a training run (the GUI calls this; it imports nothing heavy).

One process: `python -m trainer run CONFIG`. Several (num_processes > 1, one per GPU): the same
command under `accelerate launch`, which starts one DDP process per GPU.
"""
from __future__ import annotations

import os
import sys


def build_launch_command(config, config_path: str | os.PathLike, *, training_type: str | None = None,
                         events_file: str | os.PathLike | None = None, cpu: bool = False,
                         python: str | None = None) -> list[str]:
    """argv for a run of `config` saved at `config_path` (TOML or JSON).

    `cpu=True` makes a multi-process run use CPU processes talking over gloo, started by torchrun
    (tests, machines without GPUs); otherwise `accelerate launch --multi_gpu` gives each process a GPU
    (gpu_ids picks which).
    """
    python = python or sys.executable
    run = ["-m", "trainer", "run", os.fspath(config_path)]
    if training_type:
        run += ["--type", training_type]
    if events_file:
        run += ["--events", os.fspath(events_file)]
    n = int(config.num_processes)
    if n <= 1:
        return [python, *run]
    if cpu:  # accelerate launches CPU processes only through MPI; torchrun gives gloo directly
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *run]
    cmd = [python, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", str(config.mixed_precision), "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", str(int(config.num_cpu_threads_per_process))]
    cmd += ["--multi_gpu"]
    gpu_ids = str(config.gpu_ids).strip()
    if gpu_ids:
        cmd += ["--gpu_ids", gpu_ids]
    port = int(config.main_process_port)
    if port:
        cmd += ["--main_process_port", str(port)]
    return cmd + run
