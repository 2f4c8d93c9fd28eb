"""Word and character error rate rewards (jiwer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rewards.validation import CheckedReward, check_setting, require_references


@dataclass
class ErrorRate(CheckedReward):
    """Negative word (or character) error rate of each completion against its reference.

    Per sample ``R_i = -E_i`` with ``E_i = (substitutions + deletions + insertions) / len(reference_i)``,
    counted in words (``unit="word"``, WER) or characters (``unit="char"``, CER) by ``jiwer``. The mean over a
    batch is ``R = -(1/N) sum_i E_i``. ``E_i`` is 0 for an exact match and can exceed 1 when the completion
    inserts many units.

    Normalisation, applied to completion and reference alike before counting (jiwer transforms, in order):

    - ``lowercase``: ``jiwer.ToLowerCase`` (``"The" == "the"``);
    - ``remove_punctuation``: ``jiwer.RemovePunctuation`` (drops Unicode punctuation, ``"end." == "end"``);
    - ``normalize_whitespace``: ``jiwer.RemoveMultipleSpaces`` + ``jiwer.Strip`` (runs of spaces count once).
      For ``unit="char"`` spaces are characters, so this matters there.

    Empty texts (after normalisation): an empty completion against a non-empty reference deletes every unit,
    ``E = 1``. An empty reference follows jiwer's convention: ``E`` is the number of units in the completion
    (0 when both are empty). Missing references raise ``ValueError``.

    >>> reward = ErrorRate()
    >>> reward(["Say it"], ["the cat sat"], ["The cat sat."]).tolist()
    [0.0]
    >>> reward(["Say it"], ["the cat sat down"], ["the cat sat"]).tolist()  # 1 insertion / 3 words
    [-0.3333333432674408]
    >>> ErrorRate(unit="char")(["p"], ["abd"], ["abc"]).tolist()  # 1 substitution / 3 characters
    [-0.3333333432674408]
    """

    unit: str = "word"
    """``"word"`` for word error rate (WER), ``"char"`` for character error rate (CER)."""
    lowercase: bool = True
    """Compare case-insensitively."""
    remove_punctuation: bool = True
    """Drop punctuation before comparing."""
    normalize_whitespace: bool = True
    """Collapse runs of whitespace and strip both ends."""

    def __post_init__(self) -> None:
        for flag in ("lowercase", "remove_punctuation", "normalize_whitespace"):
            check_setting(flag, getattr(self, flag), "bool", "True")
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit={self.unit!r} is not known; use unit='word' (WER) or unit='char' (CER)")

    def _transform(self):  # jiwer.Compose
        import jiwer

        steps = []
        if self.lowercase:
            steps.append(jiwer.ToLowerCase())
        if self.remove_punctuation:
            steps.append(jiwer.RemovePunctuation())
        if self.normalize_whitespace:
            steps += [jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
        if self.unit == "word":
            steps.append(jiwer.ReduceToListOfListOfWords())
        else:
            steps.append(jiwer.ReduceToListOfListOfChars())
        return jiwer.Compose(steps)

    def error_rates(self, completions: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """``E_i`` for each (completion, reference) pair, as float64."""
        import jiwer

        measure = jiwer.wer if self.unit == "word" else jiwer.cer
        transform = self._transform()
        return np.array(
            [
                measure(reference, completion, reference_transform=transform, hypothesis_transform=transform)
                for completion, reference in zip(completions, references, strict=True)
            ],
            dtype=np.float64,
        )

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        return -self.error_rates(completions, require_references(references, type(self).__name__))
