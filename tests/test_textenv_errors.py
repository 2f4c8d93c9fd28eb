"""Bad input raises a clear error that names the problem and the fix."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import textenv


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (512, ValueError, "outside the vocabulary"),
        (-1, ValueError, "outside the vocabulary"),
        (1.0, TypeError, "integer token ids"),
        ("a", TypeError, "integer token ids"),
        (np.array([1, 2]), ValueError, "shape"),
    ],
)
def test_bad_token_action(env_kwargs: dict, action: object, error: type, match: str) -> None:
    env = gym.make("TextGen-v0", **env_kwargs)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)


def test_bad_sequence_action(env_kwargs: dict) -> None:
    env = gym.make("TextGenSeq-v0", **env_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        env.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(np.full(5, 10_000))


def test_vector_bad_actions(env_kwargs: dict) -> None:
    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.array([1, 2]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        envs.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        envs.step(np.array([1, 99999]))


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_step_after_end_needs_reset(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **env_kwargs).unwrapped  # unwrapped: our own message, not OrderEnforcing's
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())
    env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
    with pytest.raises(RuntimeError, match=r"after the episode ended.*reset\(\)"):
        env.step(env.action_space.sample())


def test_unknown_names(env_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Known names: smollm2-135m-instruct, tiny-smollm2"):
        gym.make("TextGen-v0", model="no-such-model")
    with pytest.raises(ValueError, match="Known tasks"):
        gym.make("TextGen-v0", tokenizer=env_kwargs["tokenizer"], task="no-such-task")
    with pytest.raises(ValueError, match="empty"):
        gym.make("TextGen-v0", tokenizer=env_kwargs["tokenizer"], dataset=[])
    with pytest.raises(ValueError, match="either task= .* or dataset="):
        gym.make("TextGen-v0", tokenizer=env_kwargs["tokenizer"], task="shakespeare", dataset=["x"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        gym.make("TextGen-v0", **{**env_kwargs, "max_new_tokens": 0})


@pytest.mark.parametrize(
    ("reward_fn", "error", "match"),
    [
        (lambda p, c, r=None: np.zeros(len(c) + 1), ValueError, "one score per completion"),
        (lambda p, c, r=None: np.full(len(c), np.nan), ValueError, "non-finite"),
        (lambda p, c, r=None: np.full(len(c), np.inf), ValueError, "non-finite"),
        (lambda p, c, r=None: ["good"] * len(c), TypeError, "not a numeric array"),
    ],
)
def test_bad_reward_fn(env_kwargs: dict, reward_fn: object, error: type, match: str) -> None:
    env = gym.make("TextGenSeq-v0", **{**env_kwargs, "reward_fn": reward_fn})
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(env.action_space.sample())
    with pytest.raises(TypeError, match="callable"):
        gym.make("TextGenSeq-v0", **{**env_kwargs, "reward_fn": 3})


def test_unknown_model_loaders() -> None:
    with pytest.raises(ValueError, match="Known names"):
        textenv.load_model("gpt-17")
    with pytest.raises(ValueError, match="Known names"):
        textenv.load_tokenizer("./no/such/dir")
