"""Scoring a rollout before a policy-gradient update (behaviour log-probs and values, reference log-probs,
KL), and the minibatches the update reads.

Token-level rollouts record the behaviour log-probs and values while acting; sequence-level rollouts
(``generate``) do not, so they are computed here, in the forward passes over whole episodes that also give the
reference log-probs. Both go through :func:`agents.policy.evaluate_completions`. An update then loops over
:func:`rollout_samples`: one :class:`RolloutSamples` per minibatch, with its advantages and returns (SB3's
``RolloutBufferSamples``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

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
            reference, ids, mask, n_new=n_new, n_actions=n_actions, sampling=sampling, group_ids=groups
        )
        ref_logprobs.append(ref.logprobs)
        if recompute:
            scored = evaluate_completions(
                policy, ids, mask, n_new=n_new, n_actions=n_actions, sampling=sampling, group_ids=groups
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


class RolloutSamples(NamedTuple):
    """One minibatch of a scored rollout: everything a policy-gradient loss reads (SB3's
    ``RolloutBufferSamples``). b episodes, each a row of the observation layout."""

    input_ids: torch.Tensor  # (b, P+N) int64
    attention_mask: torch.Tensor  # (b, P+N) int64
    gen_mask: torch.Tensor  # (b, N) float32, 1 on the agent's generated tokens
    old_logprobs: torch.Tensor  # (b, N) behaviour log-probs (ScoredBatch.old_logprobs)
    old_values: torch.Tensor  # (b, N) behaviour values
    advantages: torch.Tensor  # (b, N) per token (PPO), or (b,) per episode (REINFORCE)
    returns: torch.Tensor  # as advantages: the value targets (PPO), or the episode returns (REINFORCE)
    group_ids: torch.Tensor | None  # (b,) prompt groups whose prompt is computed once; None: no sharing
    ref_logprobs: torch.Tensor  # (b, N) the reference's log-probs (ScoredBatch.ref_logprobs)
    weights: torch.Tensor | None = None  # (b, N) rollout-correction weights (GRPO), None: all 1


def rollout_samples(
    batch: RolloutBatch,
    scored: ScoredBatch,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    minibatch_size: int,
    shared_groups: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> Iterator[RolloutSamples]:
    """One shuffled pass over a scored rollout in minibatches of whole prompt groups
    (:func:`agents.rollout.minibatches`; its random draw happens when the first minibatch is taken).

    >>> from agents.rollout import RolloutBatch
    >>> ids, zeros = torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 2)
    >>> batch = RolloutBatch(ids, ids, zeros, None, None, torch.zeros(3), torch.arange(3), zeros)
    >>> scored = ScoredBatch(zeros, zeros, zeros, zeros, None)
    >>> [len(s.advantages) for s in rollout_samples(batch, scored, torch.arange(3.0), torch.zeros(3), 2)]
    [2, 1]
    """
    for mb in minibatches(len(batch.rewards), minibatch_size, shared_groups):
        yield RolloutSamples(
            input_ids=batch.input_ids[mb],
            attention_mask=batch.attention_mask[mb],
            gen_mask=batch.gen_mask[mb],
            old_logprobs=scored.old_logprobs[mb],
            old_values=scored.old_values[mb],
            advantages=advantages[mb],
            returns=returns[mb],
            group_ids=None if shared_groups is None else shared_groups[mb],
            ref_logprobs=scored.ref_logprobs[mb],
            weights=None if weights is None else weights[mb],
        )
