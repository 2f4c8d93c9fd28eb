"""Turn-level credit for multi-turn envs: one advantage per agent turn, with a baseline per turn index.

In a conversation (``TextChat-v0``) the agent's tokens come in turns, and rewards arrive at the end of a
turn (``RolloutBatch.token_rewards``, on the turn's last agent token). Token-level GAE (PPO's default) and the
per-episode advantage of REINFORCE / GRPO give every turn the same signal, or one that a critic must learn to
split. Turn-level credit (``turn_level_credit=True`` on PPO, REINFORCE and GRPO) instead gives each turn the
discounted return from that turn on, minus a baseline for its turn index, and every agent token of the turn
that advantage:

- a **turn** is a maximal run of consecutive agent tokens (``gen_mask``; the other party's tokens separate
  turns), numbered k = 0, 1, ... (:func:`turn_ids`);
- the **turn reward** r_k is the sum of the token rewards over the turn's tokens (the task's reward for that
  message, minus the KL penalty of its tokens where the agent puts one in the reward);
- the **turn return** is G_k = r_k + turn_gamma * G_{k+1}, 0 after the episode's last turn
  (:func:`turn_returns`);
- the **advantage** (:func:`turn_baseline`) is, with ``baseline="leave_one_out"``,
  A_k = G_k - mean of G_k over the *other* episodes of the group (the prompt's group, or the batch) that
  reached turn k; with ``baseline="batch_norm"``, A_k = (G_k - mean_k) / std_k over all episodes of the batch
  that reached turn k (GEM's return batch normalisation, Liu et al. 2025, applied per turn index).

Why the leave-one-out baseline stays unbiased when the policy decides how long an episode lasts: the policy
gradient is E[sum_k sum_{i in turn k} grad log pi(a_i | s_i) (G_k - b_k)], and a baseline term vanishes in
expectation when b_k is independent of the action a_i given the state s_i (Williams 1992; Sutton & Barto
2018, section 13.4; Greensmith et al. 2004, for state-dependent baselines). The turn index k is part of the
state (the conversation so far), and b_k is built only from other episodes, drawn independently with the
same policy (Kool et al. 2019; Ahmadian et al. 2024 for the leave-one-out form). Whether those other episodes
reached turn k depends on their actions, never on this episode's. The construction that is *not* unbiased
normalises each turn's reward per turn index and sums the normalised rewards into a return: the baseline it
subtracts then has one term per turn the episode itself went on to play, so it depends on the episode's own
later actions (its stopping turn) and acts as a hidden bonus or cost per extra turn (verl RFC #7244,
https://github.com/verl-project/verl/issues/7244). Here one baseline b_k is subtracted from the whole
return G_k. ``batch_norm`` includes the episode's own return in mean_k and std_k, a bias of order 1/n
(batch size n) that GRPO's group normalisation shares; it buys scale-free advantages. ``turn_gamma < 1``
optimises the discounted objective, as ``gamma`` does for GAE.

>>> mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [1, 0, 1, 0, 0]])
>>> rewards = torch.tensor([[0.0, 0.5, 0, 1.0, 0], [0.0, 0, 0, 0, 0], [1.0, 0, 0.0, 0, 0]])
>>> turn_advantages(rewards, mask, torch.zeros(3, dtype=torch.long), turn_gamma=0.5)
tensor([[ 0.5000,  0.5000,  0.0000,  1.0000,  0.0000],
        [-1.0000,  0.0000,  0.0000,  0.0000,  0.0000],
        [ 0.5000,  0.0000, -1.0000,  0.0000,  0.0000]])

(Turn returns: episode 0 has G_0 = 0.5 + 0.5 * 1 = 1, G_1 = 1; episode 1 has G_0 = 0; episode 2 has G_0 = 1,
G_1 = 0. At turn 0 the others' means are 0.5, 1 and 0.5; at turn 1 episodes 0 and 2 are each other's
baseline: 1 - 0 and 0 - 1.)
"""

from __future__ import annotations

import torch

TURN_BASELINES = ("leave_one_out", "batch_norm")
STD_EPS = 1e-6


def turn_ids(mask: torch.Tensor) -> torch.Tensor:
    """(E, N) turn index of each agent token (0 for the first turn), -1 where ``mask`` is 0. A turn is a run
    of consecutive agent tokens.

    >>> turn_ids(torch.tensor([[1, 1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 0, 0, 1]]))
    tensor([[ 0,  0, -1,  1, -1,  2,  2],
            [-1,  0,  0, -1, -1, -1,  1]])
    """
    agent = mask > 0  # (E, N)
    before = torch.zeros_like(agent)
    before[:, 1:] = agent[:, :-1]
    starts = agent & ~before  # the first token of each turn
    ids = starts.long().cumsum(-1) - 1
    return torch.where(agent, ids, torch.full_like(ids, -1))


def turn_returns(
    token_rewards: torch.Tensor, mask: torch.Tensor, turn_gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(returns, reached)``, both (E, K) with K the most turns of any episode: the discounted return from
    each turn on, G_k = r_k + turn_gamma * G_{k+1}, where r_k sums the (E, N) ``token_rewards`` over turn k's
    agent tokens; ``reached`` is True where the episode has a turn k (returns are 0 elsewhere).

    >>> turn_returns(torch.tensor([[0.0, 1.0, 0.0, 2.0]]), torch.tensor([[1, 1, 0, 1]]), turn_gamma=0.5)
    (tensor([[2., 2.]]), tensor([[True, True]]))
    """
    ids = turn_ids(mask)  # (E, N)
    n_turns = int(ids.max()) + 1 if ids.numel() else 0
    E = token_rewards.shape[0]
    rewards = torch.zeros(E, max(n_turns, 1), dtype=token_rewards.dtype, device=token_rewards.device)
    agent = ids >= 0
    rewards.scatter_add_(1, ids.clamp(min=0), token_rewards * agent.to(token_rewards.dtype))  # (E, K)
    tokens = torch.zeros(E, max(n_turns, 1), dtype=torch.long, device=ids.device)
    reached = tokens.scatter_add_(1, ids.clamp(min=0), agent.long()) > 0  # (E, K)
    returns = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[:, 0])
    for k in reversed(range(rewards.shape[1])):
        following = (rewards[:, k] + turn_gamma * following) * reached[:, k]
        returns[:, k] = following
    return returns[:, :n_turns], reached[:, :n_turns]


def turn_baseline(
    returns: torch.Tensor, reached: torch.Tensor, group_ids: torch.Tensor, baseline: str = "leave_one_out"
) -> torch.Tensor:
    """(E, K) advantages from (E, K) turn ``returns``: each minus a baseline for its turn index.

    ``"leave_one_out"``: the mean return at turn k of the *other* episodes with the same ``group_ids`` (E,)
    that reached turn k (0 when none did); ``"batch_norm"``: (G_k - mean_k) / std_k over every episode of
    the batch that reached turn k (``group_ids`` unused). 0 where ``reached`` is False.

    >>> returns, reached = torch.tensor([[1.0, 2.0], [3.0, 0.0], [4.0, 0.0]]), torch.tensor(
    ...     [[True, True], [True, False], [True, False]])
    >>> turn_baseline(returns, reached, torch.tensor([0, 0, 1]))  # episode 2 is alone in its group
    tensor([[-2.,  2.],
            [ 2.,  0.],
            [ 4.,  0.]])
    >>> turn_baseline(returns, reached, torch.tensor([0, 0, 1]), "batch_norm")  # turn 0: mean 8/3, std 1.53
    tensor([[-1.0911,  0.0000],
            [ 0.2182,  0.0000],
            [ 0.8729,  0.0000]])
    """
    if baseline not in TURN_BASELINES:
        raise ValueError(f"turn baseline={baseline!r} is not known; use one of {TURN_BASELINES}")
    weight = reached.to(returns.dtype)  # (E, K)
    if baseline == "batch_norm":
        count = weight.sum(0).clamp(min=1)  # (K,)
        mean = (returns * weight).sum(0) / count
        var = (((returns - mean) ** 2) * weight).sum(0) / (count - 1).clamp(min=1)
        return torch.where(reached, (returns - mean) / (var.sqrt() + STD_EPS), torch.zeros_like(returns))
    n_groups = int(group_ids.max()) + 1
    K = returns.shape[1]
    sums = torch.zeros(n_groups, K, dtype=returns.dtype, device=returns.device)
    sums.index_add_(0, group_ids, returns * weight)  # (G, K)
    counts = torch.zeros_like(sums).index_add_(0, group_ids, weight)  # (G, K)
    others = counts[group_ids] - weight  # (E, K) other episodes of the group that reached turn k
    mean = (sums[group_ids] - returns * weight) / others.clamp(min=1)
    advantages = returns - torch.where(others > 0, mean, torch.zeros_like(mean))
    return torch.where(reached, advantages, torch.zeros_like(returns))


def turn_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    turn_gamma: float = 1.0,
    baseline: str = "leave_one_out",
) -> torch.Tensor:
    """(E, N) advantages: every agent token (``mask``) gets its turn's advantage (:func:`turn_returns` then
    :func:`turn_baseline`), 0 elsewhere. See the module docstring for the estimator and why it is unbiased.

    >>> groups = torch.zeros(2, dtype=torch.long)
    >>> turn_advantages(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2), groups)
    tensor([[ 1.,  1.],
            [-1., -1.]])
    """
    returns, reached = turn_returns(token_rewards, mask, turn_gamma)  # (E, K)
    advantages = turn_baseline(returns, reached, group_ids, baseline)  # (E, K)
    ids = turn_ids(mask)  # (E, N)
    if advantages.shape[1] == 0:
        return torch.zeros_like(token_rewards)
    per_token = advantages.gather(1, ids.clamp(min=0))  # (E, N)
    return torch.where(ids >= 0, per_token, torch.zeros_like(per_token))
