"""An env's episode state as JSON-able data (``state_dict()``), and the checks it passes on the way back in.

A state comes from a checkpoint file a user can edit, so :func:`decode_state` takes a saved value only in the
type the env holds (an int for an int, a str for a str, an integer array for an integer array, a known RNG
state), and each env then checks its episode against its own sizes (:func:`check_layout`,
:func:`check_conversation`): a length that would write into the prompt, an id outside the vocabulary or an
index outside the dataset is refused, naming the key, rather than loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class PromptSampler:
    """Draws dataset indices uniformly; with ``group_size=k`` each drawn index is yielded k times in a row."""

    def __init__(self, dataset_size: int, group_size: int = 1) -> None:
        self.dataset_size = dataset_size
        self.group_size = group_size
        self.index = 0
        self.remaining = 0

    def reset(self) -> None:
        self.remaining = 0

    def next(self, rng: np.random.Generator) -> int:
        if self.remaining == 0:
            self.index = int(rng.integers(self.dataset_size))
            self.remaining = self.group_size
        self.remaining -= 1
        return self.index


BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
"""numpy bit generators whose saved state an env restores."""


def encode_state(value: Any) -> Any:
    """A JSON-able form of one piece of episode state (see ``CoreAttributes.state_dict``)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.random.Generator):
        return value.bit_generator.state
    if isinstance(value, PromptSampler):
        return [value.index, value.remaining]
    if hasattr(value, "state_dict"):  # an env inside a vector env
        return value.state_dict()
    if isinstance(value, list):
        return [encode_state(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def check_int(key: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; ``ValueError`` naming ``key`` otherwise (bools refused)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"saved env state {key!r} is {value!r}; expected an int from {low} to {high}")
    if not low <= value <= high:
        raise ValueError(f"saved env state {key!r} is {value}, outside {low}..{high} for this env")
    return int(value)


def _decode_array(saved: Any, current: np.ndarray, key: str) -> np.ndarray:
    try:
        raw = np.asarray(saved)
    except (ValueError, TypeError) as error:  # ragged lists
        raise ValueError(f"saved env state {key!r} is not an array: {error}") from None
    kinds = "iub" if current.dtype.kind in "iu" else current.dtype.kind
    if raw.dtype.kind not in kinds:
        raise ValueError(f"saved env state {key!r} holds {raw.dtype} values; expected {current.dtype}")
    if raw.shape != current.shape:
        raise ValueError(f"saved env state {key!r} has shape {raw.shape}, the env {current.shape}")
    return raw.astype(current.dtype)


def _decode_rng(saved: Any, key: str) -> np.random.Generator:
    kind = saved.get("bit_generator") if isinstance(saved, dict) else None
    if kind not in BIT_GENERATORS:
        raise ValueError(
            f"saved env state {key!r} has an RNG of kind {kind!r}; expected one of {BIT_GENERATORS}"
        )
    generator = np.random.Generator(getattr(np.random, kind)())
    try:
        generator.bit_generator.state = saved
    except (ValueError, TypeError, KeyError, OverflowError) as error:
        raise ValueError(f"saved env state {key!r} is not a valid {kind} state ({error!r})") from None
    return generator


def decode_state(saved: Any, current: Any, key: str = "state") -> Any:
    """``saved`` turned back into the type of ``current`` (restored in place where it is an object);
    ``ValueError`` naming ``key`` when it is of another type or shape."""
    if isinstance(current, np.ndarray):
        return _decode_array(saved, current, key)
    # an RNG's saved state names its kind; current is None for an RNG the env has not made yet
    kind = saved.get("bit_generator") if isinstance(saved, dict) else None
    if isinstance(current, np.random.Generator) or (current is None and kind is not None):
        return _decode_rng(saved, key)
    if isinstance(current, PromptSampler):
        if not isinstance(saved, list) or len(saved) != 2:
            raise ValueError(f"saved env state {key!r} is {saved!r}; expected [index, remaining]")
        current.index = check_int(f"{key}[0]", saved[0], 0, current.dataset_size - 1)
        current.remaining = check_int(f"{key}[1]", saved[1], 0, current.group_size)
        return current
    if hasattr(current, "load_state_dict"):  # an env inside a vector env
        current.load_state_dict(saved)
        return current
    if isinstance(current, list):
        if not isinstance(saved, list) or len(saved) != len(current):
            size = len(saved) if isinstance(saved, list) else type(saved).__name__
            raise ValueError(f"saved env state {key!r} holds {size} rows, the env {len(current)}")
        pairs = enumerate(zip(saved, current, strict=True))
        return [decode_state(item, now, f"{key}[{i}]") for i, (item, now) in pairs]
    if current is None:  # an RNG the env has not made yet (no reset), and the saved run neither
        if saved is not None:
            raise ValueError(f"saved env state {key!r} is {saved!r}; expected an RNG state or null")
        return None
    if isinstance(current, (bool, np.bool_)):
        if not isinstance(saved, bool):
            raise ValueError(f"saved env state {key!r} is {saved!r}; expected true or false")
        return saved
    if isinstance(current, (int, np.integer)):
        return check_int(key, saved, -(2**63), 2**63 - 1)
    if not isinstance(saved, type(current)):
        raise ValueError(f"saved env state {key!r} is {saved!r}; expected a {type(current).__name__}")
    return saved


def check_layout(
    ids: np.ndarray, mask: np.ndarray, lengths: Any, prompt_len: int, vocab_size: int, names: Sequence[str]
) -> None:
    """The token layout of running episodes: ids in the vocabulary, a 0/1 mask, ``lengths`` generated tokens
    (0 to N) that are exactly the masked part of the N slots. ``names`` name ids, mask and lengths."""
    ids, mask = np.atleast_2d(ids), np.atleast_2d(mask)
    lengths = np.atleast_1d(np.asarray(lengths))
    N = ids.shape[-1] - prompt_len
    if ((ids < 0) | (ids >= vocab_size)).any():
        raise ValueError(f"saved env state {names[0]!r} holds ids outside the vocabulary 0..{vocab_size - 1}")
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"saved env state {names[1]!r} holds values other than 0 and 1")
    if ((lengths < 0) | (lengths > N)).any():
        raise ValueError(
            f"saved env state {names[2]!r} is {lengths.tolist()}, outside 0..{N} (max_new_tokens)"
        )
    if (mask[:, prompt_len:] != (np.arange(N) < lengths[:, None])).any():
        raise ValueError(
            f"saved env state {names[1]!r} does not match {names[2]!r}: the generated tokens must be the "
            f"first {names[2]} of the max_new_tokens slots"
        )


def check_indices(key: str, indices: Any, size: int) -> None:
    """Every dataset index in ``indices`` within ``0..size-1``."""
    for index in np.atleast_1d(np.asarray(indices)).tolist():
        check_int(key, index, 0, size - 1)


def _check_list(key: str, value: Any, kind: type | tuple[type, ...]) -> list[Any]:
    if not isinstance(value, list) or not all(
        isinstance(item, kind) and not isinstance(item, bool) for item in value
    ):
        raise ValueError(f"saved conversation {key!r} must be a list of {getattr(kind, '__name__', kind)}")
    return value


def check_conversation(state: Any, prompt_len: int, vocab_size: int, episodes: int, max_turns: int) -> None:
    """A saved conversation (``ChatCore.conversation_state``) whose values fit this env: types, the token
    layout, lengths, turn positions, the task's episode index and the turn count."""
    if not isinstance(state, dict):
        raise ValueError(f"saved conversation is {type(state).__name__}; expected a dict")
    arrays = {}
    for name in ("ids", "mask", "agent"):
        try:
            arrays[name] = np.asarray(state[name])
        except (ValueError, TypeError):
            arrays[name] = np.asarray([None])
        if arrays[name].dtype.kind not in "iu" or arrays[name].ndim != 1:
            raise ValueError(f"saved conversation {name!r} must be a list of ints")
    N = len(arrays["ids"]) - prompt_len
    length = check_int("length", state["length"], 0, N)
    check_layout(
        arrays["ids"][None], arrays["mask"][None], [length], prompt_len, vocab_size, ("ids", "mask", "length")
    )
    agent = arrays["agent"]
    if ((agent != 0) & (agent != 1)).any() or (agent > arrays["mask"]).any():
        raise ValueError("saved conversation 'agent' must be 0 or 1, and 1 only on real tokens")
    check_int("turn_start", state["turn_start"], 0, length)
    check_int("index", state["index"], 0, episodes - 1)
    check_int("agent_turns", state["agent_turns"], 0, max_turns)
    exchanges = _check_list("exchanges", state["exchanges"], int)
    if exchanges != sorted(exchanges) or any(not 0 <= end <= length for end in exchanges):
        raise ValueError(f"saved conversation 'exchanges' must be increasing positions within 0..{length}")
    _check_list("messages", state["messages"], str)
    turns = _check_list("turns", state["turns"], dict)
    if any(
        set(turn) != {"role", "content"} or not all(isinstance(v, str) for v in turn.values())
        for turn in turns
    ):
        raise ValueError("saved conversation 'turns' must be {'role': str, 'content': str} dicts")
    for name in ("tool_calls", "bad_tool_calls"):  # absent in states saved before tools
        if name in state:
            check_int(name, state[name], 0, 2**31)
    for name in ("success", "done"):
        if not isinstance(state[name], bool):
            raise ValueError(f"saved conversation {name!r} is {state[name]!r}; expected true or false")
