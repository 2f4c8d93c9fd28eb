"""``WholeText``: score prompt + completion as one text with any text reward (TRL's sentiment example scores
``query + response``), so that a completion is judged by what it makes of the whole text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rewards.validation import CheckedReward, check_reward, check_scores, check_setting


@dataclass
class WholeText(CheckedReward):
    """``reward(["", ...], [prompt + completion, ...], references)``: the inner ``reward`` sees each whole
    text as its completion and an empty prompt; references are passed on unchanged.

    ``separator`` goes between prompt and completion unless one of them is empty or already has whitespace at
    the join (a sampled continuation usually starts with a space). Score the completion alone by calling the
    inner reward directly (``whole.reward``). Pickles if ``reward`` does.

    >>> from rewards.sentiment import VaderSentiment
    >>> whole = WholeText(VaderSentiment())
    >>> whole.texts(["Terrible at first,", "Awful."], [" but now it works great!", "Then"])
    ['Terrible at first, but now it works great!', 'Awful. Then']
    >>> bool(whole(["Terrible at first,"], [" but now it works great!"])[0] > 0)
    True
    """

    reward: Any
    """The text reward: ``reward(prompts, completions, references=None) -> np.ndarray``."""
    separator: str = " "
    """Put between prompt and completion when neither brings whitespace to the join."""

    def __post_init__(self) -> None:
        check_reward(self.reward, "reward")
        check_setting("separator", self.separator, "str", "' '")

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """The whole texts that the inner reward scores."""
        return [
            prompt + completion
            if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace()
            else prompt + self.separator + completion
            for prompt, completion in zip(prompts, completions, strict=True)
        ]

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        name = f"WholeText's reward {getattr(self.reward, '__name__', type(self.reward).__name__)}"
        raw = self.reward([""] * len(prompts), self.texts(prompts, completions), references)
        return check_scores(raw, len(completions), name)
