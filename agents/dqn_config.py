"""DQN's settings, :class:`DQNConfig` (the names follow Stable-Baselines3's ``DQN`` where one exists), and
their validation; :mod:`agents.dqn` is the algorithm that reads them, :mod:`agents.q_learning` and
:mod:`agents.soft_q` the math they select.

>>> DQNConfig(train_freq=4).train_freq
(4, 'step')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agents import q_learning
from agents.config import AlgorithmConfig
from agents.exploration import Exploration

TRAIN_FREQ_UNITS = ("step", "episode")


@dataclass
class DQNConfig(AlgorithmConfig):
    """DQN settings (on top of :class:`~agents.config.AlgorithmConfig`); the names follow Stable-Baselines3's
    ``DQN`` where one exists."""

    buffer_size: int = 100_000
    """Replay capacity in token transitions."""
    learning_starts: int = 1_000
    """Env steps (tokens, summed over envs) collected before the first gradient step."""
    batch_size: int = 64
    """Transitions per gradient step (drawn uniformly; the forward pass covers their episodes)."""
    tau: float = 1.0
    """Target update coefficient: 1 copies the online network, < 1 is Polyak averaging."""
    gamma: float = 1.0
    """Discount per generated token."""
    train_freq: int | tuple[int, str] = (1, "episode")
    """Train every n steps (unit ``"step"``: vector-env steps) or n finished episodes (``"episode"``); an int
    means steps."""
    gradient_steps: int = 4
    """Gradient steps after each rollout; -1 does as many as vector-env steps were collected."""
    target_update_interval: int = 1_000
    """Env steps (tokens, summed over envs) between target-network updates."""
    target: str = "double_q"
    """Bootstrap of the TD targets: ``double_q``, ``q_learning``, ``sarsa`` or ``expected_sarsa``."""
    exploration: str = "epsilon_greedy"
    """``epsilon_greedy`` (reference-LM samples or greedy Q) or ``boltzmann`` (samples of softmax(Q / T))."""
    exploration_schedule: str = "linear"
    """How epsilon (or T) goes from its initial to its final value: ``linear`` or ``exponential``."""
    exploration_fraction: float = 0.5
    """Linear schedule: share of the first ``learn`` call's ``total_timesteps`` until the final value."""
    exploration_decay: float = 0.999
    """Exponential schedule: factor on epsilon (or T) per env step, down to the final value."""
    exploration_initial_eps: float = 1.0
    """Initial probability of sampling a token from the reference LM instead of the greedy Q action."""
    exploration_final_eps: float = 0.05
    """Final epsilon."""
    exploration_initial_temperature: float = 1.0
    """Boltzmann exploration: initial temperature T."""
    exploration_final_temperature: float = 0.1
    """Boltzmann exploration: final T."""
    n_steps: int = 4
    """n of the n-step return (the reward comes only at the end of an episode)."""
    td_lambda: float | None = None
    """0 <= lambda <= 1: lambda-returns instead of n-step ones (:func:`agents.q_learning.lambda_returns`;
    1 is the Monte Carlo return, with soft Q-learning the path consistency target of Guo et al. 2021)."""
    dueling: bool = False
    """Q(s, a) = V(s) + logit(s, a) - max_a' logit(s, a'), V(s) = the replay's mean return + the value head
    (:func:`agents.q_learning.q_values`): for a pretrained LM whose logits sit far from the rewards' level
    (the SmolLM2 preset sets it; raw-logit Q collapsed it on the error-rate task); raw logits (False) suit
    logits at the rewards' level (the tests' tiny model)."""
    soft_q_coef: float = 0.0
    """beta > 0: KL-regularised (soft) Q-learning, Q = V(s) + beta * log(pi/pi_ref), the LM itself the policy
    (:mod:`agents.soft_q`; with ``exploration="policy"``; ``target`` and ``dueling`` are not used)."""
    value_lr_scale: float = 1.0
    """With a value head (``dueling`` or ``soft_q_coef``): its learning rate is ``learning_rate`` times this,
    in an AdamW parameter group of its own (1: one group for all parameters). The head is one
    ``Linear(hidden, 1)`` beside the LM's millions of weights; at the LM's rate the TD error moves the logits
    long before V(s) follows the targets (measured on SmolLM2: V spread 0.001-0.005 across states, the
    targets 0.4-0.7). A faster critic is the two-timescale setting of actor-critic methods (Konda & Tsitsiklis
    2000); ``rewards.fitting``'s ``head_learning_rate`` does the same for a reward model's head."""
    value_expectile: float | None = None
    """tau in (0, 1), with a value head: V(s) learns on its own loss, the expectile regression
    ``|tau - 1(u < 0)| u^2`` of ``u = y - V(s)`` towards the TD targets y of the taken tokens (IQL, Kostrikov
    et al. 2021; ILQL, Snell et al. 2022, for text, e.g. tau 0.7); the targets bootstrap from the target
    network's V(s') (ILQL's ``r + gamma V(s')``, not a max over Q; ``target`` is not used), and the TD loss
    reaches only the logits (V detached in Q), so the logits carry the advantage Q - V and V the state
    values. Token transitions are deterministic (s' = s + a), so y estimates Q(s, a) as ILQL's separate Q
    head does; with soft Q-learning V learns the targets less beta * log(pi / pi_ref) of the target network,
    the soft V (tau 0.5: its mean). None: V learns only through the TD loss on Q."""
    conservative_coef: float = 0.1
    """Weight alpha of the conservative regulariser ``logsumexp_a Q - E_{a~pi_ref} Q`` (0 disables it)."""
    top_k: int = 50
    """Exploration samples from the reference LM's top-k tokens (0: no top-k filter)."""
    top_p: float = 1.0
    """... and from its top-p nucleus (1.0: no nucleus filter)."""
    temperature: float = 1.0
    """... at this sampling temperature (applied before top-k / top-p, as in ``generate``)."""
    reward_scale: float = 1.0
    """Factor on env rewards in the TD targets (Q is in logit units; raise it when logit gaps are large)."""
    save_replay_buffer: bool = True
    """Include the replay buffer in :meth:`DQN.save` checkpoints (needed for an exact resume)."""
    log_step_size: bool = False
    """Log how far each update moved the logits (``train/logit_step``, ...: :mod:`agents.dqn_diagnostics`),
    at the cost of one more forward pass per update; it changes nothing else."""

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size

    @property
    def value_head(self) -> bool:
        """Whether Q reads V(s) from the value head (dueling or soft)."""
        return self.dueling or self.soft_q_coef > 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.train_freq, int):
            self.train_freq = (self.train_freq, "step")
        self.train_freq = (int(self.train_freq[0]), str(self.train_freq[1]))
        bs, eps = self.batch_size, (self.exploration_initial_eps, self.exploration_final_eps)
        unit_ok = self.train_freq[0] >= 1 and self.train_freq[1] in TRAIN_FREQ_UNITS
        sizes_ok = min(bs, self.target_update_interval, self.n_steps) >= 1
        steps_bad = self.gradient_steps == 0 or self.gradient_steps < -1
        rates_ok = 0 < self.tau <= 1 and 0 < self.gamma <= 1
        eps_ok = all(0 <= e <= 1 for e in eps) and 0 < self.exploration_fraction <= 1
        ref_ok = self.conservative_coef >= 0 and self.top_k >= 0 and 0 < self.top_p <= 1
        lam_bad = self.td_lambda is not None and not 0 <= self.td_lambda <= 1
        expectile, scale = self.value_expectile, self.value_lr_scale
        head_bad = not self.value_head and (scale != 1 or expectile is not None)
        value_bad = not (math.isfinite(scale) and scale > 0) or not (expectile is None or 0 < expectile < 1)
        targets = q_learning.TARGETS
        fix = {  # message (what is wrong, how to fix) -> is it wrong
            f"train_freq={self.train_freq}: use e.g. 4, (4, 'step') or (1, 'episode')": not unit_ok,
            f"batch_size={bs} > buffer_size: raise buffer_size or lower batch_size": bs > self.buffer_size,
            "batch_size, target_update_interval, n_steps must be >= 1": not sizes_ok,
            f"td_lambda={self.td_lambda}: use None (n-step returns) or 0 <= td_lambda <= 1": lam_bad,
            f"value_lr_scale={scale}, value_expectile={expectile}: use a finite factor > 0 on learning_rate "
            "(1: off; e.g. 100) and None (off) or 0 < tau < 1 (e.g. 0.7)": value_bad,
            "value_lr_scale and value_expectile act on the value head: set dueling=True or soft_q_coef > 0 "
            "too (raw-logit Q has none)": head_bad,
            "learning_starts must be >= 0": self.learning_starts < 0,
            "gradient_steps must be >= 1, or -1 (as many as env steps)": steps_bad,
            f"need 0 < tau <= 1 and 0 < gamma <= 1, got {self.tau}, {self.gamma}": not rates_ok,
            f"exploration_initial_eps, exploration_final_eps must be in [0, 1] and exploration_fraction in "
            f"(0, 1], got {eps} and {self.exploration_fraction}": not eps_ok,
            "need conservative_coef >= 0, top_k >= 0 (0: off), 0 < top_p <= 1, reward_scale > 0": not (
                ref_ok and self.reward_scale > 0
            ),
            f"target={self.target!r} is unknown; use one of {', '.join(targets)}": self.target not in targets,
            f"soft_q_coef={self.soft_q_coef}: use beta >= 0 (0: off), and with beta > 0 exploration='policy' "
            "(soft Q-learning acts with the LM's own distribution)": self.soft_q_coef < 0
            or (self.soft_q_coef > 0 and self.exploration != "policy"),
        }
        for message, wrong in fix.items():
            if wrong:
                raise ValueError(message)
        Exploration.from_config(self)  # checks the exploration settings

    @classmethod
    def smollm2_sentiment(cls, **overrides: Any) -> DQNConfig:
        """Settings for SmolLM2-135M on the default sentiment task (benchmarks at equal samples vs PPO)."""
        settings: dict[str, Any] = dict(batch_size=16, buffer_size=50_000, learning_starts=1_536, n_steps=8)
        # one round of 4 updates per 16 finished episodes: a 135M update on CPU takes seconds
        settings.update(train_freq=(16, "episode"), gradient_steps=4, target_update_interval=1_536)
        settings.update(reward_scale=5.0, dueling=True)  # SmolLM2's logits sit far above the rewards
        return cls(**{**settings, **overrides})
