"""The environments' arguments, checked once: one frozen dataclass per kind of env, validated when it is made.

:class:`~textenv.envs.arguments.EnvArguments` holds what every textenv env takes (model or tokenizer, sizes,
prompt groups, ``render_mode``); :class:`~textenv.envs.arguments.TextGenArguments` adds the prompts, the
reward and the stop tokens of ``TextGen-v0`` and ``TextGenSeq-v0``;
:class:`~textenv.envs.arguments.ChatArguments` the task and turn limits of ``TextChat-v0`` and
``TextChatSeq-v0``. The env constructors take these fields as their keyword arguments and pass them here; what
needs the tokenizer (the vocabulary, the stop ids) is checked when the core resolves it
(:class:`textenv.envs.core.TokenCore`).

>>> TextGenArguments(max_new_tokens=8, stop_strings=["\\n"]).stop_strings
('\\n',)
>>> ChatArguments(max_turn_tokens=200, max_new_tokens=100)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: max_turn_tokens=200 exceeds max_new_tokens=100 (the slots after the opening): raise ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rewards.validation import check_reward
from textenv.chat_tasks import ChatTask
from textenv.data import DatasetSource
from textenv.tasks import SPLITS

RENDER_MODES = ("ansi", "human")
"""The render modes of every textenv env."""

RewardFn = Callable[..., Any]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int (numpy ints too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_num_envs(num_envs: Any) -> int:
    """A vector env's ``num_envs``, checked: a positive int.

    >>> check_num_envs(0)
    Traceback (most recent call last):
    ...
    ValueError: num_envs=0 must be a positive int, e.g. num_envs=8.
    """
    if not is_int(num_envs) or num_envs < 1:
        raise ValueError(f"num_envs={num_envs!r} must be a positive int, e.g. num_envs=8.")
    return int(num_envs)


MAX_SEQUENCE_TOKENS = 1 << 20
"""The most slots (``max_prompt_tokens`` or ``max_new_tokens``) an env's observation may have: beyond any
model's context, and each env holds several int64 arrays of that length."""


def check_sequence_size(max_prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse sizes whose observation arrays could not be built (a clear error instead of a MemoryError)."""
    for name, value in (("max_prompt_tokens", max_prompt_tokens), ("max_new_tokens", max_new_tokens)):
        if value > MAX_SEQUENCE_TOKENS:
            raise ValueError(
                f"{name}={value} is beyond {MAX_SEQUENCE_TOKENS} tokens, more than any model reads; use the "
                "model's context length at most, e.g. 512"
            )


@dataclass(frozen=True, kw_only=True)
class EnvArguments:
    """What every textenv env takes; each is checked in ``__post_init__`` with a message that says how to fix
    it."""

    model: str | Path | None = None
    """A textenv model name or a local HF directory: its tokenizer (and config) is loaded, not its weights.
    None with no ``tokenizer``: the default model."""
    tokenizer: Any | None = None
    """A tokenizer object instead of ``model`` (no pad token: EOS is used)."""
    split: str = "train"
    """The prompts' (or the chat task's episodes') split."""
    max_prompt_tokens: int = 64
    """P: prompt slots (a longer prompt keeps its last P tokens)."""
    max_new_tokens: int = 48
    """N: generated slots."""
    group_size: int = 1
    """Each sampled prompt is used for k episodes in a row (RLOO groups)."""
    vocab_size: int | None = None
    """The action space's size; None: the larger of ``len(tokenizer)`` and the model config's."""
    render_mode: str | None = None
    """``"ansi"`` or ``"human"``."""

    positive_ints: ClassVar[tuple[str, ...]] = ("max_prompt_tokens", "max_new_tokens", "group_size")
    """The fields that must be positive ints, in the order they are checked."""

    def __post_init__(self) -> None:
        for name in self.positive_ints:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int, e.g. {name}=8.")
        check_sequence_size(self.max_prompt_tokens, self.max_new_tokens)
        if self.vocab_size is not None and (not is_int(self.vocab_size) or self.vocab_size < 1):
            raise ValueError(
                f"vocab_size={self.vocab_size!r} must be a positive int, or None (the tokenizer's)."
            )
        if self.model is not None and self.tokenizer is not None:
            raise ValueError(
                "Pass either model= (a name or path, whose tokenizer is loaded) or tokenizer=, not both."
            )
        if self.model is not None and not isinstance(self.model, (str, os.PathLike)):
            raise TypeError(
                "model= takes a model name or the path of a local directory, got "
                f"{type(self.model).__name__}; pass model='tiny-sp' (for example), or a tokenizer object as "
                "tokenizer=."
            )
        if isinstance(self.tokenizer, (str, os.PathLike)):
            raise TypeError(
                f"tokenizer={str(self.tokenizer)!r} is a name, not a tokenizer; pass "
                f"model={str(self.tokenizer)!r} to load its tokenizer, or a tokenizer object (e.g. "
                "textenv.load_tokenizer(name))."
            )
        if self.render_mode is not None and self.render_mode not in RENDER_MODES:
            raise ValueError(
                f"render_mode={self.render_mode!r} is not supported; use one of {list(RENDER_MODES)}."
            )


@dataclass(frozen=True, kw_only=True)
class TextGenArguments(EnvArguments):
    """The arguments of ``TextGen-v0`` and ``TextGenSeq-v0`` (their docstrings describe each)."""

    task: str | None = None
    """A built-in prompt task (:data:`textenv.TASKS`); None with no ``dataset``: the default task."""
    dataset: DatasetSource | None = None
    """Your prompts: a ``PromptDataset``, a list, or the path of a .jsonl or .csv file."""
    reward_fn: RewardFn | None = None
    """``(prompts, completions, references=None) -> scores``; None: VADER sentiment."""
    stop_token_ids: Iterable[int] | None = None
    """Ids that end an episode like EOS (a tuple once checked)."""
    stop_strings: Sequence[str] | None = None
    """Strings whose tokens end an episode (a tuple once checked)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task is not None and self.dataset is not None:
            raise ValueError("Pass either task= (a built-in task name) or dataset= (your prompts), not both.")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not known; use one of {', '.join(SPLITS)}.")
        if self.dataset is not None and self.split != "train":
            raise ValueError(
                f"split={self.split!r} applies to the prompts of task=, not to dataset= (used as given); "
                "pass the test prompts themselves as dataset=, or drop split=."
            )
        if self.reward_fn is not None:
            check_reward(self.reward_fn, "reward_fn")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", self._checked_stop_ids(self.stop_token_ids))
        if self.stop_strings is not None:
            strings = self.stop_strings
            if isinstance(strings, str) or not all(isinstance(s, str) and s for s in strings):
                raise TypeError(
                    f"stop_strings={strings!r} must be a list of non-empty strings, e.g. "
                    'stop_strings=["\\n"].'
                )
            object.__setattr__(self, "stop_strings", tuple(strings))

    @staticmethod
    def _checked_stop_ids(stop_token_ids: Any) -> tuple[int, ...]:
        """``stop_token_ids`` as a tuple of ints (their range is checked against the vocabulary later)."""
        if isinstance(stop_token_ids, (str, bytes)) or is_int(stop_token_ids):
            iterable = False
        else:
            iterable = hasattr(stop_token_ids, "__iter__")
        if not iterable:
            raise TypeError(
                f"stop_token_ids={stop_token_ids!r} must be a list of token ids, e.g. stop_token_ids=[198]."
            )
        ids = tuple(stop_token_ids)
        for token in ids:
            if not is_int(token):
                raise TypeError(f"stop_token_ids holds {token!r}; each must be an int token id, e.g. 198.")
        return tuple(int(token) for token in ids)


@dataclass(frozen=True, kw_only=True)
class ChatArguments(EnvArguments):
    """The arguments of ``TextChat-v0`` and ``TextChatSeq-v0`` (their docstrings describe each)."""

    task: str | ChatTask = "guess"
    """A built-in chat task name or a :class:`textenv.chat_tasks.ChatTask`."""
    task_kwargs: dict[str, Any] | None = None
    """Settings of a named task."""
    max_prompt_tokens: int = 96
    max_new_tokens: int = 160
    max_turn_tokens: int = 16
    """Token limit of one agent message."""
    max_turns: int = 6
    """Agent messages per conversation."""

    positive_ints: ClassVar[tuple[str, ...]] = (
        "max_prompt_tokens",
        "max_new_tokens",
        "max_turn_tokens",
        "max_turns",
        "group_size",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_turn_tokens > self.max_new_tokens:
            raise ValueError(
                f"max_turn_tokens={self.max_turn_tokens} exceeds max_new_tokens={self.max_new_tokens} (the "
                "slots after the opening): raise max_new_tokens or lower max_turn_tokens."
            )
