"""Turn-level credit (agents.turn_credit) in PPO, REINFORCE and GRPO on multi-turn envs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_agents_chat import StopAfterRollouts, make_env

from agents import GRPO, PPO, REINFORCE, on_policy
from agents.config import PolicyGradientConfig
from agents.turn_credit import turn_advantages, turn_ids


def test_the_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="turn_baseline='mean' is not known"):
        PolicyGradientConfig(turn_baseline="mean")
    with pytest.raises(ValueError, match="turn_gamma must be in"):
        PolicyGradientConfig(turn_gamma=0.0)
    with pytest.raises(TypeError, match="turn_level_credit must be True or False"):
        PolicyGradientConfig(turn_level_credit=1)  # type: ignore[arg-type]


def test_an_episode_that_stops_early_does_not_shift_the_others_baselines() -> None:
    # two groups of two; in each, one episode stops after one turn: later turns compare those that went on
    mask = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 1], [1, 0, 0]])
    rewards = torch.tensor([[0.0, 0, 1], [1.0, 0, 0], [0.0, 0, 3], [0.0, 0, 0]])
    advantages = turn_advantages(rewards, mask, torch.tensor([0, 0, 1, 1]))
    # group 0: turn 0 returns 1 and 1 -> 0, 0; turn 1: episode 0 alone -> baseline 0, advantage 1
    # group 1: turn 0 returns 3 and 0 -> 3, -3; turn 1: episode 2 alone -> 3
    assert advantages.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [3.0, 0.0, 3.0], [-3.0, 0.0, 0.0]]


ALGOS: dict[str, tuple[type, dict[str, Any]]] = {
    "ppo": (PPO, {"whiten_advantages": False, "n_epochs": 1}),
    "reinforce": (REINFORCE, {}),
    "grpo": (GRPO, {}),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_the_option_gives_every_agent_token_its_turns_advantage(name: str, monkeypatch: Any) -> None:
    algo, settings = ALGOS[name]
    torch.set_num_threads(1)
    kl = {} if algo is GRPO else {"init_kl_coef": 0.0}  # the turn rewards are then the task's alone
    env = make_env(num_envs=4, group_size=2, task_kwargs={"high": 3, "invalid_cost": 0.2}, max_turns=3)
    common = {"model": "tiny-sp", "episodes_per_rollout": 8, "minibatch_size": 4, "seed": 0}
    agent = algo(env, turn_level_credit=True, **common, **kl, **settings)

    seen: list[tuple[Any, torch.Tensor]] = []
    original = on_policy.rollout_samples  # every on-policy agent's minibatches come through it

    def spy(batch: Any, scored: Any, **kwargs: Any) -> Any:
        seen.append((batch, kwargs["advantages"]))
        return original(batch, scored, **kwargs)

    monkeypatch.setattr(on_policy, "rollout_samples", spy)
    agent.learn(total_timesteps=10**6, callback=StopAfterRollouts(1))
    assert seen
    batch, advantages = seen[0]
    expected = turn_advantages(batch.token_rewards, batch.gen_mask, batch.group_ids)
    torch.testing.assert_close(advantages, expected)  # (E, N): ignoring the option gives GAE's or (E,) ones
    ids = turn_ids(batch.gen_mask)
    assert int(ids.max()) >= 1 and expected.abs().sum() > 0  # several turns, and something to learn from
