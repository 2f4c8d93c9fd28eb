"""DQN: n-step/double-DQN math, the compact replay buffer, SB3 tooling, exact resume, bad input, learning."""

from __future__ import annotations

import time
import tracemalloc

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger

import textenv  # noqa: F401  (registers the envs)
from agents.dqn import DQN, DQNConfig
from agents.q_learning import conservative_penalty, double_dqn_values, n_step_targets
from agents.replay import ReplayBuffer
from agents.vec_env import wrap_vector_env


def letter_e_fraction(prompts, completions, references=None) -> np.ndarray:
    """Share of the completion's non-space characters that are the letter "e" (the agents' learning task)."""
    return np.array([c.count("e") / max(1, len(c.replace(" ", ""))) for c in completions], dtype=np.float32)


def make_env(num_envs: int = 2, split: str = "train", max_new_tokens: int = 4, max_prompt_tokens: int = 8):
    return gym.make_vec(
        "TextGen-v0",
        num_envs=num_envs,
        model="tiny-sp",
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        reward_fn=letter_e_fraction,
        split=split,
        vectorization_mode="vector_entry_point",
    )


def small(**kwargs) -> DQN:
    settings = {"learning_starts": 8, "batch_size": 8, "buffer_size": 256, "seed": 0, **kwargs}
    return DQN(make_env(), model="tiny-sp", **settings)


# ---- math ------------------------------------------------------------------------------------------------
def test_n_step_targets_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]])  # 2nd episode ends after 2 tokens
    bootstrap = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    one = n_step_targets(rewards, bootstrap, mask, gamma=0.9, n_steps=1)
    # t: r_t + 0.9 * V(s_{t+1}); the last real token has no bootstrap
    assert torch.allclose(one, torch.tensor([[1.8, 2.7, 3.6, 2.0], [5.4, 3.0, 0.0, 0.0]]))
    two = n_step_targets(rewards, bootstrap, mask, gamma=0.9, n_steps=2)
    # t=0: 0 + 0.9*0 + 0.81*V(s_2)=0.81*3; t=1: 0 + 0.9*0 + 0.81*4; t=2: 0 + 0.9*2; t=3: 2
    assert torch.allclose(two, torch.tensor([[2.43, 3.24, 1.8, 2.0], [2.7, 3.0, 0.0, 0.0]]))
    monte_carlo = n_step_targets(rewards, bootstrap, mask, gamma=1.0, n_steps=8)
    assert torch.allclose(monte_carlo, torch.tensor([[2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 0.0, 0.0]]))


def test_double_dqn_and_conservative_penalty() -> None:
    online = torch.tensor([[0.0, 5.0, 1.0], [9.0, 0.0, 0.0]])
    target = torch.tensor([[7.0, -1.0, 3.0], [2.0, 8.0, 8.0]])
    assert double_dqn_values(online, target).tolist() == [-1.0, 2.0]  # online picks, target values
    ref = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]]), -1)
    q = torch.tensor([[0.5, -1.0, 2.0]])
    expected = torch.logsumexp(q, -1) - (ref.exp() * q).sum(-1)
    assert torch.allclose(conservative_penalty(q, ref), expected.mean())
    assert conservative_penalty(q + 100.0, ref).item() == pytest.approx(
        expected.item(), abs=1e-4
    )  # shift-inv.


# ---- replay buffer ---------------------------------------------------------------------------------------
def test_replay_rebuilds_the_observation_layout_and_evicts() -> None:
    buf = ReplayBuffer(buffer_size=5, prompt_len=3, max_new_tokens=3, pad_token_id=0, vocab_size=50)
    buf.add([11, 12], [21, 22, 23], reward=1.0)
    buf.add([13], [24, 25], reward=2.0)
    assert len(buf) == 5 and buf.n_episodes == 2
    batch = buf.sample(64, np.random.default_rng(0))
    rows = {tuple(r) for r in batch.input_ids.tolist()}
    assert rows == {(0, 11, 12, 21, 22, 23), (0, 0, 13, 24, 25, 0)}
    for row, pos in zip(batch.rows.tolist(), batch.positions.tolist(), strict=True):
        assert batch.gen_mask[row, pos] == 1
    buf.add([14], [26, 27], reward=3.0)  # overwrites the first episode's first two transitions
    assert len(buf) == 5 and buf.n_episodes == 3
    buf.add([15], [28, 29, 30], reward=4.0)  # overwrites the rest: the first two episodes are gone
    assert sorted(buf.episodes) == [2, 3]


def test_replay_100k_transitions_under_200mb(capsys) -> None:
    """SmolLM2 layout (P=64, N=48, vocab 49,152), episodes of 1..48 tokens, 100k transitions."""
    rng = np.random.default_rng(0)
    tracemalloc.start()
    buf = ReplayBuffer(100_000, prompt_len=64, max_new_tokens=48, pad_token_id=2, vocab_size=49_152)
    added = 0
    while added < 120_000:  # wrap around the ring too
        length = int(rng.integers(1, 49))
        buf.add(rng.integers(0, 49_152, 64), rng.integers(0, 49_152, length), float(rng.random()))
        added += length
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(buf) == 100_000
    padded = 100_000 * 2 * (64 + 48) * 8  # one int64 (input_ids, attention_mask) pair per transition
    with capsys.disabled():
        print(
            f"\nreplay 100k transitions: nbytes={buf.nbytes / 2**20:.1f} MiB, traced peak={peak / 2**20:.1f} "
            f"MiB, {buf.n_episodes} episodes (padded observations would take {padded / 2**20:.0f} MiB)"
        )
    assert buf.nbytes < 200 * 2**20 and peak < 200 * 2**20


# ---- config and bad input --------------------------------------------------------------------------------
def test_config_validation_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match="lower batch_size"):
        DQNConfig(batch_size=64, buffer_size=10)
    with pytest.raises(ValueError, match="'episode'"):
        DQNConfig(train_freq=(1, "epoch"))
    with pytest.raises(ValueError, match="-1"):
        DQNConfig(gradient_steps=0)
    assert DQNConfig(train_freq=4).train_freq == (4, "step")
    assert DQNConfig.smollm2_sentiment(batch_size=16).batch_size == 16


@pytest.mark.parametrize(
    "env",
    [
        lambda: gym.make("TextGenSeq-v0", model="tiny-sp", max_new_tokens=4, max_prompt_tokens=8),
        lambda: gym.make("Pendulum-v1"),
    ],
    ids=["sequence-level", "box"],
)
def test_non_discrete_action_space_is_refused(env) -> None:
    with pytest.raises(ValueError, match="use agents.PPO or agents.REINFORCE"):
        DQN(env(), model="tiny-sp")


# ---- SB3 tooling, logging, exact resume ------------------------------------------------------------------
class StopAfter(BaseCallback):
    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def _on_step(self) -> bool:
        return self.n_calls < self.calls


def test_callbacks_tensorboard_and_early_stop(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    agent = small(tensorboard_log=str(tmp_path / "runs"))
    callbacks = [
        CheckpointCallback(save_freq=16, save_path=str(tmp_path / "ckpt")),
        EvalCallback(
            wrap_vector_env(make_env()), eval_freq=16, n_eval_episodes=2, log_path=str(tmp_path / "eval")
        ),
    ]
    agent.learn(total_timesteps=64, callback=callbacks, log_interval=2)
    assert (tmp_path / "ckpt" / "rl_model_32_steps" / "target.safetensors").is_file()
    assert (tmp_path / "eval" / "evaluations.npz").is_file()
    (run_dir,) = (tmp_path / "runs" / "TextGen-v0" / "DQN").iterdir()
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/q_mean", "rollout/exploration_rate", "rollout/ep_rew_mean"} <= tags
    assert small().learn(total_timesteps=1000, callback=StopAfter(3)).num_timesteps == 6  # 3 steps x 2 envs


def test_save_load_resumes_exactly(tmp_path) -> None:
    agent = small(learning_rate=1e-3, target_update_interval=8)
    agent.learn(total_timesteps=48)
    agent.save(tmp_path / "agent")
    resumed = DQN.load(tmp_path / "agent", env=make_env())
    assert (resumed.num_timesteps, resumed._n_updates) == (agent.num_timesteps, agent._n_updates)
    assert resumed.exploration_rate == agent.exploration_rate and len(resumed.replay) == len(agent.replay)
    for a, b in zip(agent.target.parameters(), resumed.target.parameters(), strict=True):
        assert torch.equal(a, b)
    resumed.set_logger(Logger(None, []))
    agent.train(2, batch_size=8)  # same replay samples, optimizer state and weights -> same update
    resumed.train(2, batch_size=8)
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


# ---- learning --------------------------------------------------------------------------------------------
def held_out_reward(agent: DQN) -> float:
    eval_env = make_env(8, split="test", max_new_tokens=8, max_prompt_tokens=16)
    eval_env.reset(seed=123)
    mean, _ = evaluate_policy(agent, wrap_vector_env(eval_env), n_eval_episodes=64, deterministic=True)
    return float(mean)


def test_dqn_learns(capsys) -> None:
    torch.set_num_threads(1)
    agent = DQN(
        make_env(8, max_new_tokens=8, max_prompt_tokens=16),
        model="tiny-sp",
        seed=0,
        learning_rate=3e-4,
        learning_starts=256,
        batch_size=64,
        gradient_steps=2,
        target_update_interval=256,
        n_steps=4,
        top_k=0,
        exploration_fraction=0.5,
    )
    before = held_out_reward(agent)
    start = time.perf_counter()
    agent.learn(total_timesteps=3072)
    seconds = time.perf_counter() - start
    after = held_out_reward(agent)
    with capsys.disabled():
        print(f"\nDQN greedy held-out reward: before {before:.3f}, after {after:.3f}, learn {seconds:.1f} s")
    assert after - before > 0.25, (before, after)
