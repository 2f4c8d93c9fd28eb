"""Scaling out: one training run over several ranks, ZeRO-3 gathers, activation checkpointing.

Under ``torchrun --nproc_per_node N`` or the ``deepspeed`` launcher every rank runs the same script and builds
the same agent around its own environments. This module holds what the agents need to stay in step:

- **who am I**: :func:`rank`, :func:`world_size`, :func:`is_main` (from the process group when one is up, else
  from the launcher's ``RANK`` / ``WORLD_SIZE`` variables; 0 and 1 for a plain process).
- **env shards**: every rank steps its own env, seeded with :func:`rank_seed` (``seed + 1000 * rank``), so the
  ranks draw different prompts and samples. The network is built under the plain seed first, so it starts
  identical on every rank (LoRA's random ``A`` matrices included).
- **equal optimizer steps**: every rank collects the same number of episodes per rollout
  (``episodes_per_rollout`` is per rank; an update sees ``N x episodes_per_rollout``), so every rank cuts the
  same number of minibatches. Decisions that end a loop are taken together: :func:`all_sum` makes the
  timestep counter global (``total_timesteps`` counts env steps of all ranks, as SB3 counts all envs),
  :func:`any_rank` stops all ranks when one callback stops, :func:`all_mean` averages the adaptive KL
  coefficient after each update; PPO's ``target_kl`` early stop is decided on every rank's KL
  (:func:`any_rank`).
- **rank-0 side effects**: TensorBoard, printing, sample texts and the files of a checkpoint come from rank 0;
  :func:`on_main` runs a function (an evaluation, say) there only. Saving is collective (DeepSpeed writes
  every rank's optimizer shard), so every rank calls ``save`` at the same point.
- **ZeRO-3**: :func:`gather_into` copies partitioned weights into a whole-weights network once per rollout
  (``GatheredParameters`` over chunks of parameters), so the KV-cached rollout steps on whole weights and
  never gathers per token and module; :func:`gathered` gathers a module for saving.
- **activation checkpointing**: :func:`enable_activation_checkpointing`.

>>> rank(), world_size(), is_main()  # a plain process
(0, 1, True)
>>> rank_seed(7), rank_seed(None)
(7, None)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

RANK_SEED_STRIDE = 1000
GATHER_CHUNK_ELEMENTS = 32 * 1024 * 1024
"""Elements gathered at once by :func:`gather_into` (128 MB of fp32): bounds the transient memory."""

T = TypeVar("T")


def _group_up() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    return torch.distributed.get_rank() if _group_up() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of ranks (1 without a launcher)."""
    return torch.distributed.get_world_size() if _group_up() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this is rank 0, the one that logs, evaluates and writes checkpoint files."""
    return rank() == 0


def rank_seed(seed: int | None) -> int | None:
    """The seed of this rank's envs and sampling: ``seed + 1000 * rank`` (``seed`` itself on rank 0)."""
    return None if seed is None else seed + RANK_SEED_STRIDE * rank()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if _group_up() and world_size() > 1:
        torch.distributed.barrier()


def all_sum(value: float) -> float:
    """``value`` summed over the ranks (in float64, so integer counts stay exact).

    >>> all_sum(3.0)
    3.0
    """
    if not _group_up() or world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


def all_mean(value: float) -> float:
    """``value`` averaged over the ranks."""
    return all_sum(value) / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a decision all ranks must share).

    >>> any_rank(False), any_rank(True)
    (False, True)
    """
    return all_sum(float(bool(flag))) > 0


def on_main(function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``function(*args, **kwargs)`` on rank 0 only (None elsewhere); the ranks meet afterwards.

    For work whose result only rank 0 reports, such as a held-out evaluation or a sample-text dump; it must
    not touch the DeepSpeed engine (a ZeRO-3 forward is collective)."""
    result = function(*args, **kwargs) if is_main() else None
    barrier()
    return result


# ---- ZeRO-3 -----------------------------------------------------------------------------------------------
def is_partitioned(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are ZeRO-3 partitions (DeepSpeed marks each with ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def local_shards(module: nn.Module) -> list[torch.Tensor]:
    """The trainable weights this rank holds: the parameters themselves, or under ZeRO-3 their partitions."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [getattr(p, "ds_tensor", p) for p in params]


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Whole parameters of ``module`` inside the block (all ranks must enter it); a no-op unless ZeRO-3."""
    if not is_partitioned(module):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


@torch.no_grad()
def gather_into(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s weights into ``target`` (same architecture; dtypes may differ), gathering ZeRO-3
    partitions a chunk of parameters at a time: a few all-gathers per rollout instead of one per token and
    module. Every rank must call it (the gathers are collective)."""
    copy_gathered(list(zip(target.parameters(), source.parameters(), strict=True)))


def copy_gathered(pairs: list[tuple[torch.Tensor, nn.Parameter]]) -> None:
    """``whole.copy_(param)`` for each (whole, param) pair, gathering ZeRO-3 partitions of the params a chunk
    of about ``GATHER_CHUNK_ELEMENTS`` at a time (every rank must call it)."""
    if not any(hasattr(param, "ds_id") for _, param in pairs):
        for whole, param in pairs:
            whole.copy_(param)
        return
    import deepspeed

    start = 0
    while start < len(pairs):
        stop, elements = start, 0
        while stop < len(pairs) and (stop == start or elements < GATHER_CHUNK_ELEMENTS):
            elements += pairs[stop][0].numel()
            stop += 1
        chunk = pairs[start:stop]
        with deepspeed.zero.GatheredParameters([param for _, param in chunk], modifier_rank=None):
            for whole, param in chunk:
                whole.copy_(param)
        start = stop


# ---- activation checkpointing -----------------------------------------------------------------------------
def enable_activation_checkpointing(lm: Any) -> int:
    """Recompute each transformer layer in the backward pass instead of keeping its activations; returns the
    number of checkpointed layers.

    transformers checkpoints a layer only while the layer is in training mode, and our networks stay in eval
    mode for good (no dropout: rollout and update log-probs must agree). So each checkpointing layer is put in
    training mode by a pre-forward hook whenever gradients are on; its submodules (attention, MLP, dropout)
    stay in eval mode, so the numbers equal those without checkpointing. A layer under checkpointing cannot
    keep a KV cache with gradients, so the update computes every episode's prompt itself (the agent turns the
    shared-prompt path off)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.24's name
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(
            f"gradient_checkpointing=True, but {type(lm).__name__} has no checkpointable transformer layers; "
            "use a transformers model whose layers support gradient checkpointing, or turn it off"
        )

    def train_with_grad(module: nn.Module, args: Any) -> None:
        module.training = torch.is_grad_enabled()

    for layer in layers:
        layer.register_forward_pre_hook(train_with_grad)
    return len(layers)
