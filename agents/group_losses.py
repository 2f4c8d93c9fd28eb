"""Pure math of the group-relative policy-gradient family: GRPO, Dr. GRPO, DAPO, BNPO and GSPO.

Each function takes and returns torch tensors and holds no state. ``mask`` is (E, N), 1 on the tokens the
agent generated. The names follow TRL's ``GRPOConfig`` where one exists, so that a user can carry settings
across:

- advantages relative to the other completions of the same prompt (:func:`group_advantages`, scaled by the
  group's or the batch's reward std, or not at all: ``scale_rewards``);
- the clipped surrogate with separate lower and upper clip ranges (:func:`clipped_surrogate`; DAPO's
  "clip-higher" is ``epsilon_high > epsilon``), on token ratios or on GSPO's sequence ratio
  (:func:`sequence_log_ratio`);
- four ways to average the per-token loss (:func:`aggregate_loss`: ``loss_type``);
- the k3 estimator of KL to the reference as a loss term (:func:`k3_kl`);
- DAPO's dynamic sampling (:func:`informative_groups`) and soft overlong punishment
  (:func:`overlong_penalty`);
- importance weights for the mismatch between the copy that sampled and the network that trains
  (:func:`rollout_correction`).

>>> import torch
>>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]), scale="none")
tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from agents.losses import masked_mean

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
ROLLOUT_CORRECTIONS = ("none", "token_tis", "sequence_tis", "token_mask", "sequence_mask")
STD_EPS = 1e-4  # added to the std before dividing (TRL's value): a group of near-equal rewards stays finite


def _group_stat(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode mean and unbiased std of ``values`` over its group (std 0 for groups of one)."""
    n_groups = int(group_ids.max()) + 1 if len(group_ids) else 0
    zeros = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    counts = zeros.index_add(0, group_ids, torch.ones_like(values))
    means = zeros.index_add(0, group_ids, values) / counts.clamp(min=1)
    squares = zeros.index_add(0, group_ids, (values - means[group_ids]) ** 2)
    stds = (squares / (counts - 1).clamp(min=1)).sqrt()
    return means[group_ids], stds[group_ids]


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """(E,) advantages: each reward minus the mean reward of its group (the completions of one prompt).

    ``scale`` divides by a standard deviation (unbiased, plus 1e-4): ``"group"`` the group's (GRPO, Shao et
    al. 2024), ``"batch"`` the whole batch's (Hu et al. 2025, REINFORCE++; less biased towards easy or hard
    prompts), ``"none"`` no scaling (Dr. GRPO, Liu et al. 2025: the std division over-weights prompts whose
    rewards barely differ).

    >>> rewards, groups = torch.tensor([1.0, 0.0, 3.0, 1.0]), torch.tensor([0, 0, 1, 1])
    >>> group_advantages(rewards, groups, scale="none")  # group means 0.5 and 2.0
    tensor([ 0.5000, -0.5000,  1.0000, -1.0000])
    >>> group_advantages(rewards, groups, scale="group")  # group stds 0.7071 and 1.4142
    tensor([ 0.7070, -0.7070,  0.7071, -0.7071])
    >>> group_advantages(rewards, groups, scale="batch")  # batch std 1.2583
    tensor([ 0.3973, -0.3973,  0.7947, -0.7947])
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale!r} is not known; use one of {SCALE_REWARDS}")
    means, stds = _group_stat(rewards, group_ids)
    advantages = rewards - means
    if scale == "group":
        return advantages / (stds + STD_EPS)
    if scale == "batch":
        return advantages / (rewards.std() + STD_EPS) if len(rewards) > 1 else advantages
    return advantages


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(E,) bool: True for episodes whose group's rewards are not all equal (DAPO's dynamic sampling, Yu et
    al. 2025). A group of equal rewards has zero group-relative advantage: it adds no gradient, only noise
    in the loss's normaliser.

    >>> informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0]), torch.tensor([0, 0, 1, 1, 2]))
    tensor([False, False,  True,  True, False])
    """
    _, stds = _group_stat(rewards, group_ids)
    return stds > 0


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """(E,) DAPO's soft overlong punishment: 0 up to ``max_length - buffer`` tokens, then falling linearly to
    -1 at ``max_length`` (and -1 beyond). Added to the task reward, it teaches the length budget without the
    cliff of a truncation.

    >>> overlong_penalty(torch.tensor([4, 6, 7, 8]), max_length=8, buffer=4)
    tensor([ 0.0000, -0.5000, -0.7500, -1.0000])
    """
    start = max_length - buffer
    over = (lengths.float() - start).clamp(min=0) / max(buffer, 1)
    return 0.0 - over.clamp(max=1.0)  # 0.0 - x: no negative zeros


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level log importance ratio (Zheng et al. 2025): the mean of the token log-ratios of
    each completion, so the ratio is the geometric mean of the token ratios, (E, N) -> (E, 1).

    >>> ratio = sequence_log_ratio(torch.log(torch.tensor([[2.0, 0.5, 8.0]])), torch.tensor([[1, 1, 0]]))
    >>> ratio.exp()   # sqrt(2 * 0.5); the padded 8.0 does not count
    tensor([[1.]])
    """
    return masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)


class Surrogate(NamedTuple):
    """Per-token clipped-surrogate losses and the statistics logged about them."""

    loss: torch.Tensor  # (E, N) -min(r A, clip(r) A), to be averaged by aggregate_loss
    clipped_low: torch.Tensor  # (E, N) bool: the ratio is below 1 - epsilon and the clip is active
    clipped_high: torch.Tensor  # (E, N) bool: the ratio is above 1 + epsilon_high and the clip is active


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float, epsilon_high: float
) -> Surrogate:
    """PPO's clipped surrogate as a per-token loss, with the ratio clipped to
    ``[1 - epsilon, 1 + epsilon_high]``. ``epsilon_high > epsilon`` is DAPO's clip-higher: a token whose
    probability is small can grow further before the clip stops its gradient, which keeps entropy up.
    ``log_ratio`` is (E, N) for token ratios or (E, 1) for GSPO's sequence ratio; ``advantages`` (E, 1)
    or (E, N).

    >>> s = clipped_surrogate(torch.log(torch.tensor([[1.5, 0.5, 1.25]])), torch.tensor([[1.0]]), 0.2, 0.28)
    >>> s.loss   # ratios 1.5 (clipped to 1.28), 0.5 (not clipped: a positive advantage), 1.25 (inside)
    tensor([[-1.2800, -0.5000, -1.2500]])
    >>> s.clipped_high.tolist(), s.clipped_low.tolist()
    ([[True, False, False]], [[False, False, False]])
    """
    ratio = log_ratio.exp()
    clipped_ratio = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    with torch.no_grad():
        high = (ratio > 1.0 + epsilon_high) & (advantages > 0)
        low = (ratio < 1.0 - epsilon) & (advantages < 0)
    shape = torch.broadcast_shapes(loss.shape, log_ratio.shape)
    return Surrogate(loss.expand(shape), low.expand(shape), high.expand(shape))


def aggregate_loss(
    token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_new_tokens: int, token_count: float
) -> torch.Tensor:
    """Average the (E, N) per-token loss into one number, the way ``loss_type`` says:

    - ``"grpo"``: the mean over each completion's tokens, then over completions (Shao et al. 2024): a
      token of a short completion weighs more than one of a long completion;
    - ``"dr_grpo"``: the sum over tokens divided by E x ``max_new_tokens`` (Liu et al. 2025): a constant
      normaliser, no length bias;
    - ``"dapo"``: the sum over tokens divided by ``token_count``, the number of generated tokens of the
      whole update batch (all minibatches of the step, over all ranks, divided by the ranks: Yu et al. 2025):
      every token weighs the same;
    - ``"bnpo"``: the sum over tokens divided by this minibatch's own token count.

    >>> loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    >>> [round(aggregate_loss(loss, mask, t, max_new_tokens=4, token_count=10).item(), 4) for t in LOSS_TYPES]
    [2.5, 1.0, 0.8, 1.6]
    """
    mask = mask.to(token_loss.dtype)
    total = (token_loss * mask).sum()
    if loss_type == "grpo":
        return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return total / (token_loss.shape[0] * max_new_tokens)
    if loss_type == "dapo":
        return total / max(token_count, 1.0)
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1.0)
    raise ValueError(f"loss_type={loss_type!r} is not known; use one of {LOSS_TYPES}")


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): ``exp(d) - d - 1`` with ``d = ref - logprobs``
    (Schulman 2020); non-negative and unbiased under the policy's samples, GRPO's KL loss term.

    >>> k3_kl(torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.5, 0.5])))
    tensor([0.0000, 0.3069])
    """
    delta = ref_logprobs - logprobs
    return delta.exp() - delta - 1.0


class Correction(NamedTuple):
    """Importance weights for the rollout/train mismatch and the raw ratio's statistics (before clipping)."""

    weights: torch.Tensor  # (E, N), detached, 0 on masked tokens
    ratio_min: float
    ratio_mean: float
    ratio_max: float
    masked_fraction: float  # share of the generated tokens whose weight the correction set to 0


def rollout_correction(
    train_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    threshold: float,
) -> Correction:
    """Weights that correct for tokens sampled by a copy of the policy (a bf16 copy, a merged-LoRA copy)
    whose probabilities differ from the network that trains: the ratio ``pi_train / pi_rollout`` of the
    behaviour log-probs, per token (``token_*``) or per completion (``sequence_*``, the product over its
    tokens), either truncated at ``threshold`` (``*_tis``: truncated importance sampling, Ionides 2008; Yao et
    al. 2025 for the rollout/train mismatch) or used to drop tokens or completions whose ratio leaves
    ``[1/threshold, threshold]`` (``*_mask``, weight 1 otherwise). ``"none"``: weights 1.

    >>> train = torch.log(torch.tensor([[0.5, 0.3]]))
    >>> rollout = torch.log(torch.tensor([[0.25, 0.3]]))
    >>> rollout_correction(train, rollout, torch.ones(1, 2), "token_tis", threshold=1.5).weights
    tensor([[1.5000, 1.0000]])
    >>> rollout_correction(train, rollout, torch.ones(1, 2), "token_mask", threshold=1.5).weights
    tensor([[0., 1.]])
    >>> rollout_correction(train, rollout, torch.ones(1, 2), "sequence_tis", threshold=4.0).weights
    tensor([[2., 2.]])
    """
    if mode not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"rollout_correction={mode!r} is not known; use one of {ROLLOUT_CORRECTIONS}")
    with torch.no_grad():
        real = mask > 0
        log_ratio = (train_logprobs - rollout_logprobs) * real
        if mode.startswith("sequence"):
            log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
        ratio = log_ratio.exp()
        if mode == "none":
            weights = torch.ones_like(ratio)
        elif mode.endswith("tis"):
            weights = ratio.clamp(max=threshold)
        else:
            inside = (ratio <= threshold) & (ratio >= 1.0 / threshold)
            weights = inside.to(ratio.dtype)
        weights = weights * real
        seen = ratio[real] if bool(real.any()) else torch.ones(1)
        dropped = float(((weights == 0) & real).sum() / real.sum().clamp(min=1))
    return Correction(weights, float(seen.min()), float(seen.mean()), float(seen.max()), dropped)


class GroupLoss(NamedTuple):
    """One minibatch's GRPO-family loss and the statistics logged about it."""

    loss: torch.Tensor  # scalar, to minimise
    clip_low: torch.Tensor  # share of generated tokens clipped below 1 - epsilon
    clip_high: torch.Tensor  # ... above 1 + epsilon_high
    kl: torch.Tensor  # mean k3 KL to the reference over generated tokens (0 without a reference)


def group_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float,
    epsilon_high: float,
    importance_sampling_level: str = "token",
    loss_type: str = "dapo",
    max_new_tokens: int,
    token_count: float,
    weights: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
) -> GroupLoss:
    """The loss of GRPO and its variants for (E, N) log-probs of the current network, the behaviour log-probs
    ``old_logprobs`` and (E,) ``advantages`` (or (E, N): turn-level credit): the clipped surrogate on token
    ratios or on the sequence ratio (``importance_sampling_level``), times the rollout-correction ``weights``
    (E, N) if given, plus ``beta`` times the k3 KL to ``ref_logprobs``, averaged by ``loss_type``
    (:func:`aggregate_loss`).

    >>> logprobs, old = torch.log(torch.tensor([[2.0, 0.5]])), torch.zeros(1, 2)
    >>> args = dict(epsilon=0.2, epsilon_high=0.28, loss_type="bnpo", max_new_tokens=2, token_count=2)
    >>> group_policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2), **args).loss  # -(1.28+0.5)/2
    tensor(-0.8900)
    >>> seq = group_policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2),
    ...                         importance_sampling_level="sequence", **args)
    >>> seq.loss   # the geometric mean of the ratios, sqrt(2 * 0.5) = 1, on both tokens
    tensor(-1.)
    """
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"importance_sampling_level={importance_sampling_level!r} is not known; "
            f"use one of {IMPORTANCE_SAMPLING_LEVELS}"
        )
    log_ratio = logprobs - old_logprobs  # (E, N)
    if importance_sampling_level == "sequence":
        log_ratio = sequence_log_ratio(log_ratio, mask)  # (E, 1)
    per_token = advantages if advantages.dim() == 2 else advantages[:, None]  # (E, N) per turn, or (E, 1)
    surrogate = clipped_surrogate(log_ratio, per_token, epsilon, epsilon_high)
    token_loss = surrogate.loss.expand_as(logprobs)  # (E, N)
    if weights is not None:
        token_loss = token_loss * weights
    kl = torch.zeros((), device=logprobs.device)
    if ref_logprobs is not None:
        per_token_kl = k3_kl(logprobs, ref_logprobs)  # (E, N)
        kl = masked_mean(per_token_kl.detach(), mask)
        if beta > 0:
            token_loss = token_loss + beta * per_token_kl
    loss = aggregate_loss(token_loss, mask, loss_type, max_new_tokens, token_count)
    low = masked_mean(surrogate.clipped_low.expand_as(logprobs).float(), mask)
    high = masked_mean(surrogate.clipped_high.expand_as(logprobs).float(), mask)
    return GroupLoss(loss, low, high, kl)
