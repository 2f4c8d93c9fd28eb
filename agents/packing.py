"""Linear layers on prepacked weights for gradient-free bf16 forwards on a CPU (the rollouts' decoding).

torch's bf16 ``F.linear`` on a CPU runs oneDNN's matmul on the weight as it is stored, row-major. Reordered
once into oneDNN's own blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's
weight-freezing pass does for CPU inference), the weight goes through ``torch.ops.mkldnn._linear_pointwise``
with bitwise the same output (tested), and at the few rows of token-by-token decoding (one per env) faster:
SmolLM2-135M's linears at 8 rows took 17 ms instead of 26 ms per step on the 2-core AVX512-BF16 CPU, and
its rollouts ran 1.08-1.20x faster (``benchmarks.throughput`` times them with and without packing in one
run). At the hundreds of rows of a scoring pass or an update the reorder is already amortised (the scoring
pass measured no faster), so only rollouts use it.

The weights change with every optimizer step, and DeepSpeed writes them in place through ``.data`` (which
does not bump a tensor's version counter), so a packed weight is only trusted while nothing trains:
:func:`packed_linears` packs every ``nn.Linear`` of its modules when it opens and drops the packed weights
when it closes. The policy-gradient agents open it around a rollout
(:meth:`agents.base.TextAlgorithm.collect_rollouts`: the weights do not change until it ends), so the packed
copy (about the size of the bf16 weights) lives only while acting, never at the update's memory peak. Inside,
a layer runs on its packed weight only for a gradient-free forward of a bf16 CPU input; anything else (a
forward that records a graph, fp32, another device) takes the layer's own path.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn


def cpu_bf16() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels (AVX512-BF16 or AMX)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _packable(layer: nn.Linear) -> bool:
    weight = layer.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and weight.dim() == 2
        and weight.numel() > 0  # not a ZeRO-3 partition placeholder
        and "forward" not in vars(layer)  # already patched: by an enclosing packed_linears, or by a hook
    )


def _packed_forward(layer: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    grad = torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)
    if grad or x.dtype != torch.bfloat16 or x.device.type != "cpu":
        return nn.Linear.forward(layer, x)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, layer.bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(*modules: nn.Module, enabled: bool = True, rows: int = 16) -> Iterator[int]:
    """While open, every bf16 CPU ``nn.Linear`` of ``modules`` runs its gradient-free forwards on a weight
    packed for about ``rows`` input rows; yields how many layers it packed (0, and nothing changes, when
    ``enabled`` is False, the CPU has no bf16 kernels or a module holds unmerged LoRA adapters). The weights
    must not change while it is open. A layer that an enclosing ``packed_linears`` (or anything else) already
    patched is left as it is."""
    if not enabled or not cpu_bf16() or any(hasattr(m, "lora_A") for mod in modules for m in mod.modules()):
        # unmerged LoRA adapters are left alone: a LoRA run's rollouts came out different with them packed
        # (tests/test_agents_lora.py::test_lora_agent_learns), while every plain layer tested is bitwise equal
        yield 0
        return
    layers = {id(m): m for module in modules for m in module.modules() if isinstance(m, nn.Linear)}
    patched: list[nn.Linear] = []
    packs: dict[int, torch.Tensor] = {}  # a tied weight (the LM head's) is packed once
    try:
        for layer in layers.values():
            if not _packable(layer):
                continue
            key = layer.weight.data_ptr()
            if key not in packs:
                packs[key] = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), rows)
            layer.forward = functools.partial(_packed_forward, layer, packs[key])  # type: ignore[method-assign]
            patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            vars(layer).pop("forward", None)
        packs.clear()
