"""The training data of the learned reward models, checked before any training: labelled texts for the
classifier, (prompt, chosen, rejected) triples for preferences, each split into (train, held-out).

Bad data raises :class:`TrainingDataError` (a ``ValueError``) that says what was wrong and how to fix it: no
examples, labels of one class only, or too few examples to hold some out and still train. Held-out data is
the caller's ``eval_*`` argument or, without it, a seeded ``eval_fraction`` of the training data
(:func:`split`). :mod:`rewards.fitting` trains on what these functions return.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

Triple = tuple[str, str, str]


class TrainingDataError(ValueError):
    """Data a reward model cannot be trained on; the message says what was wrong and how to fix it."""


def split(items: Sequence[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle-split into (train, held-out).

    >>> split(list(range(10)), 0.2, seed=0)[1]
    [7, 8]
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(items)))
    return [items[i] for i in sorted(order[n_eval:])], [items[i] for i in sorted(order[:n_eval])]


def _texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TrainingDataError(
            f"{what} is a single {type(texts).__name__}; pass a list with one text per example"
        )
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise TrainingDataError(f"{what}[{index}] is {type(text).__name__}, expected str")
    return items


def _labelled(texts: Sequence[str], labels: Sequence[int], what: str) -> list[tuple[str, int]]:
    """(text, label) pairs, checked: one label in {0, 1} per text."""
    text_list, label_list = _texts(texts, f"{what}texts"), list(labels)
    bad = [i for i, label in enumerate(label_list) if label not in (0, 1)]
    if bad or len(text_list) != len(label_list):
        raise TrainingDataError(
            f"need one label in {{0, 1}} per text; got {len(label_list)} {what}labels for {len(text_list)} "
            f"{what}texts, bad labels at {bad[:10]}"
        )
    return [(text, int(label)) for text, label in zip(text_list, label_list, strict=True)]


def _held_out_note(count: int, eval_fraction: float) -> str:
    return f"holding out eval_fraction={eval_fraction} of the {count} examples"


def classifier_data(
    texts: Sequence[str],
    labels: Sequence[int],
    eval_texts: Sequence[str] | None,
    eval_labels: Sequence[int] | None,
    *,
    eval_fraction: float,
    seed: int,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The checked (train, held-out) ``(text, label)`` pairs of :func:`rewards.fitting.train_classifier`;
    without ``eval_texts``, a seeded ``eval_fraction`` of them is held out.

    >>> classifier_data(["good", "fine"], [1, 1], None, None, eval_fraction=0.2, seed=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rewards.training_data.TrainingDataError: all 2 labels are 1: a classifier needs positive (1) and ...
    """
    if (eval_texts is None) != (eval_labels is None):
        raise TrainingDataError(
            "pass both eval_texts and eval_labels, or neither (then config.eval_fraction of the data is "
            "held out)"
        )
    pairs = _labelled(texts, labels, "")
    if not pairs:
        raise TrainingDataError(
            "got no training texts; pass labelled texts (1 positive, 0 negative), many of each class"
        )
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise TrainingDataError(
            f"all {len(pairs)} labels are {classes[0]}: a classifier needs positive (1) and negative (0) "
            "examples; add examples of the other class"
        )
    if eval_texts is None or eval_labels is None:
        train, held_out = split(pairs, eval_fraction, seed)
        if len({label for _, label in train}) < 2:
            raise TrainingDataError(
                f"{_held_out_note(len(pairs), eval_fraction)} leaves {len(train)} to train on, not both "
                "classes; pass more examples of each class, or separate eval_texts and eval_labels"
            )
        return train, held_out
    held_out = _labelled(eval_texts, eval_labels, "eval_")
    if not held_out:
        raise TrainingDataError(
            "eval_texts is empty; pass held-out texts, or None to hold out part of the data"
        )
    return pairs, held_out


def _triples(triples: Sequence[Triple], what: str) -> list[Triple]:
    if isinstance(triples, (str, bytes)):
        raise TrainingDataError(f"{what} is a single str; pass a list of (prompt, chosen, rejected) triples")
    items = list(triples)
    for index, triple in enumerate(items):
        if (
            isinstance(triple, (str, bytes))
            or not isinstance(triple, Sequence)
            or len(triple) != 3
            or not all(isinstance(text, str) for text in triple)
        ):
            raise TrainingDataError(
                f"{what}[{index}] is {triple!r}; each must be (prompt, chosen, rejected), three strings"
            )
    return [(prompt, chosen, rejected) for prompt, chosen, rejected in items]


def preference_data(
    triples: Sequence[Triple], eval_triples: Sequence[Triple] | None, *, eval_fraction: float, seed: int
) -> tuple[list[Triple], list[Triple]]:
    """The checked (train, held-out) triples of :func:`rewards.fitting.train_preference`; without
    ``eval_triples``, a seeded ``eval_fraction`` of them is held out.

    >>> preference_data([("p", "good", "bad")], None, eval_fraction=0.2, seed=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rewards.training_data.TrainingDataError: holding out eval_fraction=0.2 of the 1 examples leaves 0 ...
    """
    items = _triples(triples, "triples")
    if not items:
        raise TrainingDataError("got no training triples; pass (prompt, chosen, rejected) triples of strings")
    if eval_triples is None:
        train, held_out = split(items, eval_fraction, seed)
        if not train:
            raise TrainingDataError(
                f"{_held_out_note(len(items), eval_fraction)} leaves 0 to train on; pass more (prompt, "
                "chosen, rejected) triples, or separate eval_triples"
            )
        return train, held_out
    held_out = _triples(eval_triples, "eval_triples")
    if not held_out:
        raise TrainingDataError(
            "eval_triples is empty; pass held-out triples, or None to hold out part of the data"
        )
    return items, held_out
