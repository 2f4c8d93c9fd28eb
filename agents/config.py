"""Agent settings: :class:`AlgorithmConfig`, what every agent's config holds (the DeepSpeed engine reads it),
and :class:`PolicyGradientConfig`, the rollout and KL settings that PPO and REINFORCE share.

``agents.dqn.DQNConfig`` extends :class:`AlgorithmConfig` directly: DQN has no rollout size and no KL penalty.

>>> PolicyGradientConfig(minibatch_size=8).episodes_per_rollout
64
>>> PolicyGradientConfig(minibatch_size=8).micro_batch_size
8
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def check_number(name: str, value: object, example: str) -> None:
    """Raise a TypeError naming ``name`` when ``value`` is not a real number (bools and strings included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number, got {value!r} ({type(value).__name__}); e.g. {name}={example}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}; e.g. {name}={example}")


@dataclass
class AlgorithmConfig:
    """Settings every agent has: the optimizer step, gradient clipping and the completion length."""

    learning_rate: float = 1e-5
    """AdamW step size (DeepSpeed's ``optimizer.params.lr`` wins if the DeepSpeed config sets it)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (DeepSpeed ``gradient_clipping``); None disables it."""
    max_new_tokens: int | None = None
    """N, the completion slots of the observation; None reads the env attribute ``max_new_tokens``."""

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward: DeepSpeed's ``train_micro_batch_size_per_gpu``."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        check_number("learning_rate", self.learning_rate, "1e-5")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}; try 1e-5")
        if self.max_grad_norm is not None:
            check_number("max_grad_norm", self.max_grad_norm, "1.0")
            if self.max_grad_norm < 0:
                raise ValueError(
                    f"max_grad_norm must be >= 0 or None (no clipping), got {self.max_grad_norm}"
                )


@dataclass
class PolicyGradientConfig(AlgorithmConfig):
    """Settings shared by the policy-gradient agents (PPO, REINFORCE)."""

    episodes_per_rollout: int = 64
    """Finished episodes collected before each update."""
    minibatch_size: int = 16
    """Episodes per gradient step (DeepSpeed's micro batch)."""
    init_kl_coef: float = 0.05
    """Initial coefficient of the per-token KL penalty against the reference model."""
    target_kl_ref: float | None = 6.0
    """Per-episode KL to the reference the adaptive controller aims at; None keeps ``init_kl_coef`` fixed."""
    kl_horizon: int = 10_000
    """Horizon (episodes) of the adaptive KL controller."""

    @property
    def micro_batch_size(self) -> int:
        return self.minibatch_size

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.episodes_per_rollout < 1 or self.minibatch_size < 1:
            raise ValueError("episodes_per_rollout and minibatch_size must be >= 1")
        if self.minibatch_size > self.episodes_per_rollout:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) exceeds "
                f"episodes_per_rollout ({self.episodes_per_rollout}); "
                "lower minibatch_size or raise episodes_per_rollout"
            )
        if self.init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if self.target_kl_ref is not None and self.target_kl_ref <= 0:
            raise ValueError(
                f"target_kl_ref must be > 0 or None (fixed coefficient), got {self.target_kl_ref}"
            )
