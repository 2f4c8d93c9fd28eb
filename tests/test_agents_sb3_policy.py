"""Stock Stable-Baselines3 PPO trains a transformer through TransformerActorCriticPolicy on TextGen-v0."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401  (registers the envs)
from agents.policy import ActorCritic
from agents.sb3_policy import TransformerActorCriticPolicy


def letter_e_fraction(prompts, completions, references=None) -> np.ndarray:
    """Share of the completion's non-space characters that are the letter "e"."""
    return np.array([c.count("e") / max(1, len(c.replace(" ", ""))) for c in completions], dtype=np.float32)


ENV_KW: dict[str, Any] = {
    "model": "tiny-sp",
    "max_prompt_tokens": 8,
    "max_new_tokens": 4,
    "reward_fn": letter_e_fraction,
}


def make_vec(n_envs: int, seed: int) -> DummyVecEnv:
    vec = DummyVecEnv([lambda: Monitor(gym.make("TextGen-v0", **ENV_KW))] * n_envs)
    vec.seed(seed)
    return vec


def make_agent(env: Any, **kwargs: Any) -> PPO:
    settings = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0, **kwargs}
    return PPO(TransformerActorCriticPolicy, env, policy_kwargs={"model": "tiny-sp"}, **settings)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_distribution_is_the_lms_next_token_distribution() -> None:
    """Logits are the LM's at the last real token (left-padded prompt, right-padded completion)."""
    agent = make_agent(make_vec(1, seed=0))
    policy = agent.policy
    ids = torch.tensor(
        [[3, 3, 3, 40, 41, 42, 43, 44, 50, 51, 3, 3], [3, 3, 60, 61, 62, 63, 64, 65, 3, 3, 3, 3]]
    )
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
    obs = {"input_ids": ids.float(), "attention_mask": mask.float()}  # float32, as SB3's buffer stores them
    with torch.no_grad():
        dist = policy.get_distribution(obs).distribution
        values = policy.predict_values(obs)
        reference = ActorCritic(policy.lm)
        logits, _ = reference(ids, mask)  # (B, T, V), full-length forward with position ids from the mask
    expected = logits[torch.arange(2), torch.tensor([9, 7])]  # last real tokens
    torch.testing.assert_close(dist.logits, torch.log_softmax(expected, -1), atol=1e-5, rtol=1e-5)
    assert values.shape == (2, 1) and torch.all(values == 0)  # zero-initialised value head


def test_stock_ppo_learn_evaluate_save_load(tmp_path) -> None:
    env = make_vec(2, seed=0)
    agent = make_agent(env)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=256)
    assert agent.num_timesteps >= 256
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))
    assert agent.policy.lm.training is False  # dropout stays off in SB3's training mode

    mean, _ = evaluate_policy(agent, make_vec(2, seed=1), n_eval_episodes=4)
    assert 0.0 <= mean <= 1.0

    agent.save(tmp_path / "sb3_ppo")
    loaded = PPO.load(tmp_path / "sb3_ppo", env=make_vec(2, seed=0))
    assert isinstance(loaded.policy, TransformerActorCriticPolicy)
    for a, b in zip(agent.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    obs = env.reset()
    for _ in range(3):
        action, _ = agent.predict(obs, deterministic=True)
        again, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(action, again)
        obs, *_ = env.step(action)


def test_bad_settings_are_refused() -> None:
    env = make_vec(1, seed=0)
    with pytest.raises(ValueError, match="net_arch"):
        PPO(TransformerActorCriticPolicy, env, policy_kwargs={"model": "tiny-sp", "net_arch": [64]})
    seq_env = gym.make("TextGenSeq-v0", **ENV_KW)
    with pytest.raises(ValueError, match="not Discrete"):
        PPO(TransformerActorCriticPolicy, seq_env, policy_kwargs={"model": "tiny-sp"})
    gpt2_env = gym.make("TextGen-v0", **{**ENV_KW, "model": "tiny-gpt2"})  # 50257 actions, tiny-sp has 512
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        PPO(TransformerActorCriticPolicy, gpt2_env, policy_kwargs={"model": "tiny-sp"})


def test_stock_ppo_learns() -> None:
    """Held-out mean reward (share of "e") rises by a clear margin after 4096 steps of stock SB3 PPO."""
    agent = make_agent(make_vec(4, seed=0), learning_rate=1e-3, batch_size=64, n_epochs=4, ent_coef=0.0)
    eval_env = make_vec(4, seed=1)

    def held_out() -> float:
        torch.manual_seed(1)
        eval_env.seed(1)
        return float(evaluate_policy(agent, eval_env, n_eval_episodes=64)[0])

    before = held_out()
    agent.learn(total_timesteps=4096)
    after = held_out()
    assert after - before > 0.2, (before, after)
