"""Native vector envs match N single envs under SyncVectorEnv with the same seeds and actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import textenv  # noqa: F401

NUM_ENVS = 3


def make_pair(env_id: str, kwargs: dict) -> tuple[gym.vector.VectorEnv, gym.vector.VectorEnv]:
    native = gym.make_vec(env_id, num_envs=NUM_ENVS, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(
        env_id,
        num_envs=NUM_ENVS,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )
    return native, sync


def assert_obs_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def assert_infos_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key == "final_obs":
            for x, y in zip(a[key], b[key], strict=False):
                assert (x is None) == (y is None)
                if x is not None:
                    assert_obs_equal(x, y)
        elif isinstance(a[key], dict):
            assert_infos_equal(a[key], b[key])
        else:
            assert a[key].tolist() == b[key].tolist(), key


@pytest.mark.parametrize(("group_size", "stop_token_ids"), [(1, None), (2, None), (1, [14, 30])])
def test_token_vector_matches_sync(env_kwargs: dict, group_size: int, stop_token_ids: list | None) -> None:
    settings = {"group_size": group_size, "stop_token_ids": stop_token_ids}
    native, sync = make_pair("TextGen-v0", {**env_kwargs, **settings})
    assert native.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert native.single_observation_space == sync.single_observation_space
    obs_a, info_a = native.reset(seed=7)
    obs_b, info_b = sync.reset(seed=7)
    assert_obs_equal(obs_a, obs_b)
    assert_infos_equal(info_a, info_b)
    rng = np.random.default_rng(0)
    eos = native.unwrapped.eos_token_id
    finished = 0
    for _ in range(25):
        actions = rng.integers(3, 400, size=NUM_ENVS)
        actions[rng.random(NUM_ENVS) < 0.2] = eos
        if stop_token_ids:
            actions[rng.random(NUM_ENVS) < 0.2] = rng.choice(stop_token_ids)
        a, b = native.step(actions), sync.step(actions)
        assert_obs_equal(a[0], b[0])
        for x, y in zip(a[1:4], b[1:4], strict=False):
            np.testing.assert_array_equal(x, y)
        assert_infos_equal(a[4], b[4])
        finished += int((a[2] | a[3]).sum())
    assert finished >= 2 * NUM_ENVS


@pytest.mark.parametrize("stop_strings", [None, ["\n"]])
def test_seq_vector_matches_sync(env_kwargs: dict, stop_strings: list | None) -> None:
    native, sync = make_pair("TextGenSeq-v0", {**env_kwargs, "stop_strings": stop_strings})
    obs_a, info_a = native.reset(seed=1)
    obs_b, info_b = sync.reset(seed=1)
    assert_obs_equal(obs_a, obs_b)
    rng = np.random.default_rng(0)
    for _ in range(4):
        actions = rng.integers(0, 512, size=(NUM_ENVS, 5))
        if stop_strings:
            actions[rng.random(NUM_ENVS) < 0.5, 2] = 14  # tiny-sp's newline
        a, b = native.step(actions), sync.step(actions)
        assert_obs_equal(a[0], b[0])
        for x, y in zip(a[1:4], b[1:4], strict=False):
            np.testing.assert_array_equal(x, y)
        assert_infos_equal(a[4], b[4])


def test_vector_scores_in_one_batched_call(env_kwargs: dict) -> None:
    calls: list[int] = []

    def counting_reward(
        prompts: list[str], completions: list[str], references: list | None = None
    ) -> np.ndarray:
        calls.append(len(completions))
        return np.zeros(len(completions), dtype=np.float32)

    envs = gym.make_vec(
        "TextGen-v0",
        num_envs=4,
        vectorization_mode="vector_entry_point",
        **{**env_kwargs, "reward_fn": counting_reward},
    )
    envs.reset(seed=0)
    for _ in range(5):
        _, _, terminated, truncated, info = envs.step(np.full(4, 20))
    assert calls == [4] and truncated.all() and info["_final_info"].all()
    assert info["final_info"]["completion"].shape == (4,)
