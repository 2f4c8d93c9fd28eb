"""More of SB3's own tooling, unchanged: CallbackList, StopTrainingOnRewardThreshold, configure() loggers,
DummyVecEnv of single envs, for each of our agents."""

from __future__ import annotations

import csv

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.callbacks import CallbackList, EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401
from agents import DQN, PPO, REINFORCE

KW = {"model": "tiny-sp", "max_new_tokens": 4, "max_prompt_tokens": 8}


def reward(prompts, completions, references=None) -> np.ndarray:
    return np.array([c.count("e") / max(1, len(c)) for c in completions], dtype=np.float32)


def make_env() -> gym.Env:
    return gym.make("TextGen-v0", reward_fn=reward, **KW)


SETTINGS = {
    PPO: {"episodes_per_rollout": 4, "minibatch_size": 2},
    REINFORCE: {"episodes_per_rollout": 4, "minibatch_size": 2},
    DQN: {"learning_starts": 8, "batch_size": 4, "buffer_size": 1_000},
}


@pytest.mark.parametrize("algo", [PPO, REINFORCE, DQN], ids=lambda a: a.__name__)
def test_stop_on_threshold_with_configured_logger(algo, tmp_path) -> None:
    venv = DummyVecEnv([make_env, make_env])
    agent = algo(venv, model="tiny-sp", seed=0, **SETTINGS[algo])
    agent.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    # any mean reward passes a threshold of -1, so the first evaluation must stop training
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1.0)
    evaluation = EvalCallback(make_env(), eval_freq=4, n_eval_episodes=2, callback_on_new_best=stop)
    agent.learn(total_timesteps=4_000, callback=CallbackList([evaluation]))
    assert evaluation.n_calls == 4, "training went on after StopTrainingOnRewardThreshold returned False"
    assert agent.num_timesteps == 8  # 4 calls x 2 envs
    with open(tmp_path / "log" / "progress.csv") as handle:
        assert list(csv.DictReader(handle)), "the configured csv logger received no rows"
