"""One rank of the multi-process check in ``tests/test_agents_distributed.py`` (not a test module itself).

Launched as ``torchrun --nproc_per_node W tests/dist_grad_worker.py OUT_DIR --runs 0:none 2:1.0`` (or with
``deepspeed --num_gpus W``). Each run is ``ZERO_STAGE:MAX_GRAD_NORM``: every rank builds the same seeded tiny
actor-critic through :mod:`infra.engine`, takes its 1/W share of a fixed batch, runs ``engine.backward`` on
the mean per-sample loss and one ``engine.step``, and saves the gradient DeepSpeed averaged across ranks and
the parameters after the step to ``OUT_DIR/{run}_rank{R}.pt`` (``:`` replaced by ``_``). The test compares
them with one process on the whole batch.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

BATCH, LENGTH, LEARNING_RATE = 4, 10, 1e-4


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, T), left-padded, and value targets (B,); the same on every rank."""
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(4, 500, (BATCH, LENGTH), generator=gen)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    for row, pad in enumerate((0, 2, 3, 1)):
        mask[row, :pad] = 0
    ids = ids.masked_fill(mask == 0, 3)
    targets = torch.randn(BATCH, generator=gen)
    return ids, mask, targets


def sample_losses(module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor):
    """Per-sample loss (b,): masked mean next-token NLL plus the squared error of the last value."""
    logits, values = module(ids, mask)  # (b, T, V), (b, T)
    logprobs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    token_mask = (mask[:, :-1] * mask[:, 1:]).float()  # (b, T-1): both the context and the target are real
    nll = -(logprobs * token_mask).sum(-1) / token_mask.sum(-1)
    return nll + (values[:, -1] - targets) ** 2


def build_module() -> torch.nn.Module:
    """The seeded tiny-sp actor-critic (identical on every rank and in the single-process reference)."""
    import textenv
    from agents.policy import ActorCritic

    torch.manual_seed(0)
    module = ActorCritic(textenv.load_model("tiny-sp"))
    torch.nn.init.normal_(module.value_head.weight, std=0.1)  # non-zero, so the trunk gets value gradients
    return module


def run_once(run: str, out_dir: Path) -> None:
    from deepspeed.utils import safe_get_full_grad

    from infra import engine

    stage, clip = run.split(":")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    share = BATCH // world
    config = engine.build_config(
        {"zero_optimization": {"stage": int(stage)}},
        learning_rate=LEARNING_RATE,
        max_grad_norm=None if clip == "none" else float(clip),
        train_batch_size=share,
        on_gpu=False,
    )
    module = build_module()
    ds_engine = engine.initialize(module, config)
    ids, mask, targets = (t[rank * share : (rank + 1) * share] for t in fixed_batch())
    loss = sample_losses(ds_engine, ids, mask, targets).mean()
    ds_engine.backward(loss)
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    params = [p for p in module.parameters() if p.requires_grad]
    grads = {name: safe_get_full_grad(p).detach().clone() for name, p in zip(names, params, strict=True)}
    ds_engine.step()
    after = {name: p.detach().clone() for name, p in zip(names, params, strict=True)}
    torch.save({"grads": grads, "params": after}, out_dir / f"{run.replace(':', '_')}_rank{rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--runs", nargs="+", default=["0:none"], help="ZERO_STAGE:MAX_GRAD_NORM")
    args, _ = parser.parse_known_args()  # the deepspeed launcher appends --local_rank
    torch.set_num_threads(1)
    for run in args.runs:
        run_once(run, args.out_dir)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
