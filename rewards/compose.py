"""Composing rewards: ``WeightedSum``, and the shaping terms ``LengthPenalty`` and ``RepetitionPenalty``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rewards.validation import CheckedReward, check_reward, check_scores, check_setting

Reward = Callable[..., np.ndarray]
"""A reward: ``reward(prompts, completions, references=None) -> np.ndarray`` (float32, one per sample)."""


@dataclass
class WeightedSum(CheckedReward):
    """``sum_k weights[k] * rewards[k](prompts, completions, references)``, per sample.

    Each part's output is checked (shape, finite) before it is summed, so a bad part is named in the error.
    ``weights`` defaults to 1.0 for every part. Pickles if every part does.

    >>> from rewards.compose import LengthPenalty, RepetitionPenalty
    >>> reward = WeightedSum([LengthPenalty(target_length=4), RepetitionPenalty()], weights=[1.0, 0.5])
    >>> reward(["p"], ["a b a b a b"]).tolist()  # -|6-4|/4 + 0.5 * -(1 - 2/5)
    [-0.800000011920929]
    """

    rewards: Sequence[Reward]
    """The rewards to combine (plain functions or callable objects)."""
    weights: Sequence[float] | None = None
    """One weight per reward; ``None`` means all 1.0."""

    def __post_init__(self) -> None:
        if callable(self.rewards) or isinstance(self.rewards, (str, bytes)) or not _iterable(self.rewards):
            raise TypeError(
                f"rewards is {type(self.rewards).__name__}; pass a list of rewards, "
                "e.g. WeightedSum([VaderSentiment(), LengthPenalty()])"
            )
        self.rewards = list(self.rewards)
        if not self.rewards:
            raise ValueError("WeightedSum needs at least one reward, e.g. WeightedSum([VaderSentiment()])")
        for index, reward in enumerate(self.rewards):
            check_reward(reward, f"rewards[{index}]")
        if self.weights is not None:
            if isinstance(self.weights, (str, bytes)) or not _iterable(self.weights):
                raise TypeError(
                    f"weights={self.weights!r} must be a list with one number per reward, "
                    "e.g. weights=[1.0, 0.5]"
                )
            for index, weight in enumerate(self.weights):
                check_setting(f"weights[{index}]", weight, "real", "1.0")
        self.weights = [1.0] * len(self.rewards) if self.weights is None else [float(w) for w in self.weights]
        if len(self.weights) != len(self.rewards):
            raise ValueError(
                f"got {len(self.weights)} weights for {len(self.rewards)} rewards; pass one weight per reward"
            )
        if not all(math.isfinite(weight) for weight in self.weights):
            raise ValueError(f"weights={self.weights} must all be finite numbers")

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        total = np.zeros(len(completions), dtype=np.float64)
        for index, (reward, weight) in enumerate(zip(self.rewards, self.weights or (), strict=True)):
            name = f"WeightedSum part {index} ({getattr(reward, '__name__', type(reward).__name__)})"
            total += weight * check_scores(reward(prompts, completions, references), len(total), name)
        return total


def _iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def _units(text: str, unit: str) -> list[str]:
    return text.split() if unit == "word" else list(text)


@dataclass
class LengthPenalty(CheckedReward):
    """``-|len_i - target_length| / target_length``: 0 at the target length, -1 for an empty completion.

    Length counts whitespace-separated words (``unit="word"``) or characters (``unit="char"``).

    >>> LengthPenalty(target_length=4)(["p", "p", "p"], ["a b c d", "a b", ""]).tolist()
    [0.0, -0.5, -1.0]
    """

    target_length: int = 48
    """The length that is not penalised."""
    unit: str = "word"
    """``"word"`` or ``"char"``."""

    def __post_init__(self) -> None:
        check_setting("target_length", self.target_length, "int", "48")
        if self.target_length < 1:
            raise ValueError(f"target_length={self.target_length} must be >= 1, e.g. 48")
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit={self.unit!r} is not known; use 'word' or 'char'")

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        lengths = np.array([len(_units(text, self.unit)) for text in completions], dtype=np.float64)
        return -np.abs(lengths - self.target_length) / self.target_length


@dataclass
class RepetitionPenalty(CheckedReward):
    """``-(1 - distinct n-grams / total n-grams)`` per completion: 0 without repeats, towards -1 with many.

    n-grams are over lowercased words (``unit="word"``) or characters. A completion with fewer than ``n``
    units (including an empty one) has no n-grams and scores 0.

    >>> RepetitionPenalty(n=2)(["p", "p", "p"], ["a b c d", "a b a b a", ""]).tolist()  # 2 distinct of 4
    [0.0, -0.5, 0.0]
    """

    n: int = 2
    """n-gram size."""
    unit: str = "word"
    """``"word"`` or ``"char"``."""

    def __post_init__(self) -> None:
        check_setting("n", self.n, "int", "2")
        if self.n < 1:
            raise ValueError(f"n={self.n} must be >= 1, e.g. 2 for bigrams")
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit={self.unit!r} is not known; use 'word' or 'char'")

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        scores = np.zeros(len(completions), dtype=np.float64)
        for index, text in enumerate(completions):
            units = _units(text.lower(), self.unit)
            ngrams = [tuple(units[start : start + self.n]) for start in range(len(units) - self.n + 1)]
            if ngrams:
                scores[index] = -(1.0 - len(set(ngrams)) / len(ngrams))
        return scores
