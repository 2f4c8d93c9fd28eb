"""Input and output checks shared by every reward in :mod:`rewards`.

Every reward calls :func:`check_batch` on its inputs and :func:`check_scores` on its output, so that all of
them reject the same bad inputs with the same messages:

- a batch that is a bare ``str`` (not a list of strings) -> ``TypeError``;
- an item that is not a ``str`` -> ``TypeError`` naming the index and the type;
- batches of different lengths -> ``ValueError`` with the lengths;
- NaN or inf in the scores (e.g. out of a model or a user function) -> ``ValueError`` naming the indices.
  Rewards never replace a non-finite value silently.

>>> check_batch(["p"], ["c"])
(['p'], ['c'], None)
>>> check_batch(["p", "q"], ["c"])
Traceback (most recent call last):
...
ValueError: batch lengths differ: len(prompts)=2, len(completions)=1; pass one of each per sample
>>> check_batch(["p"], [3])
Traceback (most recent call last):
...
TypeError: completions[0] is int, expected str
>>> check_scores([0.5, float("nan")], 2, "MyReward")
Traceback (most recent call last):
...
ValueError: MyReward returned non-finite scores at indices [1] (values [nan]); rewards must be finite
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_str_list(batch: Any, name: str, allow_none: bool = False) -> list[Any]:
    if isinstance(batch, (str, bytes)):
        raise TypeError(f"{name} is a single {type(batch).__name__}; pass a list with one string per sample")
    try:
        items = list(batch)
    except TypeError:
        raise TypeError(f"{name} is {type(batch).__name__}; pass a list with one string per sample") from None
    for index, item in enumerate(items):
        if item is None and allow_none:
            continue
        if not isinstance(item, str):
            raise TypeError(f"{name}[{index}] is {type(item).__name__}, expected str")
    return items


def check_batch(
    prompts: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None] | None = None,
) -> tuple[list[str], list[str], list[str | None] | None]:
    """Check a reward's inputs and return them as lists.

    ``references`` may be ``None`` (no references at all) or hold ``None`` items (no reference for that
    sample); rewards that need references use :func:`require_references`.
    """
    prompt_list = _as_str_list(prompts, "prompts")
    completion_list = _as_str_list(completions, "completions")
    reference_list = None if references is None else _as_str_list(references, "references", allow_none=True)
    lengths = {"prompts": len(prompt_list), "completions": len(completion_list)}
    if reference_list is not None:
        lengths["references"] = len(reference_list)
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"len({name})={length}" for name, length in lengths.items())
        raise ValueError(f"batch lengths differ: {listed}; pass one of each per sample")
    return prompt_list, completion_list, reference_list


def require_references(references: list[str | None] | None, reward_name: str) -> list[str]:
    """Return the references, or raise ``ValueError`` if any is missing.

    >>> require_references(None, "ErrorRate")
    Traceback (most recent call last):
    ...
    ValueError: ErrorRate needs references: call it as reward(prompts, completions, references)
    """
    if references is None:
        raise ValueError(
            f"{reward_name} needs references: call it as reward(prompts, completions, references)"
        )
    missing = [index for index, reference in enumerate(references) if reference is None]
    if missing:
        raise ValueError(f"{reward_name} needs a reference for every sample; references{missing} are None")
    return [str(reference) for reference in references]


def targets_or_prompts(prompts: list[str], references: list[str | None] | None) -> list[str]:
    """The text to compare a completion with: its reference, or its prompt where there is none.

    >>> targets_or_prompts(["p1", "p2"], ["r1", None])
    ['r1', 'p2']
    """
    if references is None:
        return list(prompts)
    return [
        prompt if reference is None else reference
        for prompt, reference in zip(prompts, references, strict=True)
    ]


def check_scores(scores: Any, batch_size: int, reward_name: str) -> np.ndarray:
    """Return ``scores`` as a float32 array of shape ``(batch_size,)``; raise if any is NaN or inf."""
    array = np.asarray(scores, dtype=np.float64).reshape(-1) if np.ndim(scores) else None
    if array is None or array.shape != (batch_size,):
        shape = np.shape(scores)
        raise ValueError(
            f"{reward_name} returned scores of shape {shape}; expected ({batch_size},), one per sample"
        )
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{reward_name} returned non-finite scores at indices {bad.tolist()} "
            f"(values {array[bad].tolist()}); rewards must be finite"
        )
    return (array + 0.0).astype(np.float32)  # + 0.0 turns -0.0 into 0.0
