"""DQN's lambda-returns (``DQNConfig.td_lambda``): the two ends are the one-step and the Monte Carlo targets,
on the tiny model lambda = 1 reads no bootstrap value, and a lambda out of [0, 1] is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_agents_learning import make_env

import textenv  # noqa: F401  (registers the envs)
from agents import q_learning, soft_q
from agents.dqn import DQN, DQNConfig
from agents.q_learning import lambda_returns, n_step_targets


def test_lambda_ends_are_one_step_and_monte_carlo() -> None:
    rewards = torch.tensor([[0.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]])  # the 2nd episode has 2 tokens
    bootstrap = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    one_step = n_step_targets(rewards, bootstrap, mask, gamma=0.9, n_steps=1)
    monte_carlo = n_step_targets(rewards, bootstrap, mask, gamma=0.9, n_steps=4)
    assert torch.allclose(lambda_returns(rewards, bootstrap, mask, gamma=0.9, lam=0.0), one_step)
    assert torch.allclose(lambda_returns(rewards, bootstrap, mask, gamma=0.9, lam=1.0), monte_carlo)
    # in between: the weighted mix of the n-step returns (1 - lam) * sum_n lam^(n-1) G^(n), the rest on G^(N)
    lam, first = 0.5, [n_step_targets(rewards, bootstrap, mask, 0.9, n)[0, 0] for n in (1, 2, 3, 4)]
    mix = (1 - lam) * (first[0] + lam * first[1] + lam**2 * first[2]) + lam**3 * first[3]
    assert torch.isclose(lambda_returns(rewards, bootstrap, mask, gamma=0.9, lam=lam)[0, 0], mix)


@pytest.mark.parametrize("soft", [False, True], ids=["dueling", "soft-q"])
def test_monte_carlo_targets_ignore_the_target_values_on_the_tiny_model(soft: bool) -> None:
    """lambda = 1: the targets are the (soft) returns, so moving the target network's V changes none of them;
    lambda = 0.5 reads V, so the same move changes them."""
    settings = dict(soft_q_coef=0.1, exploration="policy") if soft else dict(dueling=True)
    env = make_env(2, max_new_tokens=4, max_prompt_tokens=8)
    agent = DQN(env, model="tiny-sp", learning_starts=8, batch_size=8, buffer_size=256, seed=0, **settings)
    agent.learn(total_timesteps=24)
    batch = agent.replay.sample(16, np.random.default_rng(0))
    networks = q_learning.QNetworks(online=agent.engine, target=agent.target, reference=agent.reference)
    update = soft_q.update_terms if soft else q_learning.update_terms

    def targets(lam: float) -> torch.Tensor:
        config = DQNConfig(**settings, td_lambda=lam)
        terms = update(
            networks, batch, config, level=0.0, n_actions=agent.n_actions, exploration=agent.exploration
        )
        return terms.targets.detach().clone()

    before = {lam: targets(lam) for lam in (1.0, 0.5)}
    with torch.no_grad():
        agent.target.value_head.bias.add_(3.0)  # every V(s) of the target network goes up by 3
    assert torch.equal(targets(1.0), before[1.0])
    assert not torch.allclose(targets(0.5), before[0.5])


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_lambda_out_of_range_is_refused(lam: float) -> None:
    with pytest.raises(ValueError, match="td_lambda"):
        DQNConfig(td_lambda=lam)
