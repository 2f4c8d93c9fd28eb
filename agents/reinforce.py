"""REINFORCE with a baseline: a moving average of returns, or leave-one-out over k samples per prompt (RLOO).

Each episode's return is its task reward minus ``kl_coef`` times its summed per-token KL to the reference
(the same penalty as PPO). The advantage is the return minus the baseline; the loss is
``-mean_tokens(advantage * log pi(token))``.

- ``baseline="moving_average"``: an exponential moving average of past batch-mean returns.
- ``baseline="rloo"`` (Ahmadian et al. 2024): the mean return of the *other* episodes with the same prompt in
  the batch. Make the env with ``group_size=k`` so each prompt is drawn k times in a row; episodes whose
  prompt appears once in the batch fall back to the moving average.
- ``turn_level_credit=True`` (multi-turn envs): one advantage per agent turn with a baseline per turn index
  instead (:mod:`agents.turn_credit`); ``baseline`` is then not used.

>>> REINFORCEConfig(baseline="rloo").baseline
'rloo'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from agents.config import PolicyGradientConfig
from agents.losses import masked_mean, masked_var
from agents.on_policy import OnPolicyAlgorithm

BASELINES = ("moving_average", "rloo")


@dataclass
class REINFORCEConfig(PolicyGradientConfig):
    """REINFORCE settings (on top of :class:`~agents.config.PolicyGradientConfig`)."""

    baseline: str = "moving_average"
    """``"moving_average"`` or ``"rloo"`` (leave-one-out over episodes that share a prompt)."""
    baseline_decay: float = 0.9
    """Decay of the moving-average baseline."""
    normalize_advantages: bool = False
    """Divide advantages by their batch standard deviation."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    keep_kv_cache: bool = False
    """Off for REINFORCE: its gradient has no importance ratio to correct for tokens drawn from a cache of
    earlier weights (with it on, LoRA at lr 1e-2 collapsed in the learning test). See
    :attr:`agents.config.PolicyGradientConfig.keep_kv_cache`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline={self.baseline!r} is not known; use one of {BASELINES}")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")


def leave_one_out_baseline(returns: torch.Tensor, group_ids: torch.Tensor, fallback: float) -> torch.Tensor:
    """For each episode the mean return of the others in its group; ``fallback`` for groups of one.

    >>> leave_one_out_baseline(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0, 0, 0, 1]), fallback=-1.0)
    tensor([ 2.5000,  2.0000,  1.5000, -1.0000])
    """
    n_groups = int(group_ids.max()) + 1
    sums = torch.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(0, group_ids, returns)
    counts = torch.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(
        0, group_ids, torch.ones_like(returns)
    )
    others = counts[group_ids] - 1
    baseline = (sums[group_ids] - returns) / others.clamp(min=1)
    return torch.where(others > 0, baseline, torch.full_like(returns, fallback))


class REINFORCE(OnPolicyAlgorithm):
    """REINFORCE (moving-average or RLOO baseline) with a DeepSpeed-backed transformer policy.

    The value head of the shared actor-critic is not used. One gradient step per minibatch, one pass over each
    rollout (the estimator is on-policy).
    """

    config_class = REINFORCEConfig
    algo_name = "REINFORCE"
    config: REINFORCEConfig

    def _setup_model(self) -> None:
        super()._setup_model()
        self.baseline_value: float | None = None

    def train(self) -> None:
        cfg = self.config
        batch, scored, shared_groups = self._score_rollout()  # shared_groups: prompts computed once per group
        returns = batch.rewards - self.kl_ctl.value * scored.kl.sum(-1)  # (E,)
        moving = self.baseline_value if self.baseline_value is not None else float(returns.mean())
        if cfg.baseline == "rloo":
            baseline = leave_one_out_baseline(returns, batch.group_ids, fallback=moving)
        else:
            baseline = torch.full_like(returns, moving)
        advantages = returns - baseline  # (E,), or (E, N) per agent turn:
        if cfg.turn_level_credit:
            token_rewards = batch.token_rewards - self.kl_ctl.value * scored.kl  # (E, N)
            advantages = self._turn_advantages(batch, token_rewards)
        if cfg.normalize_advantages and cfg.turn_level_credit:
            advantages = advantages / (masked_var(advantages, batch.gen_mask).sqrt() + 1e-8)
        elif cfg.normalize_advantages:
            advantages = advantages / (advantages.std() + 1e-8)
        self.baseline_value = cfg.baseline_decay * moving + (1 - cfg.baseline_decay) * float(returns.mean())

        losses, entropies = [], []
        for samples in self._minibatches(batch, scored, shared_groups, advantages, returns):
            ev = self._evaluate(samples)  # (b, N) log-probs and entropy, with gradients
            assert ev.entropy is not None
            mask = samples.gen_mask  # (b, N)
            entropy = masked_mean(ev.entropy, mask)
            advantage = samples.advantages if samples.advantages.dim() == 2 else samples.advantages[:, None]
            loss = -masked_mean(advantage * ev.logprobs, mask) - cfg.ent_coef * entropy
            self._gradient_step(self._with_ptx(loss))  # + ptx_coef * LM loss (PPO-ptx), if set
            losses.append(loss.item())
            entropies.append(entropy.item())
        self._n_updates += 1

        stats = {"policy_loss": losses, "entropy": entropies, "baseline": float(baseline.mean())}
        self._finish_update(scored, episodes=len(batch.rewards), stats=stats)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "baseline_value": self.baseline_value}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        baseline = state.get("baseline_value")
        if baseline is not None and (
            isinstance(baseline, bool)
            or not isinstance(baseline, (int, float))
            or not math.isfinite(baseline)
        ):
            raise ValueError(f"extra.baseline_value is {baseline!r}; expected a finite number or null")
        self.baseline_value = baseline
