"""Pure math for the policy-gradient agents: GAE, masked statistics, PPO losses, the KL penalty, adaptive KL.

Every function takes and returns torch tensors and holds no state, except :class:`AdaptiveKLController`,
whose state is two floats (so a checkpoint can restore it exactly). Masks are float or bool tensors of the
same shape as the data, 1 where a token is real.

>>> import torch
>>> compute_gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.ones(1, 2), gamma=1.0, lam=1.0)
(tensor([[1., 1.]]), tensor([[1., 1.]]))
"""

from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (over all of them, or along ``dim``).

    >>> masked_mean(torch.tensor([1.0, 2.0, 100.0]), torch.tensor([1, 1, 0]))
    tensor(1.5000)
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``values`` over the positions where ``mask`` is 1.

    >>> masked_var(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
    tensor(2.)
    """
    mean = masked_mean(values, mask)
    count = mask.to(values.dtype).sum()
    var = masked_mean((values - mean) ** 2, mask)
    return var * count / (count - 1).clamp(min=1.0)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``values`` to zero mean and unit variance over the masked positions (1e-8 guards a zero var).

    With ``shift_mean=False`` the mean is added back (only the scale changes). Padding is set to 0.

    >>> masked_whiten(torch.tensor([1.0, 3.0, 7.0]), torch.tensor([1, 1, 0]))
    tensor([-0.7071,  0.7071,  0.0000])
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded episodes that all end within the tensor.

    ``rewards``, ``values`` and ``mask`` are (E, T): E episodes of at most T tokens, real tokens first.
    The value after the last real token is 0 (the episode is over). Masked slots between real ones (the
    other party's turns of a conversation) are skipped: each real token's successor is the next real one.
    Returns ``(advantages, returns)``, both (E, T) and 0 on padding; ``returns = advantages + values``.

    >>> adv, ret = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]),
    ...                        torch.ones(1, 3), gamma=0.5, lam=0.5)
    >>> adv
    tensor([[-0.2812, -0.1250,  0.5000]])
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(next_advantage)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        # a masked slot inside an episode (another party's token in a conversation) is skipped: the agent's
        # next real token is the next step, so advantages flow across the other party's turns
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        real = mask[:, t] > 0
        advantages[:, t] = advantage * mask[:, t]
        next_advantage = torch.where(real, advantage, next_advantage)
        next_value = torch.where(real, values[:, t], next_value)
    return advantages, (advantages + values) * mask


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate objective as a loss (to minimise), averaged over masked tokens.

    Returns ``(loss, clip_fraction, approx_kl)``; ``approx_kl`` is the low-variance estimator
    ``mean((r - 1) - log r)`` of KL(old || new) (Schulman's k3).

    >>> loss, frac, kl = ppo_clip_loss(torch.log(torch.tensor([1.5, 0.5])), torch.zeros(2),
    ...                                torch.tensor([1.0, 1.0]), torch.ones(2), clip_range=0.2)
    >>> loss, frac   # ratios 1.5 (clipped to 1.2) and 0.5: -(1.2 + 0.5) / 2
    (tensor(-0.8500), tensor(1.))
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_range).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def value_clip_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_vf: float | None,
) -> torch.Tensor:
    """Clipped value loss ``0.5 * max((v - R)^2, (v_clipped - R)^2)``; MSE/2 if ``clip_range_vf`` is None.

    >>> value_clip_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.ones(1), 0.5)
    tensor(2.)
    """
    unclipped = (values - returns) ** 2
    if clip_range_vf is None:
        return 0.5 * masked_mean(unclipped, mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (..., V) -> (...).

    >>> entropy_from_logits(torch.zeros(1, 4))   # uniform over 4: log 4
    tensor([1.3863])
    >>> entropy_from_logits(torch.tensor([[0.0, 0.0, -torch.inf]]))   # a masked token adds nothing: log 2
    tensor([0.6931])
    """
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1)  # 0 * log 0 = 0


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``tokens`` (...,) under ``logits`` (..., V).

    >>> logprobs_from_logits(torch.zeros(1, 4), torch.tensor([2]))
    tensor([-1.3863])
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


KL_KINDS = ("kl", "abs", "mse", "full")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Per-token penalty from the log-ratio ``logprobs - ref_logprobs`` of policy to reference (torch).

    ``kind`` picks the estimator of ``KL(policy || reference)`` at each token:

    - ``"kl"``: ``logprobs - ref_logprobs`` (k1; unbiased, can be negative; DeepSpeed-Chat's reward term);
    - ``"abs"``: ``|logprobs - ref_logprobs|``;
    - ``"mse"``: ``0.5 * (logprobs - ref_logprobs) ** 2`` (k2);
    - ``"full"``: the exact KL over the vocabulary. Here both arguments are full log-distributions of shape
      ``(..., vocab)`` and the result has shape ``(...)``: ``sum_v p(v) * (logprobs[v] - ref_logprobs[v])``.

    For the first three kinds the arguments are the log-probs of the sampled tokens, ``(B, T)``, and the
    result has the same shape. The agent usually subtracts ``beta * kl_penalty(...)`` from the per-token
    reward; mask padding yourself.

    >>> logprobs, ref_logprobs = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    >>> kl_penalty(logprobs, ref_logprobs).tolist()
    [[0.5, -1.0]]
    >>> kl_penalty(logprobs, ref_logprobs, kind="abs").tolist()
    [[0.5, 1.0]]
    >>> kl_penalty(logprobs, ref_logprobs, kind="mse").tolist()
    [[0.125, 0.5]]
    >>> p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.25, 0.75]).log()
    >>> round(kl_penalty(p, q, kind="full").item(), 4)  # 0.5*ln 2 + 0.5*ln(2/3)
    0.1438
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r} is not known; use one of {KL_KINDS}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs has shape {tuple(logprobs.shape)} but ref_logprobs has {tuple(ref_logprobs.shape)}; "
            "pass both for the same tokens"
        )
    log_ratio = logprobs - ref_logprobs
    if kind == "kl":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind == "mse":
        return 0.5 * log_ratio.square()
    return torch.nn.functional.kl_div(ref_logprobs, logprobs, log_target=True, reduction="none").sum(-1)


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences".

    After each rollout, ``update(kl, n_steps)`` moves the coefficient towards keeping the per-episode KL
    near ``target``: ``error = clip(kl / target - 1, -0.2, 0.2)``; ``coef *= 1 + error * n_steps / horizon``.
    With ``target=None`` the coefficient stays fixed.

    >>> ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    >>> ctl.update(current_kl=12.0, n_steps=1000)   # KL too high: coefficient grows by 2 %
    >>> round(ctl.value, 4)
    0.102
    """

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int = 10_000) -> None:
        self.value = float(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        value, target, horizon = state["value"], state["target"], state["horizon"]
        numbers = [v for v in (value, target, horizon) if v is not None]
        if any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers
        ):
            raise ValueError(f"extra.kl_ctl {state} must hold finite numbers")
        if value < 0 or (target is not None and target <= 0) or horizon <= 0 or int(horizon) != horizon:
            raise ValueError(
                f"extra.kl_ctl {state}: need value >= 0, target > 0 or null, a whole horizon > 0"
            )
        self.value, self.target, self.horizon = float(value), target, int(horizon)
