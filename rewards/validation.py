"""Input and output checks shared by every reward in :mod:`rewards`.

Every reward calls :func:`check_batch` on its inputs and :func:`check_scores` on its output, so that all of
them reject the same bad inputs with the same messages:

- a batch that is a bare ``str`` (not a list of strings) -> ``TypeError``;
- an item that is not a ``str`` -> ``TypeError`` naming the index and the type;
- batches of different lengths -> ``ValueError`` with the lengths;
- scores that are not real numbers (strings, complex numbers, bools, objects) -> ``TypeError`` naming the
  dtype;
- NaN or inf in the scores (e.g. out of a model or a user function), or values beyond the float32 range
  (which would turn into inf) -> ``ValueError`` naming the indices. Rewards never replace a bad value
  silently.

:func:`check_reward` checks that an object can be called as a reward, and :func:`check_setting` the type of a
reward's ``__init__`` setting, so that a bad one fails when it is made, not deep inside the first call.

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

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def real_array(scores: Any, reward_name: str) -> np.ndarray:
    """``scores`` as a float64 array; ``TypeError`` unless they are real numbers (ints or floats).

    Strings, complex numbers, bools and objects are refused rather than converted: ``"0.5"`` or a bool mask is
    almost always a bug in the reward.

    >>> real_array(["0.5"], "MyReward")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: MyReward returned list of dtype <U3, which is not a numeric array of real numbers; return ...
    """
    try:
        array = np.asarray(scores)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{reward_name} returned {type(scores).__name__}, which is not a numeric array ({error}); "
            "return an np.ndarray of floats, one per sample"
        ) from error
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"{reward_name} returned {type(scores).__name__} of dtype {array.dtype}, which is not a numeric "
            "array of real numbers; return an np.ndarray of floats, one per sample "
            "(e.g. np.asarray(scores, dtype=np.float32))"
        )
    return array.astype(np.float64)


def check_scores(scores: Any, batch_size: int, reward_name: str) -> np.ndarray:
    """Return ``scores`` as a float32 array of shape ``(batch_size,)``; raise if they are not real numbers, or
    if any is NaN, inf or beyond the float32 range.

    >>> check_scores([0.5, 1e39], 2, "MyReward")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: MyReward returned scores beyond the float32 range (|x| <= 3.4e+38) at indices [1] ...
    """
    array = real_array(scores, reward_name)
    if array.ndim == 0 or array.reshape(-1).shape != (batch_size,):
        raise ValueError(
            f"{reward_name} returned scores of shape {array.shape}; expected ({batch_size},): one score per "
            "completion"
        )
    array = array.reshape(-1)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{reward_name} returned non-finite scores at indices {bad.tolist()} "
            f"(values {array[bad].tolist()}); rewards must be finite"
        )
    large = np.flatnonzero(np.abs(array) > FLOAT32_MAX)
    if large.size:
        raise ValueError(
            f"{reward_name} returned scores beyond the float32 range (|x| <= {FLOAT32_MAX:.2g}) at indices "
            f"{large.tolist()} (values {array[large].tolist()}); rescale the reward, e.g. divide it by a "
            "constant"
        )
    return (array + 0.0).astype(np.float32)  # + 0.0 turns -0.0 into 0.0


def check_reward(reward: Any, what: str) -> None:
    """Raise ``TypeError`` unless ``reward`` can be called as ``reward(prompts, completions, references)``;
    ``what`` names it in the message (``"reward_fn"``, ``"rewards[1]"``).

    >>> check_reward(lambda prompts, completions: None, "reward_fn")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: reward_fn <lambda>(prompts, completions) cannot be called as reward(prompts, completions, ...
    """
    if isinstance(reward, type):
        raise TypeError(
            f"{what} is the class {reward.__name__}, not a reward; pass an instance, e.g. {reward.__name__}()"
        )
    if not callable(reward):
        raise TypeError(
            f"{what} is {type(reward).__name__}, which is not callable; pass a function "
            "(prompts, completions, references=None) -> np.ndarray, or a reward object such as "
            "VaderSentiment()"
        )
    try:
        signature = inspect.signature(reward)
    except (TypeError, ValueError):  # some builtins have no signature; the first call checks them
        return
    try:
        signature.bind(["prompt"], ["completion"], [None])
    except TypeError as error:
        name = getattr(reward, "__name__", type(reward).__name__)
        raise TypeError(
            f"{what} {name}{signature} cannot be called as reward(prompts, completions, references) "
            f"({error}); give it a third parameter, e.g. def reward(prompts, completions, references=None)"
        ) from None


_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "int": ("an int", (int, np.integer)),
    "real": ("a real number", (int, float, np.integer, np.floating)),
    "bool": ("True or False", (bool, np.bool_)),
    "str": ("a str", (str,)),
}


def check_setting(name: str, value: Any, kind: str, example: str) -> None:
    """Raise ``TypeError`` unless the setting ``name=value`` is of ``kind``: ``"int"``, ``"real"`` (bools are
    neither), ``"bool"`` or ``"str"``. ``example`` is a good value, shown in the message.

    >>> check_setting("n", 2.5, "int", "2")
    Traceback (most recent call last):
    ...
    TypeError: n=2.5 must be an int, e.g. n=2
    """
    description, types = _KINDS[kind]
    if not isinstance(value, types) or (kind in ("int", "real") and isinstance(value, (bool, np.bool_))):
        raise TypeError(f"{name}={value!r} must be {description}, e.g. {name}={example}")


class CheckedReward:
    """Base of the built-in reward classes: ``__call__`` checks the batch (:func:`check_batch`), asks
    :meth:`scores` for one value per sample and checks them (:func:`check_scores`), so each reward only
    says how it scores.

    >>> class Length(CheckedReward):
    ...     def scores(self, prompts, completions, references):
    ...         return [len(c) for c in completions]
    >>> Length()(["p", "q"], ["ab", ""]).tolist()
    [2.0, 0.0]
    """

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        prompt_list, completion_list, reference_list = check_batch(prompts, completions, references)
        scores = self.scores(prompt_list, completion_list, reference_list)
        return check_scores(scores, len(completion_list), type(self).__name__)

    def scores(self, prompts: list[str], completions: list[str], references: list[str | None] | None) -> Any:
        """One score per completion, for inputs that :func:`check_batch` already checked."""
        raise NotImplementedError
