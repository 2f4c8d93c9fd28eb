"""Exploration of :class:`~agents.dqn.DQN`: which token the agent tries, and how that changes over training.

Epsilon-greedy takes a ``pi_explore`` sample with probability eps, else argmax Q
(:func:`epsilon_greedy`); Boltzmann samples ``softmax(Q / temperature)`` (:func:`boltzmann`); ``policy``
samples the LM's own softmax under ``temperature``, ``top_k`` and ``top_p``, as the evaluation does (the
policy of soft Q-learning, :mod:`agents.soft_q`; for raw or dueling Q: Boltzmann at T = 1). The exploration
value x (eps, or the temperature for Boltzmann) after t env steps (tokens summed over envs) goes from x0 to x1
(:func:`scheduled_value`):

- ``linear``: ``x0 + (x1 - x0) * min(1, t / (f * T))`` (SB3's ``LinearSchedule``), f the
  ``exploration_fraction`` and T the ``total_timesteps`` of the ``learn`` call that started the schedule (a
  checkpoint keeps T, so a resumed ``learn(..., reset_num_timesteps=False)`` continues it);
- ``exponential``: ``max(x1, x0 * d^t)``, d the ``exploration_decay``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from stable_baselines3.common.utils import LinearSchedule

from agents.sampling import PLAIN_SAMPLING, Sampling, draw, process_logits

EXPLORATIONS = ("epsilon_greedy", "boltzmann", "policy")
SCHEDULES = ("linear", "exponential")


def epsilon_greedy(
    q: torch.Tensor, ref_logits: torch.Tensor, epsilon: float, sampling: Sampling = PLAIN_SAMPLING
) -> torch.Tensor:
    """(B,) tokens: with probability ``epsilon`` a sample of the reference LM's (B, V) ``ref_logits`` (under
    ``sampling``: temperature, top-k, top-p), else the greedy token argmax of (B, V) ``q``.

    >>> epsilon_greedy(torch.tensor([[0.0, 2.0, 1.0]]), torch.zeros(1, 3), epsilon=0.0)
    tensor([1])
    """
    greedy = q.argmax(-1)  # (B,)
    if epsilon <= 0:
        return greedy
    sampled = torch.distributions.Categorical(logits=process_logits(ref_logits, sampling)).sample()
    explore = torch.rand(len(greedy), device=greedy.device) < epsilon
    return torch.where(explore, sampled, greedy)


def epsilon_greedy_probs(
    q: torch.Tensor, ref_logits: torch.Tensor, epsilon: float, sampling: Sampling = PLAIN_SAMPLING
) -> torch.Tensor:
    """(..., V) probabilities of :func:`epsilon_greedy`'s behaviour policy:
    ``(1 - epsilon) * onehot(argmax q) + epsilon * softmax(process_logits(ref_logits, sampling))``.

    >>> epsilon_greedy_probs(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2), epsilon=0.5)
    tensor([[0.2500, 0.7500]])
    """
    probs = epsilon * torch.softmax(process_logits(ref_logits, sampling), -1)
    greedy = q.argmax(-1, keepdim=True)  # (..., 1)
    return probs.scatter_add(-1, greedy, torch.full_like(greedy, 1.0 - epsilon, dtype=probs.dtype))


def boltzmann_probs(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., V) probabilities of Boltzmann exploration, ``softmax(q / temperature)`` in float32.

    >>> boltzmann_probs(torch.tensor([[0.0, 2.0]]), temperature=2.0)
    tensor([[0.2689, 0.7311]])
    """
    return torch.softmax(q.float() / temperature, -1)


def boltzmann(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B,) tokens sampled from ``softmax(q / temperature)`` of (B, V) Q-values.

    >>> boltzmann(torch.tensor([[0.0, 50.0, 0.0]]), temperature=0.1)
    tensor([1])
    """
    return torch.distributions.Categorical(logits=q.float() / temperature).sample()


def scheduled_value(
    schedule: str,
    initial: float,
    final: float,
    num_timesteps: int,
    horizon: int,
    fraction: float,
    decay: float,
) -> float:
    """The exploration value (epsilon or temperature) after ``num_timesteps`` env steps under ``schedule``:
    ``linear`` reaches ``final`` after ``fraction * horizon`` steps (SB3's ``LinearSchedule``);
    ``exponential`` is ``initial * decay ** num_timesteps``, not below ``final``.

    >>> scheduled_value("linear", 1.0, 0.0, 25, horizon=100, fraction=0.5, decay=1.0)
    0.5
    >>> scheduled_value("exponential", 1.0, 0.1, 2, horizon=100, fraction=0.5, decay=0.5)
    0.25
    """
    if schedule == "exponential":
        return max(final, initial * decay**num_timesteps)
    if schedule != "linear":
        raise ValueError(f"exploration_schedule={schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
    return LinearSchedule(initial, final, fraction)(1.0 - num_timesteps / max(horizon, 1))


@dataclass
class Exploration:
    """Epsilon-greedy or Boltzmann exploration (``kind``) on its schedule; the module docstring defines both.

    ``value`` is the current epsilon, or the temperature for ``boltzmann``, on its way from ``initial`` to
    ``final``. ``horizon`` is T of the linear schedule: :meth:`update` at step 0 sets it, a checkpoint keeps
    it. ``temperature``, ``top_k`` and ``top_p`` (0 and 1.0: off) turn the reference LM's logits into
    pi_explore (:attr:`sampling`, applied by :func:`agents.sampling.process_logits` as in the rollouts). The
    settings are checked on construction, with messages that name
    :class:`~agents.dqn_config.DQNConfig` fields.

    >>> explore = Exploration("epsilon_greedy", initial=1.0, final=0.0, schedule="linear", fraction=0.5)
    >>> explore.update(num_timesteps=25, horizon=100)   # T is now 100
    0.5
    >>> explore.update(num_timesteps=75, horizon=400), explore.horizon
    (0.0, 100)
    """

    kind: str
    initial: float
    final: float
    schedule: str = "linear"
    fraction: float = 1.0
    decay: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    horizon: int | None = None
    value: float = field(init=False)
    sampling: Sampling = field(init=False, repr=False)

    def __post_init__(self) -> None:
        choices = {
            "exploration": (self.kind, EXPLORATIONS),
            "exploration_schedule": (self.schedule, SCHEDULES),
        }
        fix = {  # message (what is wrong, how to fix) -> is it wrong
            f"{name}={value!r} is unknown; use one of {', '.join(allowed)}": value not in allowed
            for name, (value, allowed) in choices.items()
        }
        temperatures = (self.initial, self.final) if self.kind == "boltzmann" else (1.0,)
        fix[f"exploration_decay={self.decay}: use a factor in (0, 1], e.g. 0.999"] = not 0 < self.decay <= 1
        fix[f"Boltzmann temperatures must be > 0, got {temperatures}; e.g. 1.0, 0.1"] = min(temperatures) <= 0
        fix[f"temperature={self.temperature} (of the reference LM's samples) must be > 0, e.g. 1.0"] = not (
            self.temperature > 0
        )
        fix[
            f"the exponential schedule only decays, but initial {self.initial} < final {self.final}: "
            "swap them or use exploration_schedule='linear'"
        ] = self.schedule == "exponential" and self.initial < self.final
        for message, wrong in fix.items():
            if wrong:
                raise ValueError(message)
        self.value = self.initial
        self.sampling = Sampling(self.temperature, self.top_k, self.top_p)

    @classmethod
    def from_config(cls, config: Any) -> Exploration:
        """The exploration a :class:`~agents.dqn_config.DQNConfig` describes (its ``exploration*`` fields and
        the reference sampling settings ``temperature``, ``top_k``, ``top_p``)."""
        boltzmann = config.exploration == "boltzmann"
        initial = config.exploration_initial_temperature if boltzmann else config.exploration_initial_eps
        final = config.exploration_final_temperature if boltzmann else config.exploration_final_eps
        if config.exploration == "policy":  # no schedule: the policy itself explores
            initial = final = 0.0
        schedule = dict(schedule=config.exploration_schedule, fraction=config.exploration_fraction)
        sampling = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
        return cls(config.exploration, initial, final, decay=config.exploration_decay, **schedule, **sampling)

    @property
    def uses_reference(self) -> bool:
        """Whether acting and the behaviour policy need the reference LM's logits (epsilon-greedy does)."""
        return self.kind == "epsilon_greedy"

    def update(self, num_timesteps: int, horizon: int) -> float:
        """The value after ``num_timesteps`` env steps; ``horizon`` becomes T at step 0 or when none is set (a
        ``learn`` call that resets the step count restarts the schedule, a resumed one continues it)."""
        if self.horizon is None or num_timesteps == 0:
            self.horizon = horizon
        self.value = scheduled_value(
            self.schedule,
            self.initial,
            self.final,
            num_timesteps,
            horizon=self.horizon,
            fraction=self.fraction,
            decay=self.decay,
        )
        return self.value

    def actions(self, q: torch.Tensor, ref_logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) exploring tokens for (B, V) ``q``: :func:`boltzmann`, or :func:`epsilon_greedy` with the
        reference LM's (B, V) ``ref_logits``."""
        if self.kind == "boltzmann":
            return boltzmann(q, self.value)
        if self.kind == "policy":
            return draw(process_logits(q, self.sampling))  # the rollouts' fast sampler, every token
        assert ref_logits is not None, "epsilon-greedy exploration samples from the reference LM's logits"
        return epsilon_greedy(q, ref_logits, self.value, self.sampling)

    def behaviour_probs(self, q: torch.Tensor, ref_logits: torch.Tensor | None = None) -> torch.Tensor:
        """(..., V) behaviour-policy probabilities in each state of (..., V) ``q`` (and ``ref_logits``)."""
        if self.kind == "boltzmann":
            return boltzmann_probs(q, self.value)
        if self.kind == "policy":
            return torch.softmax(process_logits(q, self.sampling), -1)
        assert ref_logits is not None, "epsilon-greedy's behaviour policy needs the reference LM's logits"
        return epsilon_greedy_probs(q, ref_logits, self.value, self.sampling)
