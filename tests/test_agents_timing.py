"""The agents' time breakdown (``time/*_s``): where an iteration's seconds go, logged every iteration."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.logger import KVWriter, Logger

import textenv  # noqa: F401
from agents import PPO, REINFORCE

PHASES = ("act", "env", "reward", "score", "update", "other")
DELAY = 0.02  # seconds each reward call sleeps


class Recorder(KVWriter):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
        self.rows.append(dict(key_values))


class SlowReward:
    """Sleeps ``DELAY`` seconds per batched call, and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompts, completions, references=None) -> np.ndarray:
        self.calls += 1
        time.sleep(DELAY)
        return np.array([len(c) / 10 for c in completions], dtype=np.float32)


@pytest.mark.parametrize("algo", [PPO, REINFORCE])
def test_phases_add_up_and_catch_a_slow_reward(algo) -> None:
    reward = SlowReward()
    kw = {"model": "tiny-sp", "max_new_tokens": 4, "max_prompt_tokens": 8, "reward_fn": reward}
    env = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point", **kw)
    agent = algo(env, model="tiny-sp", episodes_per_rollout=4, minibatch_size=2, seed=0)
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    started = time.perf_counter()
    agent.learn(total_timesteps=24)
    elapsed = time.perf_counter() - started
    rows = [row for row in recorder.rows if "time/act_s" in row]
    assert rows, f"{algo.__name__} logged no time breakdown"
    seconds = {name: sum(row[f"time/{name}_s"] for row in rows) for name in PHASES}
    assert all(seconds[name] >= 0 for name in ("act", "env", "reward", "score", "update")), seconds
    assert seconds["score"] > 0 and seconds["act"] > 0  # the scoring pass and the forwards are timed
    # the reward phase holds the reward's own time (the last call may fall after the last logged iteration)
    assert seconds["reward"] >= DELAY * (reward.calls - 1), (seconds, reward.calls)
    assert seconds["reward"] < DELAY * reward.calls + 0.5  # and nothing of the forwards
    assert sum(seconds.values()) <= elapsed  # the phases partition the iterations, inside the call
    assert sum(seconds.values()) > 0.5 * elapsed
