"""Two CPU processes under torchrun (gloo) give the same DeepSpeed update as one process on the whole batch.

This also checks the launcher command documented in :mod:`rewards.engine`:
``torchrun --nproc_per_node 2 --master_port PORT script.py``, with the engine built by ``rewards.engine``.
"""

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
import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_grad_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
RUNS = ("0:none", "1:none", "2:1.0")  # ZeRO stage : max_grad_norm (1.0 does clip this batch)
WORLD = 2


def load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dist_grad_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_torchrun(out_dir: Path, timeout: float = 150.0) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` on the worker; the whole process group is killed on timeout."""
    command = [
        str(TORCHRUN),
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(out_dir),
        "--runs",
        *RUNS,
    ]
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


def single_process_reference(worker: ModuleType, max_grad_norm: float | None) -> tuple[dict, dict, dict]:
    """Initial parameters, gradient, and parameters after one (clipped) AdamW step on the whole batch, in this
    process and without DeepSpeed."""
    module = worker.build_module()
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    initial = {name: p.detach().clone() for name, p in named}
    worker.sample_losses(module, *worker.fixed_batch()).mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in named}
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for _, p in named], max_grad_norm)
    optimizer = torch.optim.AdamW([p for _, p in named], lr=worker.LEARNING_RATE, eps=1e-8, weight_decay=0.0)
    optimizer.step()
    return initial, grads, {name: p.detach().clone() for name, p in named}


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed next to this Python")
def test_two_process_gradient_equals_full_batch_gradient(tmp_path) -> None:
    """DeepSpeed's all-reduced gradient (mean of the two half-batch gradients) and the parameters after one
    step equal the single-process full-batch ones, for ZeRO stages 0, 1, 2 and with gradient clipping."""
    torch.set_num_threads(1)
    result = run_torchrun(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    worker = load_worker()
    for run in RUNS:
        clip = run.split(":")[1]
        initial, grads, params = single_process_reference(worker, None if clip == "none" else float(clip))
        moved = max(float((params[name] - initial[name]).abs().max()) for name in params)
        assert moved > 10 * 1e-6  # the step is large enough for the parameter comparison to mean something
        for rank in range(WORLD):
            saved = torch.load(tmp_path / f"{run.replace(':', '_')}_rank{rank}.pt")
            assert saved["grads"].keys() == grads.keys()
            for name, grad in grads.items():
                where = f"run {run} rank {rank} {name}"
                torch.testing.assert_close(saved["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=where)
                torch.testing.assert_close(saved["params"][name], params[name], atol=1e-6, rtol=0, msg=where)
