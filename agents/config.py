"""Agent settings: :class:`AgentConfig`, the base of the policy-gradient configs, and
:class:`AlgorithmConfig`, what :class:`~agents.base.TextAlgorithm` reads from any agent's config
(e.g. ``agents.dqn.DQNConfig``).

>>> AgentConfig(minibatch_size=8).episodes_per_rollout
64
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class AlgorithmConfig(Protocol):
    """A config dataclass with the settings the shared base uses to build the engine and the KL controller."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def learning_rate(self) -> float: ...
    @property
    def max_grad_norm(self) -> float | None: ...
    @property
    def minibatch_size(self) -> int: ...
    @property
    def init_kl_coef(self) -> float: ...
    @property
    def target_kl_ref(self) -> float | None: ...
    @property
    def kl_horizon(self) -> int: ...
    @property
    def max_new_tokens(self) -> int | None: ...


@dataclass
class AgentConfig:
    """Settings shared by the policy-gradient agents."""

    learning_rate: float = 1e-5
    """AdamW step size (DeepSpeed's ``optimizer.params.lr`` wins if the DeepSpeed config sets it)."""
    episodes_per_rollout: int = 64
    """Finished episodes collected before each update."""
    minibatch_size: int = 16
    """Episodes per gradient step (DeepSpeed's micro batch)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (DeepSpeed ``gradient_clipping``); None disables it."""
    init_kl_coef: float = 0.05
    """Initial coefficient of the per-token KL penalty against the reference model."""
    target_kl_ref: float | None = 6.0
    """Per-episode KL to the reference the adaptive controller aims at; None keeps ``init_kl_coef`` fixed."""
    kl_horizon: int = 10_000
    """Horizon (episodes) of the adaptive KL controller."""
    max_new_tokens: int | None = None
    """N, the completion slots of the observation; None reads the env attribute ``max_new_tokens``."""

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}; try 1e-5")
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
