"""The Q-learning math of :class:`~agents.dqn.DQN`: TD targets, the conservative regulariser, exploration.

Q-values are (E, N, V): for each of E episodes, Q(s_t, .) over the vocabulary before each of its N generated
tokens. Targets are n-step returns bootstrapped with double DQN; the regulariser is a CQL term towards the
reference LM; exploration mixes the greedy Q token with a sample of the reference LM (epsilon-greedy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def n_step_targets(
    rewards: torch.Tensor, bootstrap: torch.Tensor, mask: torch.Tensor, gamma: float, n_steps: int
) -> torch.Tensor:
    """n-step TD targets over right-padded episodes that end (terminally) at their last real token.

    ``rewards[e, t]`` is the reward after token t, ``bootstrap[e, t]`` the value of the state *before* token t
    and ``mask`` 1 on real tokens, all (E, N). Target of token t:
    ``sum_{k<n} gamma^k r_{t+k} + gamma^n bootstrap_{t+n}``, where terms past the episode end are 0.

    >>> n_step_targets(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[5.0, 6.0, 7.0]]), torch.ones(1, 3),
    ...                gamma=0.5, n_steps=2)   # 0.25 * 7; 0.5 * 1 (no bootstrap past the end); 1
    tensor([[1.7500, 0.5000, 1.0000]])
    """
    mask = mask.to(rewards.dtype)
    n_new = rewards.shape[1]
    rewards, bootstrap = rewards * mask, bootstrap * mask
    targets = torch.zeros_like(rewards)
    for k in range(min(n_steps, n_new)):
        targets[:, : n_new - k] += gamma**k * rewards[:, k:]
    if n_steps < n_new:
        targets[:, : n_new - n_steps] += gamma**n_steps * bootstrap[:, n_steps:]
    return targets * mask


def double_dqn_values(online_q: torch.Tensor, target_q: torch.Tensor) -> torch.Tensor:
    """Q_target(s, argmax_a Q_online(s, a)) for (..., V) Q-values -> (...).

    >>> double_dqn_values(torch.tensor([[1.0, 3.0]]), torch.tensor([[10.0, 2.0]]))
    tensor([2.])
    """
    return target_q.gather(-1, online_q.argmax(-1, keepdim=True)).squeeze(-1)


def conservative_penalty(q: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """CQL towards the reference: ``logsumexp_a Q(s, a) - sum_a pi_ref(a|s) Q(s, a)``, mean over states.

    Equals the cross-entropy of softmax(Q) against pi_ref, i.e. ``KL(pi_ref || softmax Q)`` plus a constant.

    >>> conservative_penalty(torch.zeros(1, 2), torch.log(torch.tensor([[0.5, 0.5]])))   # log 2
    tensor(0.6931)
    """
    return (torch.logsumexp(q, -1) - (ref_logprobs.exp() * q).sum(-1)).mean()


def episode_td_targets(
    online_q: torch.Tensor,
    target_q: torch.Tensor,
    gen_mask: torch.Tensor,
    episode_rewards: torch.Tensor,
    gamma: float,
    n_steps: int,
) -> torch.Tensor:
    """n-step double-DQN targets (E, N) for episodes whose one reward, ``episode_rewards`` (E,), follows their
    last token; ``online_q`` and ``target_q`` (E, N, V) are the online and target networks' Q-values.

    >>> q = torch.zeros(1, 2, 2)   # the target network values every token at 1; the reward 3 comes last
    >>> episode_td_targets(q, q + 1, torch.ones(1, 2), torch.tensor([3.0]), gamma=0.5, n_steps=1)
    tensor([[0.5000, 3.0000]])
    """
    bootstrap = double_dqn_values(online_q, target_q)  # (E, N)
    last = (gen_mask.sum(-1).long() - 1).clamp(min=0)  # (E,) index of each episode's last token
    rewards = torch.zeros_like(gen_mask)
    rewards[torch.arange(len(last)), last] = episode_rewards
    return n_step_targets(rewards, bootstrap, gen_mask, gamma, n_steps)


def epsilon_greedy(
    q: torch.Tensor, ref_logits: torch.Tensor, epsilon: float, warpers: Sequence[Any] = ()
) -> torch.Tensor:
    """(B,) tokens: with probability ``epsilon`` a sample of the reference LM's (B, V) ``ref_logits`` (after
    the transformers logits ``warpers``, e.g. top-k / top-p), else the greedy token argmax of (B, V) ``q``.

    >>> epsilon_greedy(torch.tensor([[0.0, 2.0, 1.0]]), torch.zeros(1, 3), epsilon=0.0)
    tensor([1])
    """
    greedy = q.argmax(-1)  # (B,)
    if epsilon <= 0:
        return greedy
    logits = ref_logits.float()  # (B, V)
    for warper in warpers:
        logits = warper(None, logits)
    sampled = torch.distributions.Categorical(logits=logits).sample()
    explore = torch.rand(len(greedy), device=greedy.device) < epsilon
    return torch.where(explore, sampled, greedy)
