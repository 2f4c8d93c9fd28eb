"""Lexicon sentiment reward (VADER)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewards.validation import CheckedReward, check_setting


@dataclass
class VaderSentiment(CheckedReward):
    """VADER compound sentiment of each completion, in ``[-1, 1]`` (positive text scores above 0).

    ``vaderSentiment``'s rule-based lexicon model; fast, no model weights. Prompts and references are ignored.
    An empty completion scores 0.0 (neutral). ``scale`` multiplies the score, e.g. ``scale=-1`` rewards
    negative text.

    >>> reward = VaderSentiment()
    >>> scores = reward(["Review:", "Review:"], ["I love it, it works great!", "Awful. It made me sick."])
    >>> bool(scores[0] > 0.5 and scores[1] < -0.5)
    True
    >>> reward(["Review:"], [""]).tolist()
    [0.0]
    """

    scale: float = 1.0
    """Multiplies the compound score."""
    _analyzer: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_setting("scale", self.scale, "real", "1.0")
        if not np.isfinite(self.scale):
            raise ValueError(f"scale={self.scale} must be a finite number, e.g. 1.0 or -1.0")

    def __getstate__(self) -> dict[str, Any]:
        return {"scale": self.scale, "_analyzer": None}

    def compound(self, texts: Sequence[str]) -> np.ndarray:
        """The unscaled VADER compound score of each text."""
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()
        return np.array(
            [self._analyzer.polarity_scores(text)["compound"] for text in texts], dtype=np.float64
        )

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        return self.scale * self.compound(completions)
