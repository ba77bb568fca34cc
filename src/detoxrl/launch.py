"""Run a stage under N processes: the stage command re-launches itself through `accelerate launch`.

`compute.num_processes: N` (params.yaml) with N > 1 makes `detoxrl ppo` (and the other data-parallel stages) run
`accelerate launch --config_file <compute.accelerate_config> --num_processes N -m detoxrl ppo ...` and exit with
its status, so `dvc repro` and `dvc exp run -S compute.num_processes=2` need no other command; the DVC stage graph
is unchanged. A stage's block may override either field (`ppo.compute.num_processes`, ...; params.stage_compute),
and what cannot run under the result fails when the params load (params.compute_problem). Inside the launched
processes (accelerate sets LOCAL_RANK / WORLD_SIZE) nothing is re-launched. Where no CUDA device exists the
processes run on the CPU and talk over gloo; each gets an equal share of the cores (OMP_NUM_THREADS), so N
processes do not oversubscribe them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from . import DetoxError
from .params import stage_compute


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launched() -> bool:
    """True inside a process that `accelerate launch` (or torchrun) started."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_LAUNCHED" in os.environ


def rank() -> int:
    """This process's global rank (0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(num_processes: int, config: str | None, argv: list[str]) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--main_process_port", str(free_port())]
    if config:
        if not Path(config).is_file():
            raise DetoxError(f"compute.accelerate_config: {config} not found")
        cmd += ["--config_file", config]
    else:
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + ["-m", "detoxrl", *argv]


def relaunch(params, block: str, argv: list[str] | None = None) -> None:
    """Under the params block's effective `compute.num_processes` > 1 and not yet launched: run this command through
    `accelerate launch` and exit with its status. Otherwise return and let the caller run the stage in this process."""
    compute = stage_compute(params, block)
    if compute.num_processes <= 1 or launched():
        return
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ, ACCELERATE_LAUNCHED="1")
    if not _cuda():  # CPU processes over gloo; transformers' Trainer reads this, else it trains each one alone
        env["ACCELERATE_USE_CPU"] = "true"
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // compute.num_processes))
    cmd = launch_command(compute.num_processes, compute.accelerate_config, argv)
    print(f"{argv[0]}: {compute.num_processes} processes: {' '.join(cmd[1:4])} ... -m detoxrl {' '.join(argv)}",
          flush=True)
    sys.exit(subprocess.run(cmd, env=env).returncode)


def end_processes() -> None:
    """Close the process group of an `accelerate launch`-ed command before the interpreter exits. Left open, gloo's
    threads may still be running while Python tears the process down, and the C++ runtime aborts the process
    ("terminate called without an active exception", SIGABRT) after its work was done and written."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # local: no collective, so a process that failed alone does not hang here
