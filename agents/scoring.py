"""Scoring a rollout before a policy-gradient update: behaviour log-probs and values, reference log-probs, KL.

Token-level rollouts record the behaviour log-probs and values while acting; sequence-level rollouts
(``generate``) do not, so they are computed here, in the forward passes over whole episodes that also give the
reference log-probs. Both go through :func:`agents.policy.evaluate_completions`.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.losses import kl_penalty
from agents.policy import PLAIN_SAMPLING, ActorCritic, FrozenLM, Sampling, evaluate_completions
from agents.rollout import RolloutBatch, minibatches


class ScoredBatch(NamedTuple):
    """Per-token statistics of a :class:`RolloutBatch` computed before an update, all (E, N)."""

    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor
    kl: torch.Tensor  # log-ratio to the reference, 0 on padding
    rollout_gap: float | None  # mean |log-prob recorded by the rollout - update path's|, when both exist


@torch.no_grad()
def score_batch(
    batch: RolloutBatch,
    policy: ActorCritic,
    reference: FrozenLM,
    max_new_tokens: int,
    n_actions: int,
    chunk_size: int,
    sampling: Sampling = PLAIN_SAMPLING,
    recompute: bool = False,
    shared_groups: torch.Tensor | None = None,
) -> ScoredBatch:
    """Behaviour log-probs/values, reference log-probs and the per-token KL, in forward passes over whole
    episodes (``chunk_size`` at a time). The behaviour log-probs and values are computed here when ``batch``
    lacks them or ``recompute`` is set (a rollout acted with another copy of the weights, e.g. in bf16): PPO's
    ratio then compares the update path with itself. Both policy and reference are scored under the
    ``sampling`` distribution the tokens were drawn from. With ``shared_groups`` (the batch's group ids),
    each chunk holds whole groups and computes each prompt once."""
    n_new = max_new_tokens
    recompute = recompute or batch.old_logprobs is None
    old_logprobs, old_values, ref_logprobs = [], [], []
    chunks = minibatches(len(batch.rewards), chunk_size, shared_groups, shuffle=False)  # in order
    for chunk in chunks:
        ids, mask = batch.input_ids[chunk], batch.attention_mask[chunk]
        groups = None if shared_groups is None else shared_groups[chunk]
        ref = evaluate_completions(
            reference, ids, mask, n_new, n_actions, sampling=sampling, group_ids=groups
        )
        ref_logprobs.append(ref.logprobs)
        if recompute:
            scored = evaluate_completions(
                policy, ids, mask, n_new, n_actions, sampling=sampling, group_ids=groups
            )  # (b, N)
            assert scored.values is not None  # an ActorCritic always has values
            old_logprobs.append(scored.logprobs)
            old_values.append(scored.values)
    back = torch.argsort(torch.cat(chunks))  # chunk order -> batch order
    logprobs = torch.cat(old_logprobs)[back] if recompute else batch.old_logprobs
    values = torch.cat(old_values)[back] if recompute else batch.old_values
    assert logprobs is not None and values is not None
    gap = None
    if recompute and batch.old_logprobs is not None:
        gap = float(((logprobs - batch.old_logprobs).abs() * batch.gen_mask).sum() / batch.gen_mask.sum())
    ref_all = torch.cat(ref_logprobs)[back]
    kl = kl_penalty(logprobs, ref_all, kind="kl") * batch.gen_mask  # (E, N)
    return ScoredBatch(logprobs, values, ref_all, kl, gap)


def score_rollout(
    agent: Any, recompute: bool = False
) -> tuple[RolloutBatch, ScoredBatch, torch.Tensor | None]:
    """A policy-gradient agent's rollout batch, scored before its update (:func:`score_batch` with the agent's
    sampling, and recomputed on the update path when a rollout copy in another dtype acted, or when
    ``recompute`` asks for it), and the group ids whose prompts are computed once (None without prompt
    groups)."""
    batch = agent.rollout_batch
    assert batch is not None, "train() runs after collect_rollouts() has built the batch"
    shared_groups = batch.group_ids if agent.group_size > 1 else None
    copy = agent.rollout_copy
    recompute = recompute or (copy is not None and copy.dtype != next(agent.policy.parameters()).dtype)
    start = time.perf_counter()
    scored = score_batch(
        batch,
        agent.policy,
        agent.reference,
        agent.max_new_tokens,
        agent.n_actions,
        agent.config.minibatch_size,
        agent.sampling,
        recompute=recompute,
        shared_groups=shared_groups,
    )
    agent._score_seconds = time.perf_counter() - start  # the time breakdown's "score" phase
    return batch, scored, shared_groups


def finish_update(
    logger: Any, kl_ctl: Any, scored: ScoredBatch, episodes: int, n_updates: int, stats: dict[str, Any]
) -> None:
    """After a policy-gradient update: move the adaptive KL coefficient by the rollout's mean episode KL and
    log it, the rollout-copy gap (if any) and ``stats`` (``train/<name>``: the mean of a list, or a value)."""
    episode_kl = float(scored.kl.sum(-1).mean())
    kl_ctl.update(episode_kl, n_steps=episodes)
    logger.record("rollout/kl", episode_kl)
    if scored.rollout_gap is not None:
        logger.record("train/rollout_logprob_gap", scored.rollout_gap)
    for name, value in stats.items():
        logger.record(f"train/{name}", float(np.mean(value)))
    logger.record("train/kl_coef", kl_ctl.value)
    logger.record("train/n_updates", n_updates, exclude="tensorboard")
