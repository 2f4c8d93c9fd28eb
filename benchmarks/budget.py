"""The training budget of a benchmark run: ``--budget 20000`` (env steps, i.e. generated tokens over all
envs) or ``--budget 20it`` (rollout/update iterations), and the SB3 callbacks that keep it, log the side
metrics on the training samples and run the held-out evaluations over it (used by :mod:`benchmarks.run`,
:mod:`benchmarks.quickstart` and :mod:`benchmarks.pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def parse_budget(budget: str) -> tuple[int, str]:
    """``'20000'`` -> ``(20000, 'steps')``; ``'20it'`` -> ``(20, 'iterations')``.

    >>> parse_budget("20it"), parse_budget("4096")
    ((20, 'iterations'), (4096, 'steps'))
    """
    text = budget.strip().lower()
    unit = "iterations" if text.endswith("it") else "steps"
    try:
        value = int(text.removesuffix("it"))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"--budget {budget!r} is not valid; use e.g. 20000 (env steps) or 20it (iterations)."
        )
    return value, unit


def step_cap(iterations: int, episodes: int, num_envs: int, max_new_tokens: int) -> int:
    """An env-step bound that ``iterations`` iterations never reach (each collects at most ``episodes`` plus
    ``num_envs`` in-flight episodes of ``max_new_tokens`` tokens), so an iteration budget is what stops
    training and the progress bar has a finite total.

    >>> step_cap(2, 8, 4, 10)
    240
    """
    return iterations * (episodes + num_envs) * max_new_tokens


def make_callbacks(budget: str, metrics: dict[str, Any]) -> list[Any]:
    """Per-iteration side metrics on the training samples, and the iteration budget of ``budget``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RolloutMetrics(BaseCallback):
        """Logs ``rollout/<name>`` (mean over the iteration's finished episodes) for each side metric."""

        def _on_rollout_start(self) -> None:
            self.samples: list[tuple[str, str, str | None]] = []

        def _on_step(self) -> bool:
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
                if done and "completion" in info:
                    self.samples.append((info["prompt"], info["completion"], info.get("reference")))
            return True

        def _on_rollout_end(self) -> None:
            if self.samples:
                prompts, completions, references = map(list, zip(*self.samples, strict=True))
                for name, metric in metrics.items():
                    self.logger.record(
                        f"rollout/{name}", float(np.mean(metric(prompts, completions, references)))
                    )

    class IterationBudget(BaseCallback):
        """Stops training after ``limit`` rollout/update iterations."""

        def __init__(self, limit: int) -> None:
            super().__init__()
            self.limit, self.done = limit, 0

        def _on_rollout_end(self) -> None:
            self.done += 1

        def _on_step(self) -> bool:
            return self.done < self.limit

    limit, unit = parse_budget(budget)
    return [RolloutMetrics()] + ([IterationBudget(limit)] if unit == "iterations" else [])


def periodic_evaluation(budget: str, evals: int, evaluate_now: Callable[[int], Any]) -> Any:
    """A callback that calls ``evaluate_now(num_timesteps)`` at the start of the first rollout after each of
    the fractions ``1/evals, ..., (evals-1)/evals`` of ``budget`` (iterations or env steps) is done, i.e.
    after that many updates; the evaluation after training (fraction 1) is the caller's."""
    from stable_baselines3.common.callbacks import BaseCallback

    limit, unit = parse_budget(budget)

    class PeriodicEvaluation(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.iterations, self.next = 0, 1

        def _on_rollout_start(self) -> None:
            done = self.iterations if unit == "iterations" else self.num_timesteps
            if self.next < evals and done * evals >= self.next * limit:
                evaluate_now(self.num_timesteps)
                while self.next < evals and done * evals >= self.next * limit:  # one per crossing
                    self.next += 1

        def _on_rollout_end(self) -> None:
            self.iterations += 1

        def _on_step(self) -> bool:
            return True

    return PeriodicEvaluation()
