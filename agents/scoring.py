"""Scoring a rollout before a policy-gradient update: behaviour log-probs and values, reference log-probs, KL.

Token-level rollouts record the behaviour log-probs and values while acting; sequence-level rollouts
(``generate``) do not, so they are computed here, in the forward passes over whole episodes that also give the
reference log-probs. Both go through :func:`agents.policy.evaluate_completions`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from agents.losses import kl_penalty
from agents.policy import ActorCritic, FrozenLM, evaluate_completions
from agents.rollout import RolloutBatch


class ScoredBatch(NamedTuple):
    """Per-token statistics of a :class:`RolloutBatch` computed before an update, all (E, N)."""

    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor
    kl: torch.Tensor  # log-ratio to the reference, 0 on padding


@torch.no_grad()
def score_batch(
    batch: RolloutBatch,
    policy: ActorCritic,
    reference: FrozenLM,
    max_new_tokens: int,
    n_actions: int,
    chunk_size: int,
) -> ScoredBatch:
    """Behaviour log-probs/values (computed when ``batch`` lacks them), reference log-probs and the per-token
    KL, in forward passes over whole episodes (``chunk_size`` at a time)."""
    n_new = max_new_tokens
    old_logprobs, old_values, ref_logprobs = [], [], []
    for start in range(0, len(batch.rewards), chunk_size):
        ids = batch.input_ids[start : start + chunk_size]  # (b, P+N)
        mask = batch.attention_mask[start : start + chunk_size]
        ref_logprobs.append(evaluate_completions(reference, ids, mask, n_new, n_actions).logprobs)
        if batch.old_logprobs is None:
            scored = evaluate_completions(policy, ids, mask, n_new, n_actions)  # (b, N)
            assert scored.values is not None  # an ActorCritic always has values
            old_logprobs.append(scored.logprobs)
            old_values.append(scored.values)
    logprobs = torch.cat(old_logprobs) if batch.old_logprobs is None else batch.old_logprobs
    values = torch.cat(old_values) if batch.old_values is None else batch.old_values
    ref = torch.cat(ref_logprobs)
    kl = kl_penalty(logprobs, ref, kind="kl") * batch.gen_mask  # (E, N)
    return ScoredBatch(logprobs, values, ref, kl)
