"""The physical limits a benchmark compares against: the linear layers of one decode step, timed alone at
their shapes, and the device's bf16 GEMM peak (:mod:`benchmarks.throughput` reports the ratios)."""

from __future__ import annotations

import time

import torch


def synchronize() -> None:
    """Wait for queued GPU work before reading a clock (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def linear_calls(
    network: torch.nn.Module, rows: int, device: torch.device
) -> list[tuple[torch.nn.Linear, int]]:
    """Every ``nn.Linear`` call of one decode step of ``network`` at ``rows`` rows (one token each), with the
    rows it saw: recorded by forward hooks during one forward of (rows, 1) tokens."""
    calls: list[tuple[torch.nn.Linear, int]] = []
    hooks = [
        module.register_forward_hook(
            lambda layer, inputs, _: calls.append((layer, inputs[0].shape[:-1].numel()))
        )
        for module in network.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        with torch.no_grad():
            ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
            network(ids, torch.ones_like(ids))
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def time_linears(calls: list[tuple[torch.nn.Linear, int]], repeats: int = 5) -> float:
    """Seconds of the recorded linear calls, each timed alone with ``F.linear`` at its shape (best of
    ``repeats``), summed."""
    total = 0.0
    for layer, rows in calls:
        weight = layer.weight.detach()
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        bias = None if layer.bias is None else layer.bias.detach()
        best = float("inf")
        with torch.no_grad():
            for _ in range(repeats):
                synchronize()
                start = time.perf_counter()
                torch.nn.functional.linear(x, weight, bias)
                synchronize()
                best = min(best, time.perf_counter() - start)
        total += best
    return total


def gemm_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of a bf16 ``size``^3 matmul on ``device`` (best of ``repeats``): the achievable peak."""
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
