"""Seeded text noise for the error-correction task: character typos, dropped and swapped words.

Every random draw comes from the ``np.random.Generator`` passed in, so the same generator state gives the same
noise on every machine. The task built on it is ``"error-correction"`` in :mod:`textenv.tasks`.
"""

from __future__ import annotations

import numpy as np

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typo(word: str, rng: np.random.Generator) -> str:
    """One character edit of ``word``: delete, insert, substitute or transpose (seeded by ``rng``).

    >>> typo("cat", np.random.default_rng(0)) != "cat"
    True
    """
    if not word:
        return word
    position = int(rng.integers(len(word)))
    letter = _LETTERS[int(rng.integers(len(_LETTERS)))]
    kind = int(rng.integers(4)) if len(word) > 1 else 1 + int(rng.integers(2))
    if kind == 0:  # delete
        return word[:position] + word[position + 1 :]
    if kind == 1:  # insert
        return word[:position] + letter + word[position:]
    if kind == 2:  # substitute (a different letter)
        if word[position].lower() == letter:
            letter = _LETTERS[(_LETTERS.index(letter) + 1) % len(_LETTERS)]
        return word[:position] + letter + word[position + 1 :]
    position = min(position, len(word) - 2)  # transpose with the next character
    swapped = word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    return swapped if swapped != word else word[:position] + letter + word[position + 1 :]


def corrupt(
    text: str,
    rng: np.random.Generator,
    typo_rate: float = 0.12,
    drop_rate: float = 0.05,
    swap_rate: float = 0.05,
) -> str:
    """``text`` with seeded noise: each word gets a typo with ``typo_rate`` and is dropped with ``drop_rate``
    (at least two words are kept); then neighbouring words are swapped with ``swap_rate``. The result always
    differs from ``text`` (a typo is forced if no noise fired).

    >>> corrupt("the cat sat on the mat", np.random.default_rng(1))
    'the cat sat on teh mat'
    >>> text = "to be or not to be"
    >>> corrupt(text, np.random.default_rng(1)) == corrupt(text, np.random.default_rng(1))
    True
    """
    for name, rate in [("typo_rate", typo_rate), ("drop_rate", drop_rate), ("swap_rate", swap_rate)]:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name}={rate} must be a probability in [0, 1], e.g. 0.05.")
    words = text.split()
    kept: list[str] = []
    for index, word in enumerate(words):
        if rng.random() < drop_rate and len(kept) + len(words) - index > 2:
            continue
        kept.append(typo(word, rng) if rng.random() < typo_rate else word)
    index = 0
    while index < len(kept) - 1:
        if rng.random() < swap_rate:
            kept[index], kept[index + 1] = kept[index + 1], kept[index]
            index += 2
        else:
            index += 1
    result = " ".join(kept)
    while result == " ".join(words) and kept:
        position = int(rng.integers(len(kept)))
        kept[position] = typo(kept[position], rng)
        result = " ".join(kept)
    return result
