"""Soft (KL-regularised) Q-learning in DQN: the math by hand, the settings, and what it learns."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from test_agents_learning import letter_e_fraction
from test_agents_learning import make_env as learning_env
from test_dqn import LEARNING_SCHEDULE

import textenv  # noqa: F401  (registers the envs)
from agents import DQN
from agents.policy import completion_logits
from agents.replay import ReplaySamples
from agents.soft_q import soft_q_loss, soft_targets, taken_log_probs
from agents.vec_env import wrap_vector_env


def test_soft_targets_by_hand() -> None:
    """Two episodes of 3 tokens; the second ends after 2. The target of token t is
    beta * l_t + sum_{k<n} (r_{t+k} - beta * l_{t+k}) + V(s_{t+n})."""
    ratios = torch.tensor([[0.5, -1.0, 2.0], [1.0, 3.0, 0.0]])
    values = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    batch = ReplaySamples(None, None, mask, rewards, None, None)  # type: ignore[arg-type]
    beta = 0.1
    one = soft_targets(ratios, values, batch, beta, gamma=1.0, n_steps=1)
    # n = 1: r_t + V(s_{t+1}); the last real token has no bootstrap
    assert torch.allclose(one, torch.tensor([[20.0, 30.0, 1.0], [50.0, 2.0, 0.0]]))
    two = soft_targets(ratios, values, batch, beta, gamma=1.0, n_steps=2)
    # t=0: 0 + (0 - 0.1 * -1) + V(s_2)=30; t=1: 0 + (1 - 0.1 * 2); episode 2, t=0: 0 + (2 - 0.1 * 3)
    assert torch.allclose(two, torch.tensor([[30.1, 0.8, 1.0], [1.7, 2.0, 0.0]]))
    scaled = soft_targets(ratios, values, batch, beta, gamma=1.0, n_steps=1, reward_scale=5.0)
    assert scaled[0, 2].item() == pytest.approx(5.0) and scaled[1, 1].item() == pytest.approx(10.0)


def test_soft_q_loss_pushes_the_taken_tokens_log_probability_and_the_value() -> None:
    """Q(s, a) = V(s) + beta * log(pi / pi_ref): below its target, the gradient raises the taken token's
    log-probability (the others' fall, as the softmax is normalised) and the value."""
    logits = torch.zeros(1, 1, 3, requires_grad=True)  # (U, N, A): uniform policy = the reference
    values = torch.zeros(1, 1, requires_grad=True)
    batch = ReplaySamples(
        torch.tensor([[7, 1]]),
        torch.ones(1, 2),
        torch.ones(1, 1),
        torch.tensor([[1.0]]),
        torch.tensor([0]),
        torch.tensor([0]),
    )
    networks = (logits, values, logits.detach(), values.detach(), torch.zeros(1, 1, 3), batch)
    terms = soft_q_loss(*networks, beta=0.5, gamma=1.0, n_steps=1, level=0.0)
    assert terms.q_taken.item() == pytest.approx(0.0) and terms.targets.item() == pytest.approx(1.0)
    terms.loss.backward()
    assert values.grad is not None and values.grad.item() < 0  # descending raises V
    assert logits.grad is not None
    assert logits.grad[0, 0, 1] < 0 < logits.grad[0, 0, 0]  # token 1 (taken) up, the others down
    taken = torch.tensor([[1]])
    reference = taken_log_probs(torch.zeros(1, 1, 3), taken)
    assert (taken_log_probs(logits.detach(), taken) - reference).item() == 0
    with_cql = soft_q_loss(*networks, beta=0.5, gamma=1.0, n_steps=1, conservative_coef=1.0)
    assert with_cql.penalty is not None and with_cql.penalty.item() == pytest.approx(math.log(3))  # Q uniform


@pytest.mark.parametrize(
    ("settings", "fix"),
    [
        ({"soft_q_coef": -0.1, "exploration": "policy"}, "soft_q_coef=-0.1"),
        ({"soft_q_coef": 0.1}, "exploration='policy'"),
        ({"exploration": "greedy"}, "exploration='greedy' is unknown"),
    ],
)
def test_soft_settings_say_how_to_fix(settings: dict, fix: str) -> None:
    from agents.dqn import DQNConfig

    with pytest.raises(ValueError, match=fix):
        DQNConfig(**settings)


def make_env(num_envs: int, reward_fn, split: str = "train") -> gym.vector.VectorEnv:
    return learning_env(num_envs, split, reward_fn=reward_fn)


def constant_reward(prompts, completions, references=None) -> np.ndarray:
    return np.full(len(completions), -5.0, dtype=np.float32)


def soft_agent(reward_fn, seed: int = 0, **overrides) -> DQN:
    settings = dict(
        LEARNING_SCHEDULE,
        learning_rate=1e-3,
        soft_q_coef=0.05,
        exploration="policy",
        conservative_coef=0.0,
        reward_scale=5.0,
    )
    return DQN(make_env(8, reward_fn), model="tiny-sp", seed=seed, **{**settings, **overrides})


def test_a_reward_no_token_changes_leaves_the_soft_policy_alone() -> None:
    """Every episode earns -5: V(s) takes the level, and the policy, which soft Q-learning reads as
    log(pi / pi_ref), stays at the reference (no token is better than another)."""
    torch.set_num_threads(1)
    agent = soft_agent(constant_reward, learning_starts=64, batch_size=16)
    agent.learn(total_timesteps=64)  # fills the replay
    states = agent.replay.sample(64, np.random.default_rng(1))
    mask = states.gen_mask.bool()

    def log_probs() -> torch.Tensor:
        with torch.no_grad():
            ids, attn = states.input_ids, states.attention_mask
            out, _ = completion_logits(agent.policy, ids, attn, 8, agent.n_actions)
        return torch.log_softmax(out.float(), -1)[mask]  # (T, A) at the replay's transitions

    before = log_probs()
    agent.learn(total_timesteps=512, reset_num_timesteps=False)
    after = log_probs()
    kl = (after.exp() * (after - before)).sum(-1).mean().item()
    assert kl < 0.05, kl
    assert (after.argmax(-1) != before.argmax(-1)).float().mean().item() < 0.2


def held_out_reward(agent: DQN) -> float:
    """Mean reward of 64 test episodes sampled from the policy (the soft policy is stochastic)."""
    eval_env = make_env(8, letter_e_fraction, split="test")
    eval_env.reset(seed=123)
    torch.manual_seed(123)
    mean, _ = evaluate_policy(agent, wrap_vector_env(eval_env), n_eval_episodes=64, deterministic=False)
    return float(mean)


def test_soft_dqn_learns() -> None:
    torch.set_num_threads(1)
    agent = soft_agent(letter_e_fraction)
    before = held_out_reward(agent)
    agent.learn(total_timesteps=8000)  # seeds 0 / 1 / 2: 0.057 -> 0.394 / 0.384 / 0.407
    after = held_out_reward(agent)
    assert after - before > 0.25, (before, after)
    assert math.isfinite(agent.logger.name_to_value.get("train/td_loss", 0.0))


def test_benchmark_cli_runs_soft_q_learning(tmp_path) -> None:
    import json

    from benchmarks import run, suite

    argv = ["--task", "error-rate", "--algo", "dqn", "--dqn-soft-q-coef", "0.05", "--budget", "40"]
    argv += ["--num-envs", "2", "--max-new-tokens", "2", "--model", "tiny-sp", "--threads", "1"]
    argv += ["--no-progress-bar", "--eval-prompts", "2", "--logdir", str(tmp_path)]
    args = run.parse_args(argv)
    assert "--dqn-soft-q-coef 0.05" in " ".join(suite.job_argv(args, seed=0))  # a suite passes it on
    (run_dir,) = run.main(argv)
    agent = json.loads((run_dir / "summary.json").read_text())["agent"]
    assert agent["soft_q_coef"] == 0.05 and agent["exploration"] == "policy", agent
    assert agent["conservative_coef"] == 0


def test_soft_dqn_is_its_own_table_column() -> None:
    """``--algo soft-dqn`` is DQN at beta 0.05 (recorded in the run's args), a job of its own in the suite:
    neither a dqn run nor a dqn run at beta 0.05 (the pilot's) counts as one."""
    from agents import ALGORITHMS
    from benchmarks import run, suite

    soft = run.Args(task="similarity", algo="soft-dqn", budget="10240")
    assert soft.dqn_soft_q_coef == run.SOFT_DQN_COEF == 0.05
    assert run.Args(task="similarity", algo="soft-dqn", dqn_soft_q_coef=0.2).dqn_soft_q_coef == 0.2
    assert ALGORITHMS["soft-dqn"].agent is ALGORITHMS["dqn"].agent  # one DQN, soft Q-learning by its settings
    assert ALGORITHMS["soft-dqn"].settings["exploration"] == "policy"
    pilot = dataclasses.asdict(dataclasses.replace(soft, algo="dqn"))
    assert suite.same_job(dataclasses.asdict(soft), soft)
    assert not suite.same_job(pilot, soft)
    assert not suite.same_job(pilot | {"dqn_target": "sarsa", "algo": "soft-dqn"}, soft)  # DQN options count
    assert "soft-dqn" in suite.TABLE_ALGOS
