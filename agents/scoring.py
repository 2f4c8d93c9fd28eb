"""Scoring a rollout before a policy-gradient update: behaviour log-probs and values, reference log-probs, KL.

Token-level rollouts record the behaviour log-probs and values while acting; sequence-level rollouts
(``generate``) do not, so they are computed here, in the forward passes over whole episodes that also give the
reference log-probs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from agents.buffer import EpisodeBatch
from agents.losses import logprobs_from_logits
from agents.policy import ActorCritic, ReferenceModel
from rewards import kl_penalty


class ScoredBatch(NamedTuple):
    """Per-token statistics of an :class:`EpisodeBatch` computed before an update, all (E, N)."""

    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor
    kl: torch.Tensor  # log-ratio to the reference, 0 on padding


@torch.no_grad()
def score_batch(
    batch: EpisodeBatch,
    policy: ActorCritic,
    reference: ReferenceModel,
    max_new_tokens: int,
    chunk_size: int,
    mask_logits: Callable[[torch.Tensor], torch.Tensor],
) -> ScoredBatch:
    """Behaviour log-probs/values (computed when ``batch`` lacks them), reference log-probs and the per-token
    KL, in forward passes over whole episodes (``chunk_size`` at a time). ``mask_logits`` hides the logits
    of tokens outside the action space."""
    n_new = max_new_tokens
    old_logprobs, old_values, ref_logprobs = [], [], []
    for start in range(0, len(batch.rewards), chunk_size):
        ids = batch.input_ids[start : start + chunk_size]  # (b, P+N)
        mask = batch.attention_mask[start : start + chunk_size]
        ref_logprobs.append(reference.logprobs(ids, mask, n_new))
        if batch.old_logprobs is None:
            logits, values = policy(ids[:, :-1], mask[:, :-1], logits_to_keep=n_new)  # (b, N, V)
            old_logprobs.append(logprobs_from_logits(mask_logits(logits), ids[:, -n_new:]))
            old_values.append(values)
    logprobs = torch.cat(old_logprobs) if batch.old_logprobs is None else batch.old_logprobs
    values = torch.cat(old_values) if batch.old_values is None else batch.old_values
    ref = torch.cat(ref_logprobs)
    kl = kl_penalty(logprobs, ref, kind="kl") * batch.gen_mask  # (E, N)
    return ScoredBatch(logprobs, values, ref, kl)
