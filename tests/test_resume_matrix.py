"""Resume matrix: every agent on every kind of env continues a saved run exactly.

N steps straight equal N/2 + save + load + the rest, for PPO, REINFORCE, GRPO and DQN on a single env (SB3
wraps it in its Monitor), a Gymnasium vector env, an SB3 VecEnv and the multi-turn chat env. Tolerance: none,
the parameters are bit-identical (DQN with an exponential exploration schedule: SB3's linear schedule spans
each ``learn()`` call's own ``total_timesteps``, so a resumed linear schedule differs by design)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401  (registers the envs)
from agents import DQN, GRPO, PPO, REINFORCE


def letter_e(prompts, completions, references=None) -> np.ndarray:
    return np.array([c.count("e") / max(1, len(c.replace(" ", ""))) for c in completions], dtype=np.float32)


TOKEN = {"model": "tiny-sp", "max_new_tokens": 6, "max_prompt_tokens": 12, "reward_fn": letter_e}
CHAT = {
    "model": "tiny-sp",
    "task_kwargs": {"high": 2, "invalid_cost": 0.2},
    "max_prompt_tokens": 48,
    "max_new_tokens": 40,
    "max_turn_tokens": 6,
    "max_turns": 2,
}
ENVS: dict[str, Any] = {  # each takes the env's group_size (GRPO compares the samples of a prompt)
    "single": lambda k: gym.make("TextGen-v0", group_size=k, **TOKEN),
    "gym-vector": lambda k: gym.make_vec(
        "TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point", group_size=k, **TOKEN
    ),
    "sb3-vecenv": lambda k: DummyVecEnv([lambda: gym.make("TextGen-v0", group_size=k, **TOKEN)] * 2),
    "chat": lambda k: gym.make_vec(
        "TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point", group_size=k, **CHAT
    ),
}
AGENTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ppo": (PPO, {"episodes_per_rollout": 4, "minibatch_size": 4}),
    "reinforce": (REINFORCE, {"episodes_per_rollout": 4, "minibatch_size": 4}),
    "grpo": (GRPO, {"episodes_per_rollout": 4, "minibatch_size": 4, "beta": 0.05}),
    "dqn": (DQN, {"learning_starts": 8, "batch_size": 4, "exploration_schedule": "exponential"}),
}


@pytest.mark.parametrize("env_kind", list(ENVS))
@pytest.mark.parametrize("name", list(AGENTS))
def test_resume_continues_exactly(tmp_path: Path, name: str, env_kind: str) -> None:
    algo, settings = AGENTS[name]
    group_size, total = (2 if algo is GRPO else 1), 48
    make_env = lambda: ENVS[env_kind](group_size)  # noqa: E731
    straight = algo(make_env(), model="tiny-sp", seed=0, learning_rate=1e-3, **settings)
    straight.learn(total)
    first = algo(make_env(), model="tiny-sp", seed=0, learning_rate=1e-3, **settings)
    first.learn(total // 2)
    first.save(tmp_path / "half")
    resumed = algo.load(tmp_path / "half", env=make_env())
    resumed.learn(total - resumed.num_timesteps, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
