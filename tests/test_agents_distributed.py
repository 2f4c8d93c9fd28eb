"""Two CPU processes under torchrun (gloo) give the same DeepSpeed update as one process on the whole batch.

This also checks the launcher command documented in :mod:`infra.engine`:
``torchrun --nproc_per_node 2 --master_port PORT script.py``, with the engine built by ``infra.engine``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import torch
from launch import failure_report, load_module, needs_torchrun, torchrun

WORKER = Path(__file__).with_name("dist_grad_worker.py")
RUNS = ("0:none", "1:none", "2:1.0")  # ZeRO stage : max_grad_norm (1.0 does clip this batch)
WORLD = 2


def load_worker() -> ModuleType:
    return load_module(WORKER)


def run_torchrun(out_dir: Path, timeout: float = 150.0) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` on the worker; the whole process group is killed on timeout."""
    return torchrun([str(WORKER), str(out_dir), "--runs", *RUNS], timeout, nproc=WORLD)


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


@needs_torchrun
def test_two_process_gradient_equals_full_batch_gradient(tmp_path) -> None:
    """DeepSpeed's all-reduced gradient (mean of the two half-batch gradients) and the parameters after one
    step equal the single-process full-batch ones, for ZeRO stages 0, 1, 2 and with gradient clipping."""
    torch.set_num_threads(1)
    result = run_torchrun(tmp_path)
    assert result.returncode == 0, failure_report(result.stdout)
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
