"""The held-out evaluations of :mod:`benchmarks.chat`: episode-level scores, evaluations spread over
training, the floor a strategy must beat, and the intervals that compare with it.

- :func:`evaluate` plays the first ``eval_episodes`` test episodes (same episodes, same sampling seed every
  time, the global torch RNG saved and restored around it so that training's sampling is not re-seeded)
  and keeps, per episode, success, return, agent turns used, and, with tools, tool calls and bad ones.
- :class:`EvalDuringTraining` runs it at the rollout counts of :func:`eval_points` (before training, after
  it, and spread in between), logs ``eval/*`` to the agent's logger (TensorBoard where it writes one), and
  keeps the training KL of every update (``rollout/kl``: the mean per-episode KL to the reference of the
  training rollouts, summed over the episode's agent tokens).
- The **floor** is the best success of a policy that ignores the other party's turns. For the guessing game
  that policy can only avoid repeating itself: distinct uniformly random guesses (:func:`guess_floor`). The
  same model is also scored with the host's hints hidden (the task's ``hints=False``: the host only says
  "Wrong."), its own floor. The calculator task's floor is measured, not computed: the same model answering
  the same problems without the tool (``CalculatorTask(tool=False)``). :data:`FLOOR_EVALS` names each task's
  floor evaluation.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter

from benchmarks.metrics import seeds_and_prompts_interval

EPISODE_KEYS = ("success", "return", "turns", "tool_calls", "bad_tool_calls")
"""What :func:`evaluate` keeps per episode (tool counts only for tasks with tools)."""


def guess_floor(low: int, high: int, turns: int) -> float:
    """Exact success rate of distinct uniformly random guesses in the guessing game ``[low, high]`` with
    ``turns`` guesses: ``turns`` of the ``high - low + 1`` numbers are tried, each the secret with the same
    chance, so the rate is ``turns / (high - low + 1)``, capped at 1. No policy that ignores the host's
    answers does better (whatever it guesses, the secret is uniform and unseen).

    >>> guess_floor(1, 10, 4), guess_floor(1, 5, 4), guess_floor(1, 5, 8)
    (0.4, 0.8, 1.0)
    """
    return min(1.0, turns / (high - low + 1))


def task_floor(task: str, task_kwargs: dict[str, Any], max_turns: int) -> tuple[float | None, str]:
    """(floor, how it was found) for ``task`` with ``task_kwargs`` and ``max_turns`` agent messages.

    >>> task_floor("guess", {"high": 10}, 4)
    (0.4, 'distinct uniformly random guesses in [1, 10] with 4 turns: 4 / 10 (exact)')
    >>> task_floor("calculator", {}, 4)[0] is None
    True
    """
    if task == "guess":
        low, high = int(task_kwargs.get("low", 1)), int(task_kwargs.get("high", 10))
        floor = guess_floor(low, high, max_turns)
        count = high - low + 1
        return floor, (
            f"distinct uniformly random guesses in [{low}, {high}] with {max_turns} turns: "
            f"{min(max_turns, count)} / {count} (exact)"
        )
    if task == "calculator":
        return None, (
            "measured, not computed: the same model answering the same problems without the tool "
            "(success_without_tool_*, after_minus_without_tool)"
        )
    return None, f"no floor for task {task!r}: only the guessing game's is computed"


FLOOR_EVALS: dict[str, tuple[str, dict[str, Any]]] = {
    "guess": ("hints_hidden", {"hints": False}),
    "calculator": ("without_tool", {"tool": False}),
}
"""Per task: the name and the task settings of its floor evaluation, the same model playing the same episodes
with the other party's help removed (the guessing game's hints; the calculator task's tool)."""


def evaluate(agent: Any, env_kwargs: dict[str, Any], episodes: int, num_envs: int, seed: int) -> dict:
    """Per-episode scores (lists under :data:`EPISODE_KEYS`) of test episodes ``0 .. episodes - 1``, played
    ``num_envs`` at a time on ``TextChat-v0`` built from ``env_kwargs``, sampled under torch seed ``seed``
    (the caller's torch RNG state is restored afterwards)."""
    env = gym.make_vec(
        "TextChat-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs
    )
    rows: dict[str, list[float]] = {key: [] for key in EPISODE_KEYS}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, episodes, num_envs):
            indices = [min(start + row, episodes - 1) for row in range(num_envs)]
            obs, _ = env.reset(seed=seed, options={"indices": indices})
            state, total = None, np.zeros(num_envs)
            finished: dict[int, dict[str, float]] = {}
            while len(finished) < num_envs:
                actions, state = agent.predict(obs, state=state)
                obs, rewards, terminated, truncated, info = env.step(actions)
                total += rewards
                final = info.get("final_info", {})
                for row in np.flatnonzero(terminated | truncated).tolist():
                    if row not in finished:  # only each row's first episode counts
                        finished[row] = {
                            "success": float(final["success"][row]),
                            "return": float(total[row]),
                            "turns": float(final["agent_turns"][row]),
                        } | {key: float(final[key][row]) for key in EPISODE_KEYS[3:] if key in final}
                total[terminated | truncated] = 0.0
            for row in range(min(num_envs, episodes - start)):
                for key, value in finished[row].items():
                    rows[key].append(value)
    env.close()
    return {key: values for key, values in rows.items() if values}


def means(scores: dict[str, list[float]]) -> dict[str, float]:
    """The mean of each per-episode list of :func:`evaluate`.

    >>> means({"success": [1.0, 0.0], "turns": [2.0, 4.0]})
    {'success': 0.5, 'turns': 3.0}
    """
    return {key: float(np.mean(values)) for key, values in scores.items()}


def eval_points(rollouts: int, evals: int) -> list[int]:
    """The rollout counts (0: before training, ``rollouts``: after it) at which ``evals`` evaluations run,
    spread evenly over training; at most one per rollout count (``rollouts + 1`` in all).

    >>> eval_points(20, 10)
    [0, 2, 4, 7, 9, 11, 13, 16, 18, 20]
    >>> eval_points(1, 2), eval_points(2, 10)
    ([0, 1], [0, 1, 2])
    """
    if evals < 2:
        raise ValueError(f"--evals {evals} must be >= 2 (before and after training), e.g. --evals 10")
    evals = min(evals, rollouts + 1)
    return sorted({round(i * rollouts / (evals - 1)) for i in range(evals)})


class _Capture(KVWriter):
    """A logger output that keeps every value of ``key`` the agent logs (SB3's logger clears them on dump)."""

    def __init__(self, key: str) -> None:
        self.key, self.values = key, []  # type: ignore[var-annotated]

    def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
        if self.key in key_values:
            self.values.append(float(key_values[self.key]))


class EvalDuringTraining(BaseCallback):
    """Stops ``learn`` after ``rollouts`` rollouts and their updates; evaluates before each rollout whose
    count is in ``points`` (call :meth:`finish` after ``learn`` for the last one); keeps each rollout's mean
    return and each update's training KL."""

    def __init__(self, rollouts: int, points: list[int], run_eval: Any) -> None:
        super().__init__()
        self.count, self.done, self.points, self.run_eval = rollouts, 0, points, run_eval
        self.returns: list[float] = []
        self.evals: list[dict[str, Any]] = []
        self.kl = _Capture("rollout/kl")

    def _on_training_start(self) -> None:
        self.model.logger.output_formats.append(self.kl)

    def _evaluate(self) -> None:
        scores = self.run_eval()
        record = {"rollout": self.done, "timesteps": int(self.model.num_timesteps)} | means(scores)
        record |= {"train_kl": self.kl.values[-1]} if self.kl.values else {}  # the last update's
        self.evals.append(record | {"episodes": scores})
        for key, value in record.items():
            if key not in ("rollout", "timesteps", "train_kl"):
                self.model.logger.record(f"eval/{key}", value)
        self.model.logger.dump(step=self.model.num_timesteps)
        print(json.dumps(record), flush=True)

    def _on_rollout_start(self) -> None:
        if self.done in self.points and self.done < self.count:
            self._evaluate()

    def _on_rollout_end(self) -> None:
        self.done += 1
        self.returns.append(float(self.model.rollout_batch.rewards.mean()))  # type: ignore[attr-defined]

    def _on_step(self) -> bool:
        return self.done < self.count

    def finish(self) -> None:
        """The evaluation after training; the KL capture leaves the logger."""
        self._evaluate()
        if self.kl in self.model.logger.output_formats:
            self.model.logger.output_formats.remove(self.kl)


def interval_summary(table: list[list[float]]) -> dict[str, Any]:
    """Mean and seeds-and-prompts interval (:func:`benchmarks.metrics.seeds_and_prompts_interval`) of a
    seeds x episodes table, and whether that interval excludes 0 (None with fewer than 2 seeds).

    >>> interval_summary([[1.0, 0.0], [1.0, 1.0]])["mean"]
    0.75
    >>> interval_summary([[1.0, 0.0]])["excludes_zero"] is None
    True
    """
    interval = seeds_and_prompts_interval(table)
    excludes = None if interval is None else bool(interval[0] > 0 or interval[1] < 0)
    return {"mean": float(np.mean(table)), "ci95_seeds_and_prompts": interval, "excludes_zero": excludes}
