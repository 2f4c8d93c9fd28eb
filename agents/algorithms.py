"""The table of algorithms: each name the scripts take (``--algo rloo``) with the agent class that trains it
and the settings that make it that algorithm.

Two entries can share an agent: RLOO is :class:`~agents.REINFORCE` with ``baseline="rloo"`` on an env that
repeats each prompt ``group_size`` times, soft-Q DQN is :class:`~agents.DQN` with ``soft_q_coef`` and
``exploration="policy"``. The benchmark scripts take their ``--algo`` choices, agent classes and fixed
settings from :data:`ALGORITHMS`, and the report orders its columns by it.

>>> list(ALGORITHMS)
['ppo', 'reinforce', 'rloo', 'grpo', 'dr-grpo', 'dapo', 'gspo', 'dqn', 'soft-dqn']
>>> rloo = ALGORITHMS["rloo"]
>>> rloo.agent.__name__, dict(rloo.settings), rloo.group_prompts
('REINFORCE', {'baseline': 'rloo'}, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from agents.base import TextAlgorithm
from agents.config import AlgorithmConfig, PolicyGradientConfig
from agents.dqn import DQN
from agents.grpo import GRPO
from agents.ppo import PPO
from agents.reinforce import REINFORCE


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: an agent class and the config settings that define it (applied on every use)."""

    agent: type[TextAlgorithm]
    """The agent class that trains it."""
    summary: str
    """One line for ``--help`` and the report."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Config settings that make it this algorithm, e.g. RLOO's ``{"baseline": "rloo"}``."""
    group_prompts: bool = False
    """Its baseline compares samples of the same prompt: its env must repeat each prompt ``group_size``
    times (the env's ``group_size``, at least 2)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        known = {item.name for item in fields(self.config_class)}
        unknown = sorted(set(self.settings) - known)
        if unknown:
            raise ValueError(
                f"settings {unknown} are not fields of {self.config_class.__name__}; use some of "
                f"{sorted(known)}."
            )

    @property
    def config_class(self) -> type[AlgorithmConfig]:
        """Its config dataclass (the agent's ``config_class``)."""
        return self.agent.config_class

    @property
    def policy_gradient(self) -> bool:
        """Whether it trains from on-policy rollouts (PPO, REINFORCE, RLOO), as multi-turn envs need."""
        return issubclass(self.config_class, PolicyGradientConfig)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(PPO, "PPO: clipped policy gradient with a value head and GAE"),
    "reinforce": Algorithm(
        REINFORCE,
        "REINFORCE with a moving-average baseline",
        settings={"baseline": "moving_average"},
    ),
    "rloo": Algorithm(
        REINFORCE,
        "REINFORCE with a leave-one-out baseline over group_size samples per prompt (RLOO)",
        settings={"baseline": "rloo"},
        group_prompts=True,
    ),
    "grpo": Algorithm(
        GRPO,
        "GRPO (Shao et al. 2024): advantages relative to the group, scaled by its std; per-sequence mean",
        settings={"loss_type": "grpo", "scale_rewards": "group"},
        group_prompts=True,
    ),
    "dr-grpo": Algorithm(
        GRPO,
        "Dr. GRPO (Liu et al. 2025): no std scaling, a constant loss normaliser",
        settings={"loss_type": "dr_grpo", "scale_rewards": "none"},
        group_prompts=True,
    ),
    "dapo": Algorithm(
        GRPO,
        "DAPO (Yu et al. 2025): clip-higher (0.28), token-level mean, dynamic sampling",
        settings={"loss_type": "dapo", "epsilon_high": 0.28, "dynamic_sampling": True},
        group_prompts=True,
    ),
    "gspo": Algorithm(
        GRPO,
        "GSPO (Zheng et al. 2025): the sequence's geometric-mean ratio, clipped per sequence",
        settings={"importance_sampling_level": "sequence", "loss_type": "grpo"},
        group_prompts=True,
    ),
    "dqn": Algorithm(DQN, "DQN: the LM's logits as Q-values over the vocabulary"),
    "soft-dqn": Algorithm(
        DQN,
        "DQN with soft (KL-regularised) Q-learning, acting with the LM's own samples",
        settings={"soft_q_coef": 0.05, "exploration": "policy", "conservative_coef": 0},
    ),
}
"""Every algorithm by the name the scripts take, in table order. ``soft-dqn``'s ``soft_q_coef`` 0.05 is the
two-seed similarity pilot's setting; with the SmolLM2 preset's ``reward_scale`` 5 it matches the KL
coefficient 0.01 of the other agents."""
