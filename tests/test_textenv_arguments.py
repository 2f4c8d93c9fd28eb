"""The env arguments are one frozen, checked object per env kind, shared by the token-level and chat envs."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401  (registers the envs)
from textenv.envs import ChatArguments, EnvArguments, TextGenArguments, TokenCore
from textenv.envs.chat_core import ChatCore


def test_env_arguments_are_checked_once_and_kept_frozen(env_kwargs: dict[str, Any]) -> None:
    env = gym.make("TextGen-v0", **env_kwargs, stop_strings=["\n"], stop_token_ids=np.array([7]))
    args = env.unwrapped.core.args
    assert isinstance(args, TextGenArguments) and args.max_new_tokens == env_kwargs["max_new_tokens"]
    assert args.stop_strings == ("\n",) and args.stop_token_ids == (7,)  # normalised once
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.max_new_tokens = 3  # type: ignore[misc]
    chat = gym.make("TextChat-v0", model="tiny-sp", max_turn_tokens=4).unwrapped.core
    assert isinstance(chat.args, ChatArguments) and chat.args.max_turns == 6


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"vocab_size": "many"}, ValueError, "vocab_size='many' must be a positive int, or None"),
        (
            {"tokenizer": "tiny-sp", "model": None},
            TypeError,
            "tokenizer='tiny-sp' is a name, not a tokenizer",
        ),
        ({"model": 3}, TypeError, "model= takes a model name or the path"),
        ({"render_mode": "rgb_array"}, ValueError, r"render_mode='rgb_array' is not supported.*'ansi'"),
        ({"group_size": 0}, ValueError, "group_size=0 must be a positive int"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode")  # gymnasium's own warning, before our error
def test_chat_envs_check_the_shared_arguments_as_the_text_envs_do(
    overrides: dict[str, Any], error: type, match: str
) -> None:
    """One set of checks (EnvArguments) for every env: the chat envs give the text envs' messages."""
    for env_id in ("TextGen-v0", "TextChat-v0"):
        with pytest.raises(error, match=match):
            gym.make(env_id, **{"model": "tiny-sp", **overrides})
    with pytest.raises(error, match=match):
        EnvArguments(**overrides)


def test_both_cores_share_the_token_checks() -> None:
    """The chat core is a TokenCore (no borrowed methods): the same action check, with its own vocabulary."""
    assert "check_tokens" not in vars(ChatCore) and issubclass(ChatCore, TokenCore)
    core = gym.make("TextChat-v0", model="tiny-sp", max_turn_tokens=4).unwrapped.core
    with pytest.raises(ValueError, match=r"contains token id 100000 outside the vocabulary \[0, 512\)"):
        core.check_tokens(np.int64(100_000), (), "TextChat-v0 action")


def test_sequence_vector_rows_share_the_core_and_own_their_episodes(env_kwargs: dict[str, Any]) -> None:
    envs = gym.make_vec("TextGenSeq-v0", num_envs=3, vectorization_mode="vector_entry_point", **env_kwargs)
    rows = envs.unwrapped.envs
    assert all(row.core is envs.unwrapped.core for row in rows)
    assert len({id(row._sampler) for row in rows}) == 3  # each row draws its own prompts
    _, info = envs.reset(seed=5)
    single = gym.make("TextGenSeq-v0", **env_kwargs).unwrapped
    for row in range(3):  # row i is the single env seeded with 5 + i
        assert single.reset(seed=5 + row)[1]["prompt"] == info["prompt"][row]
