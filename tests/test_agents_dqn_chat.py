"""DQN on multi-turn envs: only the agent's tokens are transitions, TD targets bootstrap from one agent token
to the next across the other party's turn, the loss never reads the other party's positions, and DQN trains
(and resumes exactly) on TextChat-v0."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_agents_chat import GAME  # the guessing game both test modules play

import textenv  # noqa: F401  (registers the envs)
from agents import DQN
from agents.exploration import epsilon_greedy_probs
from agents.q_learning import TARGETS, agent_td_targets, n_step_targets, q_loss
from agents.replay import ReplayBuffer


def make_env(num_envs: int = 4, **overrides) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "TextChat-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **{**GAME, **overrides}
    )


# ---- targets and loss ------------------------------------------------------------------------------------
def test_targets_bootstrap_from_the_next_agent_token_across_the_env_turn() -> None:
    # the agent writes slots 0, 1 (its turn ends, reward 0.5), the env slots 2, 3, the agent 4, 5 (reward 1)
    agent = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])  # slot 6: padding
    rewards = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[1.0, 2.0, 70.0, 80.0, 3.0, 4.0, 90.0]])  # the env's slots must never be read
    one = agent_td_targets(values, agent, rewards, gamma=0.5, n_steps=1)
    # slot 1 -> 0.5 + 0.5 * V(slot 4), the agent's next state (after the env's turn); the end: no bootstrap
    assert one.tolist() == [[1.0, 0.5 + 1.5, 0.0, 0.0, 2.0, 1.0, 0.0]]
    two = agent_td_targets(values, agent, rewards, gamma=0.5, n_steps=2)
    # n counts agent tokens: slot 0 -> 0.5 * 0.5 + 0.25 * V(slot 4); slot 1 -> 0.5 + 0.25 * V(slot 5)
    assert two.tolist() == [[0.25 + 0.75, 0.5 + 1.0, 0.0, 0.0, 0.5, 1.0, 0.0]]
    kept = [0, 1, 4, 5]  # the same as n-step targets over the agent's tokens alone
    alone = n_step_targets(rewards[:, kept], values[:, kept], torch.ones(1, 4), gamma=0.5, n_steps=2)
    assert torch.equal(two[:, kept], alone)


def conversations() -> tuple[ReplayBuffer, torch.Tensor]:
    """A replay of two conversations (agent and env tokens interleaved) and its N-slot agent masks."""
    replay = ReplayBuffer(64, prompt_len=3, max_new_tokens=8, pad_token_id=0, vocab_size=16)
    agent = [np.array([1, 1, 0, 0, 0, 1, 1, 1]), np.array([1, 0, 0, 1, 1])]
    replay.add([9, 9], [3, 4, 12, 13, 14, 5, 6, 2], [0, 0.5, 0, 0, 0, 0, 0, 1.0], agent[0])
    replay.add([8], [7, 12, 13, 6, 2], [-0.2, 0, 0, 0, 1.0], agent[1])
    masks = torch.zeros(2, 8)
    for row, flags in enumerate(agent):
        masks[row, : len(flags)] = torch.as_tensor(flags)
    return replay, masks


def test_replay_keeps_only_the_agents_tokens_as_transitions(tmp_path: Path) -> None:
    replay, masks = conversations()
    assert len(replay) == int(masks.sum()) == 8 and replay.n_episodes == 2  # 5 + 3 agent tokens
    batch = replay.sample(256, np.random.default_rng(0))
    assert torch.equal(batch.gen_mask, masks) and batch.rewards[0].tolist() == [0, 0.5, 0, 0, 0, 0, 0, 1.0]
    assert bool(batch.gen_mask[batch.rows, batch.positions].all())  # every sampled position is an action
    assert len(set(zip(batch.rows.tolist(), batch.positions.tolist(), strict=True))) == 8
    assert batch.attention_mask[1].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]  # env tokens are context
    replay.save(tmp_path / "replay.npz")
    loaded = ReplayBuffer(64, prompt_len=3, max_new_tokens=8, pad_token_id=0, vocab_size=16)
    loaded.load(tmp_path / "replay.npz")
    again = loaded.sample(256, np.random.default_rng(0))
    for name in ("input_ids", "gen_mask", "rewards", "rows", "positions"):
        assert torch.equal(getattr(again, name), getattr(batch, name)), name
    replay.add([1], [3, 4], [0.0, 1.0], np.array([0, 0]))  # no agent token: nothing to learn from
    assert replay.n_episodes == 2
    with pytest.raises(ValueError, match="one value per token"):
        replay.add([1], [3, 4], [1.0], np.array([1, 1]))


@pytest.mark.parametrize("target", TARGETS)
def test_loss_and_gradients_ignore_the_other_partys_positions(target: str) -> None:
    """Q-values (online, target network, reference) at the env's slots change nothing: not the targets, not
    the loss, and no gradient reaches them."""
    torch.manual_seed(0)
    replay, masks = conversations()
    batch = replay.sample(32, np.random.default_rng(1))
    env_slots = (masks == 0)[..., None]  # (U, N, 1)
    q, target_q, ref = torch.randn(3, 2, 8, 16).unbind(0)

    def loss(q: torch.Tensor, target_q: torch.Tensor, ref: torch.Tensor):
        mu = epsilon_greedy_probs(q.detach(), ref, epsilon=0.3)
        return q_loss(
            q,
            target_q,
            batch,
            target=target,
            gamma=0.9,
            n_steps=2,
            reward_scale=2.0,
            ref_logits=ref,
            conservative_coef=0.1,
            behaviour_probs=mu,
        )

    online = q.clone().requires_grad_(True)
    terms = loss(online, target_q, ref)
    terms.loss.backward()
    assert online.grad is not None and online.grad.abs().sum() > 0
    assert bool((online.grad * env_slots).eq(0).all())
    noisy = [torch.where(env_slots, 100 * torch.randn_like(x), x) for x in (q, target_q, ref)]
    changed = loss(*noisy)
    for name in ("loss", "td_loss", "penalty", "q_taken", "targets"):
        torch.testing.assert_close(getattr(changed, name), getattr(terms, name), rtol=0, atol=0, msg=name)


# ---- the agent -------------------------------------------------------------------------------------------
def test_dqn_learns_from_agent_tokens_of_text_chat() -> None:
    torch.set_num_threads(1)
    agent = DQN(
        make_env(),
        model="tiny-sp",
        learning_starts=16,
        batch_size=8,
        buffer_size=4096,
        seed=0,
        train_freq=(4, "episode"),
        gradient_steps=1,
    )
    added: list[tuple[int, int]] = []  # (agent tokens, all generated tokens) of each finished episode
    collect = agent.collect_rollouts

    def counting(env, callback):
        running = collect(env, callback)
        for episode in agent.rollout.episodes:
            generated = episode.attention_mask[agent.prompt_len :].astype(bool)
            added.append((int(episode.agent_mask[generated].sum()), int(generated.sum())))
        return running

    agent.collect_rollouts = counting  # type: ignore[method-assign]
    agent.learn(total_timesteps=120)
    assert agent._n_updates >= 1 and np.isfinite(agent.logger.name_to_value["train/loss"])
    agents, generated = map(sum, zip(*added, strict=True))
    assert len(agent.replay) == agents < generated  # the host's tokens are no transitions
    batch = agent.replay.sample(64, agent.replay_rng)
    assert bool(batch.gen_mask[batch.rows, batch.positions].all())
    assert (batch.attention_mask[:, agent.prompt_len :] > batch.gen_mask).any()  # host tokens, in context


def test_dqn_resumes_text_chat_exactly(tmp_path: Path) -> None:
    """N env steps straight equal N/2 + save + load + N/2: the chat env's state_dict() carries its running
    conversations (and the dialogue's state) into the checkpoint."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Rewards(BaseCallback):
        def __init__(self, into: list[float]) -> None:
            super().__init__()
            self.into = into

        def _on_step(self) -> bool:
            dones = self.locals["dones"]
            self.into += [float(r) for r, d in zip(self.locals["rewards"], dones, strict=True) if d]
            return True

    torch.set_num_threads(1)
    settings = dict(model="tiny-sp", seed=0, learning_rate=1e-3, learning_starts=16, batch_size=8)
    settings |= dict(buffer_size=1024, train_freq=(4, "episode"), gradient_steps=1, target_update_interval=24)
    # epsilon on a schedule in env steps (the linear one spans each learn() call's own total_timesteps)
    settings |= dict(exploration_schedule="exponential", exploration_decay=0.99)
    total = 96
    straight: list[float] = []
    agent = DQN(make_env(), **settings)
    agent.learn(total, callback=Rewards(straight))
    resumed_rewards: list[float] = []
    first = DQN(make_env(), **settings)
    first.learn(total // 2 + 4, callback=Rewards(resumed_rewards))  # mid-conversation: not at a rollout end
    first.save(tmp_path / "half")
    resumed = DQN.load(tmp_path / "half", env=make_env())
    resumed.learn(total - resumed.num_timesteps, callback=Rewards(resumed_rewards), reset_num_timesteps=False)
    assert resumed.num_timesteps == agent.num_timesteps and len(straight) >= 8
    assert resumed_rewards == straight
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
