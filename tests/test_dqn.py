"""DQN: n-step targets (double DQN, Q-learning, SARSA, expected SARSA), exploration and its schedules, the
compact replay buffer, SB3 tooling, exact resume, bad input, learning."""

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
from test_agents_learning import make_env as learning_env

import textenv  # noqa: F401  (registers the envs)
from agents import q_learning
from agents.dqn import DQN, DQNConfig
from agents.exploration import (
    Exploration,
    boltzmann,
    boltzmann_probs,
    epsilon_greedy,
    epsilon_greedy_probs,
    scheduled_value,
)
from agents.policy import Sampling, completion_logits
from agents.q_learning import (
    TARGETS,
    bootstrap_values,
    conservative_penalty,
    double_dqn_values,
    episode_td_targets,
    n_step_targets,
)
from agents.replay import ReplayBuffer
from agents.vec_env import wrap_vector_env


def make_env(num_envs: int = 2, split: str = "train", max_new_tokens: int = 4, max_prompt_tokens: int = 8):
    return learning_env(num_envs, split, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens)


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


def test_dueling_q_values_keep_the_greedy_token() -> None:
    logits = torch.tensor([[[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]]])
    values = torch.tensor([[-4.0, 0.5]])
    q = q_learning.q_values(logits, values)
    assert torch.equal(q.argmax(-1), logits.argmax(-1))
    assert torch.allclose(q, torch.tensor([[[-7.0, -4.0, -8.0], [-2.5, -3.5, 0.5]]]))  # greedy token: V(s)
    assert torch.equal(q_learning.q_values(logits), logits)  # not dueling: the logits themselves


def constant_reward(prompts, completions, references=None) -> np.ndarray:
    return np.full(len(completions), -5.0, dtype=np.float32)


def reward_blind_training(dueling: bool) -> tuple[float, float]:
    """Train on a reward no token changes (every episode earns -5, far below the tiny model's logits, about
    +1): (the mean change of the logit of the tokens taken, the share of replay states whose greedy token
    changed)."""
    torch.set_num_threads(1)
    env = gym.make_vec(
        "TextGen-v0",
        num_envs=4,
        model="tiny-sp",
        max_new_tokens=4,
        max_prompt_tokens=8,
        reward_fn=constant_reward,
        vectorization_mode="vector_entry_point",
    )
    settings = {"learning_starts": 32, "batch_size": 16, "target_update_interval": 32, "n_steps": 4}
    agent = DQN(env, model="tiny-sp", seed=0, learning_rate=1e-3, dueling=dueling, top_k=0, **settings)
    agent.learn(total_timesteps=32)  # fills the replay; the first update runs after this
    states = agent.replay.sample(64, np.random.default_rng(1))
    mask = states.gen_mask.bool()
    taken = states.input_ids[:, -4:][mask]

    def logits() -> torch.Tensor:
        with torch.no_grad():
            out, _ = completion_logits(
                agent.policy, states.input_ids, states.attention_mask, 4, agent.n_actions
            )
        return out.float()[mask]  # (T, A) at the replay's transitions

    before = logits()
    agent.learn(total_timesteps=256, reset_num_timesteps=False)
    after = logits()
    moved = (after - before).gather(-1, taken[:, None]).mean().item()
    return moved, (after.argmax(-1) != before.argmax(-1)).float().mean().item()


def test_a_reward_no_token_changes_moves_the_value_not_the_logits() -> None:
    """No token is better than another, so the policy has nothing to learn. Dueling Q takes the rewards'
    level in V(s) (the replay's mean return plus the value head) and the logits stay close; raw-logit Q drags
    the logits of the tokens taken down towards -5 and the greedy tokens change: the collapse of raw-logit
    DQN on the error-rate benchmark (KL 94 nats)."""
    dueling_moved, dueling_flipped = reward_blind_training(dueling=True)
    raw_moved, raw_flipped = reward_blind_training(dueling=False)
    assert abs(dueling_moved) < 0.5 and raw_moved < -1.5, (dueling_moved, raw_moved)
    assert dueling_flipped < 0.5 < raw_flipped, (dueling_flipped, raw_flipped)


def test_each_target_by_hand() -> None:
    """One episode of 3 tokens over a 3-token vocabulary; the reward 1 follows the last token."""
    online = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0]]])  # argmax: 0, 1, 2
    target = torch.tensor([[[2.0, 4.0, 6.0], [1.0, 3.0, 5.0], [7.0, 8.0, 9.0]]])
    taken = torch.tensor([[2, 0, 1]])  # the tokens the stored episode took
    uniform_ref = torch.zeros(1, 3, 3)  # pi_explore uniform: (1 - eps) on argmax Q, eps / 3 on each token
    mu = epsilon_greedy_probs(online, uniform_ref, epsilon=0.5)
    assert torch.allclose(mu[0, 1], torch.tensor([1 / 6, 1 / 2 + 1 / 6, 1 / 6]))
    bootstrap = {
        "double_q": [2.0, 3.0, 9.0],  # target network at the online argmax
        "q_learning": [6.0, 5.0, 9.0],  # max of the target network
        "sarsa": [6.0, 1.0, 8.0],  # target network at the taken token
        "expected_sarsa": [
            3.0,
            3.0,
            8.5,
        ],  # 0.5 * (argmax value) + 0.5 * mean: 0.5*2 + 0.5*4, 0.5*3 + 0.5*3, ...
    }
    assert set(bootstrap) == set(TARGETS)
    one_step = {
        "double_q": [1.5, 4.5],
        "q_learning": [2.5, 4.5],
        "sarsa": [0.5, 4.0],
        "expected_sarsa": [1.5, 4.25],
    }
    for name, values in bootstrap.items():
        v = bootstrap_values(name, online, target, taken, mu)
        assert v.tolist() == [values], name
        # n=1, gamma=0.5: 0.5 * V(s_{t+1}), and the reward on the last token
        targets = episode_td_targets(v, torch.ones(1, 3), torch.tensor([1.0]), gamma=0.5, n_steps=1)
        assert targets.tolist() == [[*one_step[name], 1.0]], name
        # n=2: 0.25 * V(s_2) for t=0; t=1 reaches the end (0.5 * reward), no bootstrap past it
        two = episode_td_targets(v, torch.ones(1, 3), torch.tensor([1.0]), gamma=0.5, n_steps=2)
        assert two.tolist() == [[0.25 * values[2], 0.5, 1.0]], name
    greedy = epsilon_greedy_probs(online, uniform_ref, epsilon=0.0)  # expected SARSA at eps 0 is double DQN
    assert torch.equal(
        bootstrap_values("expected_sarsa", online, target, taken, greedy), double_dqn_values(online, target)
    )
    softmax = boltzmann_probs(online, temperature=0.5)
    assert torch.allclose(softmax, torch.softmax(online * 2, -1))
    with pytest.raises(ValueError, match="behaviour_probs"):
        bootstrap_values("expected_sarsa", online, target, taken)
    with pytest.raises(ValueError, match="double_q, q_learning, sarsa, expected_sarsa"):
        bootstrap_values("td_lambda", online, target, taken)


def test_behaviour_probs_are_what_exploration_samples() -> None:
    """Expected SARSA's behaviour policy is the distribution acting samples from, filters included."""
    torch.manual_seed(0)
    q = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.5]]).expand(40_000, 5)
    ref = torch.tensor([[1.0, 2.0, 0.0, 3.0, -1.0]]).expand(40_000, 5)
    sampling = Sampling(temperature=2.0, top_k=3)  # token 2 and 4 are never explored
    counts = torch.bincount(epsilon_greedy(q, ref, 0.3, sampling), minlength=5) / 40_000
    probs = epsilon_greedy_probs(q[:1], ref[:1], 0.3, sampling)[0]
    assert probs[2] == probs[4] == 0 and torch.allclose(counts, probs, atol=0.01), (counts, probs)
    counts = torch.bincount(boltzmann(q, temperature=2.0), minlength=5) / 40_000
    assert torch.allclose(counts, boltzmann_probs(q[:1], 2.0)[0], atol=0.01)


def test_exploration_schedules() -> None:
    linear = [
        scheduled_value("linear", 1.0, 0.1, t, horizon=100, fraction=0.5, decay=1.0) for t in (0, 25, 50, 90)
    ]
    assert linear == pytest.approx([1.0, 0.55, 0.1, 0.1])
    exponential = [
        scheduled_value("exponential", 1.0, 0.1, t, horizon=100, fraction=0.5, decay=0.5) for t in range(5)
    ]
    assert exponential == pytest.approx(
        [1.0, 0.5, 0.25, 0.125, 0.1]
    )  # multiplied per step, down to the final
    explore = Exploration("boltzmann", initial=2.0, final=0.5, schedule="linear", fraction=1.0)
    assert explore.update(0, horizon=100) == 2.0 and explore.horizon == 100
    assert explore.update(50, horizon=60) == 1.25 and explore.horizon == 100  # a resumed learn keeps T
    assert explore.update(0, horizon=60) == 2.0 and explore.horizon == 60  # a learn that resets restarts it
    assert Exploration("epsilon_greedy", 1.0, 0.0).sampling.unchanged  # temperature 1, no top-k/top-p
    config = DQN.config_class(temperature=0.7, top_k=5, top_p=0.9)
    assert Exploration.from_config(config).sampling == Sampling(temperature=0.7, top_k=5, top_p=0.9)


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
    with pytest.raises(ValueError, match="use one of double_q, q_learning, sarsa, expected_sarsa"):
        DQNConfig(target="sarsa_lambda")
    with pytest.raises(ValueError, match="use one of epsilon_greedy, boltzmann"):
        DQNConfig(exploration="softmax")
    with pytest.raises(ValueError, match="use one of linear, exponential"):
        DQNConfig(exploration_schedule="cosine")
    with pytest.raises(ValueError, match=r"exploration_decay=1.5: use a factor in \(0, 1\]"):
        DQNConfig(exploration_schedule="exponential", exploration_decay=1.5)
    with pytest.raises(ValueError, match="Boltzmann temperatures must be > 0"):
        DQNConfig(exploration="boltzmann", exploration_final_temperature=0.0)
    with pytest.raises(ValueError, match=r"temperature=0.0 \(of the reference LM's samples\) must be > 0"):
        DQNConfig(temperature=0.0)
    with pytest.raises(ValueError, match="swap them or use exploration_schedule='linear'"):
        DQNConfig(exploration_schedule="exponential", exploration_initial_eps=0.1, exploration_final_eps=0.5)


def test_benchmark_cli_selects_the_target(tmp_path) -> None:
    import json

    from benchmarks import run, suite

    argv = ["--task", "error-rate", "--algo", "dqn", "--dqn-target", "expected_sarsa", "--budget", "40"]
    argv += ["--num-envs", "2", "--max-new-tokens", "2", "--model", "tiny-sp", "--threads", "1"]
    argv += ["--no-progress-bar", "--eval-prompts", "2", "--logdir", str(tmp_path)]
    args = run.parse_args(argv)
    assert args.dqn_target == "expected_sarsa" and run.parse_args([]).dqn_target == "double_q"
    assert "--dqn-target expected_sarsa" in " ".join(suite.job_argv(args, seed=0))  # a suite passes it on
    with pytest.raises(ValueError, match="--dqn-target 'td' is not known; use one of double_q, q_learning"):
        run.Args(algo="dqn", dqn_target="td")
    (run_dir,) = run.main(argv)
    assert json.loads((run_dir / "summary.json").read_text())["agent"]["target"] == "expected_sarsa"


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


def test_exploration_schedule_continues_after_load(tmp_path) -> None:
    """Epsilon is a function of env steps and of T, the total of the learn call that began the schedule; a
    checkpoint keeps T, so a resumed learn continues where the interrupted one stopped."""
    agent = small(exploration_fraction=1.0, exploration_final_eps=0.0)
    agent.learn(total_timesteps=96, callback=StopAfter(24))  # interrupted after 48 of 96 steps
    assert agent.num_timesteps == 48 and agent.exploration_rate == pytest.approx(
        1 - 46 / 96
    )  # before step 46
    agent.save(tmp_path / "agent")
    resumed = DQN.load(tmp_path / "agent", env=make_env())
    assert resumed.exploration.horizon == 96 and resumed.exploration_rate == agent.exploration_rate
    resumed.learn(total_timesteps=24, reset_num_timesteps=False)  # SB3's progress would restart over 48 + 24
    assert resumed.num_timesteps == 72 and resumed.exploration_rate == pytest.approx(1 - 70 / 96)


def test_boltzmann_exponential_schedule_logs_temperature_and_resumes(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = {"exploration": "boltzmann", "exploration_schedule": "exponential", "exploration_decay": 0.99}
    settings |= {"exploration_initial_temperature": 2.0, "exploration_final_temperature": 0.5}
    agent = small(tensorboard_log=str(tmp_path / "runs"), **settings)
    agent.learn(total_timesteps=32, log_interval=2)
    assert agent.exploration.value == pytest.approx(2.0 * 0.99**30)  # 2 envs: the last step starts at 30
    assert agent._reference_cache.past is None  # Boltzmann exploration never runs the reference LM
    (run_dir,) = (tmp_path / "runs" / "TextGen-v0" / "DQN").iterdir()
    tags = set(EventAccumulator(str(run_dir)).Reload().Tags()["scalars"])
    assert "rollout/temperature" in tags and "rollout/exploration_rate" not in tags
    agent.save(tmp_path / "agent")
    resumed = DQN.load(tmp_path / "agent", env=make_env())
    assert resumed.exploration.value == agent.exploration.value
    resumed.learn(total_timesteps=16, reset_num_timesteps=False)
    assert resumed.exploration.value == pytest.approx(2.0 * 0.99**46)


def test_every_target_trains_with_n_step_returns_and_cql(monkeypatch) -> None:
    agent = small(n_steps=2, conservative_coef=0.1, learning_rate=1e-3)
    agent.learn(total_timesteps=32)
    values, used = agent.logger.name_to_value, []

    def spy(target, online_q, target_q, actions, behaviour_probs=None):
        used.append((target, behaviour_probs is not None))
        return bootstrap_values(target, online_q, target_q, actions, behaviour_probs)

    monkeypatch.setattr(q_learning, "bootstrap_values", spy)
    for target in TARGETS:
        agent.config.target = target
        agent.train(1, batch_size=8)
        assert np.isfinite(values["train/loss"]) and values["train/conservative_penalty"] > 0, target
    assert used == [(target, target == "expected_sarsa") for target in TARGETS]
    agent.config.conservative_coef = 0.0  # expected SARSA alone still runs the reference LM for pi_explore
    agent.train(1, batch_size=8)
    agent.exploration = Exploration("boltzmann", initial=1.0, final=0.1)  # ... and Boltzmann needs none
    agent.train(1, batch_size=8)
    assert np.isfinite(values["train/td_loss"]) and len(used) == 6


# ---- learning --------------------------------------------------------------------------------------------
LEARNING_SCHEDULE = {
    "learning_starts": 256,
    "batch_size": 64,
    "gradient_steps": 2,
    "target_update_interval": 256,
    "n_steps": 4,
    "top_k": 0,
}
"""The replay and update schedule under which DQN learns the tiny task (tests/test_dqn_soft.py's soft-Q agent
learns under it too)."""


def held_out_reward(agent: DQN) -> float:
    eval_env = make_env(8, split="test", max_new_tokens=8, max_prompt_tokens=16)
    eval_env.reset(seed=123)
    mean, _ = evaluate_policy(agent, wrap_vector_env(eval_env), n_eval_episodes=64, deterministic=True)
    return float(mean)


# SARSA and expected SARSA bootstrap the exploring policy's values, so epsilon decays within the first
# quarter (at 0.5, expected SARSA's greedy token on this random tiny model flips to one non-text token late in
# training, on 2 of seeds 0-2; over seeds 0-2 at 0.25 both end at least 0.30 above the start)
@pytest.mark.parametrize(
    ("target", "exploration_fraction"), [("double_q", 0.5), ("sarsa", 0.25), ("expected_sarsa", 0.25)]
)
def test_dqn_learns(target: str, exploration_fraction: float, capsys) -> None:
    torch.set_num_threads(1)
    agent = DQN(
        make_env(8, max_new_tokens=8, max_prompt_tokens=16),
        model="tiny-sp",
        seed=0,
        learning_rate=3e-4,
        **LEARNING_SCHEDULE,
        exploration_fraction=exploration_fraction,
        target=target,
    )
    before = held_out_reward(agent)
    start = time.perf_counter()
    agent.learn(total_timesteps=3072)
    seconds = time.perf_counter() - start
    after = held_out_reward(agent)
    with capsys.disabled():
        print(
            f"\nDQN {target} greedy held-out reward: before {before:.3f}, after {after:.3f}, {seconds:.1f} s"
        )
    assert after - before > 0.25, (before, after)
