"""Rewards by name, as the scripts take them (``--reward vader``), and what each benchmark task reports beside
its reward.

The library passes reward objects (``reward_fn=``); the names are the command line's. :data:`REPORTS` says,
for each task of :data:`textenv.task_envs.BENCHMARKS`, the name of its default reward, the side metrics logged
beside it and whether held-out human text measures drift.

>>> build_reward("wer")(["p"], ["the cat"], ["the cat"]).tolist()
[0.0]
>>> REPORTS["error-rate"].reward, list(side_metrics("error-rate"))
('wer', ['cer'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rewards
from textenv.task_envs import BENCHMARKS, whole_review_sentiment, word_error_rate


def char_error_rate() -> rewards.ErrorRate:
    """``-CER`` against the reference (reported beside the error-rate task's ``-WER``)."""
    return rewards.ErrorRate(unit="char")


REWARDS: dict[str, Callable[[], Any]] = {
    "classifier": rewards.drugs_sentiment_model,
    "vader": rewards.VaderSentiment,
    "wer": word_error_rate,
    "cer": char_error_rate,
    "minilm": rewards.EmbeddingSimilarity,
    "chrf": rewards.ChrF,
    "preference": rewards.drugs_preference_model,
    "review": whole_review_sentiment,
    "continuation": rewards.drugs_review_sentiment_model,
}
"""Every reward name -> a factory of the reward: ``classifier`` (:func:`rewards.drugs_sentiment_model`, the
first release's sentiment classifier on the completion), ``vader``, ``wer``, ``cer``, ``minilm`` (MiniLM
cosine similarity), ``chrf``, ``preference`` (the cached :func:`rewards.drugs_preference_model`),
``review`` (the review classifier on prompt + completion, :func:`textenv.task_envs.whole_review_sentiment`)
and ``continuation`` (the same classifier on the completion alone)."""

REWARD_NAMES = tuple(REWARDS)
"""The names :func:`build_reward` knows."""


def build_reward(name: str, reward_model: str | Path | None = None) -> Any:
    """The reward called ``name`` in :data:`REWARDS`; ``preference`` with ``reward_model`` (a directory saved
    by :meth:`rewards.PreferenceRewardModel.save`) loads that model instead of the cached one."""
    if name not in REWARDS:
        raise ValueError(
            f"Unknown reward {name!r}; use one of {', '.join(REWARD_NAMES)}, or pass reward_fn= (a callable) "
            "instead."
        )
    if name == "preference" and reward_model is not None:
        return rewards.PreferenceRewardModel.load(reward_model)
    return REWARDS[name]()


@dataclass(frozen=True)
class TaskReport:
    """What a benchmark task reports besides the held-out reward."""

    reward: str
    """The name of the task env's default reward (:data:`REWARDS` holds the same factory)."""
    metrics: tuple[str, ...]
    """Rewards reported beside the trained one (for ``preference``: the gold scorers)."""
    heldout_text: bool = False
    """Report the perplexity of held-out human reviews (drift from natural text)."""


REPORTS: dict[str, TaskReport] = {
    "sentiment": TaskReport("review", ("vader",), heldout_text=True),
    "error-rate": TaskReport("wer", ("cer",)),
    "similarity": TaskReport("minilm", ("chrf",)),
    "preference": TaskReport("preference", ("classifier", "vader"), heldout_text=True),
}
"""Each task of :data:`textenv.task_envs.BENCHMARKS` by the same name."""

REWARD_COMPANIONS: dict[str, tuple[str, ...]] = {"review": ("continuation",)}
"""Side metrics that explain a reward, reported beside it whenever it is the trained reward: the whole-review
score is read beside the completion scored alone."""


def task_report(task: str) -> TaskReport:
    """:data:`REPORTS`'s entry of ``task``, with an error that lists the tasks."""
    if task not in REPORTS:
        raise ValueError(f"Unknown benchmark {task!r}; use one of {', '.join(REPORTS)}.")
    return REPORTS[task]


def side_metrics(task: str, reward: str | None = None) -> dict[str, Any]:
    """The rewards reported beside ``task``'s trained reward (``reward``, or the task's own): its ``metrics``,
    then the :data:`REWARD_COMPANIONS` of the trained reward.

    >>> list(side_metrics("sentiment", reward="vader"))
    ['vader']
    """
    report = task_report(task)
    names = dict.fromkeys(report.metrics + REWARD_COMPANIONS.get(reward or report.reward, ()))
    return {name: build_reward(name) for name in names}


def reward_kwargs(
    task: str, reward: str | None = None, reward_model: str | Path | None = None
) -> dict[str, Any]:
    """The env keyword arguments that replace ``task``'s default reward: ``{"reward_fn": ...}`` for a reward
    name and/or a preference ``reward_model`` directory, ``{}`` for neither (the env's own default). Call it
    once per env: each gets its own reward object."""
    report = task_report(task)
    if reward_model is not None and (reward or report.reward) != "preference":
        raise ValueError(
            f"reward_model= is used by the 'preference' reward only, not by {reward or report.reward!r}; "
            "drop it, or pass reward='preference'."
        )
    if reward is None and reward_model is None:
        return {}
    return {"reward_fn": build_reward(reward or report.reward, reward_model)}


def benchmark_record(task: str) -> dict[str, Any]:
    """``task``'s setup as a JSON-able dict for a run's ``summary.json``: the env preset with its default
    reward by name, and what it reports."""
    spec, report = BENCHMARKS[task], task_report(task)
    return {
        "env_id": spec.env_id,
        "task": spec.task,
        "reward": report.reward,
        "metrics": list(report.metrics),
        "max_new_tokens": spec.max_new_tokens,
        "max_prompt_tokens": spec.max_prompt_tokens,
        "heldout_text": report.heldout_text,
        "stop_strings": list(spec.stop_strings),
        "temperature": spec.temperature,
    }
