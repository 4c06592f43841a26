"""Running a ``spring-rag`` command as one process, or as two real CPU processes under ``accelerate launch``
(torchrun's launcher, gloo on 127.0.0.1), for the distributed tests of training and sharded encoding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_spring_rag(processes: int, home: Path, *arguments: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``spring-rag ARGUMENTS`` in ``processes`` (1 or 2) CPU processes on one thread each; asserts it succeeded.

    The caller's launcher variables are dropped and ``HF_HOME`` is ``home``, so no accelerate config file of this
    machine's user is read.
    """
    env = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    env.update(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_HOME=str(home))
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                "--main_process_port", str(free_port())] if processes == 2 else []
    command = [sys.executable, *launcher, "-m", "spring_cli", *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
