"""What the multi-process tests share: a free port, a worker script loaded as a module, and ``torchrun`` with
2 processes on this CPU (gloo), whose whole process group is killed if it runs past its timeout."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
DEEPSPEED = Path(sys.executable).with_name("deepspeed")
needs_torchrun = pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed next to Python")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_module(path: Path) -> ModuleType:
    """A worker script imported as a module (its helpers build the single-process reference)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(
    args: list[str], timeout: float, nproc: int = 2, launcher: str = "torchrun"
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc ARGS`` (or, with ``launcher="deepspeed"``, ``deepspeed
    --num_gpus nproc ARGS``, which on a CPU machine starts nproc CPU processes and appends
    ``--local_rank=R`` to ARGS) from the repository root with one torch thread per rank; the output (stdout
    and stderr together) is the result's ``stdout``. On timeout the test fails with it."""
    if launcher == "deepspeed":
        command = [str(DEEPSPEED), "--num_gpus", str(nproc), "--master_port", str(free_port()), *args]
    else:
        command = [
            str(TORCHRUN),
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
        ]
        command += ["--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the pytest process may hold a 1-process group of its own
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{output.decode(errors='replace')[-4000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, output.decode(errors="replace"), "")


def failure_report(output: str, lines_per_rank: int = 40) -> str:
    r"""What a failed multi-process run printed, for an assertion message: the last ``lines_per_rank`` lines
    of each rank's own ``[rankN]:`` traceback (the rank that crashed first is otherwise hidden behind the
    "connection closed by peer" traceback of the others), then the last lines of the whole output.

    >>> print(failure_report("[rank1]: ValueError: x\n[rank0]: RuntimeError: peer closed\ndone", 1))
    --- rank0 ---
    [rank0]: RuntimeError: peer closed
    --- rank1 ---
    [rank1]: ValueError: x
    --- end of the output ---
    [rank1]: ValueError: x
    [rank0]: RuntimeError: peer closed
    done
    """
    by_rank: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("[rank") and "]:" in line:
            by_rank.setdefault(line[1 : line.index("]")], []).append(line)
    parts = [f"--- {rank} ---\n" + "\n".join(by_rank[rank][-lines_per_rank:]) for rank in sorted(by_rank)]
    return "\n".join([*parts, "--- end of the output ---", output[-2000:]])
