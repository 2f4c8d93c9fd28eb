"""GRPO and its variants: each option changes what it says it changes, the agent learns, and the rollout
correction undoes a real bf16-copy mismatch."""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_agents_learning import held_out_reward, letter_e_fraction, make_env

import textenv  # noqa: F401  (registers the envs)
from agents import GRPO, GRPOConfig
from agents import grpo as grpo_module
from agents.group_losses import clipped_surrogate, group_policy_loss, rollout_correction
from agents.policy import completion_logits


def small_env(reward_fn: Any = letter_e_fraction, group_size: int = 4) -> gym.vector.VectorEnv:
    return make_env(4, group_size=group_size, reward_fn=reward_fn, max_new_tokens=6, max_prompt_tokens=12)


def test_grpo_dapo_clip_higher_learns() -> None:
    """The issue's call, ``GRPO(env, loss_type="dapo", epsilon_high=0.28, beta=0.0)``, raises the held-out
    share of the letter "e" by more than 0.25 (the margin the other agents' learning tests use)."""
    torch.set_num_threads(1)
    agent = GRPO(
        make_env(8, group_size=4),
        model="tiny-sp",
        loss_type="dapo",
        epsilon_high=0.28,
        beta=0.0,
        learning_rate=1e-3,
        n_epochs=2,
        episodes_per_rollout=32,
        minibatch_size=16,
        seed=0,
    )
    before = held_out_reward(agent)
    agent.learn(total_timesteps=8000)
    after = held_out_reward(agent)
    assert after - before > 0.25, (before, after)


def test_the_agent_passes_each_option_to_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loss option of the config reaches :func:`group_policy_loss` (a test that fails if the agent
    ignores one), the k3 term gets the reference's log-probs, and DAPO's token count is the minibatch's."""
    seen: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs | {"mask_sum": float(args[3].sum())})
        return group_policy_loss(*args, **kwargs)

    monkeypatch.setattr(grpo_module, "group_policy_loss", spy)
    options = dict(epsilon=0.1, epsilon_high=0.3, importance_sampling_level="sequence", loss_type="dapo")
    agent = GRPO(
        small_env(), model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4, beta=0.1, **options
    )
    agent.learn(total_timesteps=8)
    assert seen, "train() never computed the loss"
    for call in seen:
        assert {key: call[key] for key in options} == options
        assert call["beta"] == 0.1 and call["ref_logprobs"] is not None
        assert call["token_count"] == call["mask_sum"] > 0  # one process: the minibatch's own tokens


def test_clip_higher_keeps_the_gradient_of_ratios_between_the_two_bounds() -> None:
    """A token whose ratio is 1.25 with a positive advantage: clipped (no gradient) at epsilon_high=0.2,
    still pushed up at epsilon_high=0.28."""
    log_ratio = torch.log(torch.tensor([[1.25]])).requires_grad_()
    for epsilon_high, has_gradient in ((0.2, False), (0.28, True)):
        log_ratio.grad = None
        clipped_surrogate(log_ratio, torch.tensor([[1.0]]), 0.2, epsilon_high).loss.sum().backward()
        assert log_ratio.grad is not None and (float(log_ratio.grad.abs()) > 0) == has_gradient


def test_gspo_uses_the_geometric_mean_of_the_token_ratios() -> None:
    """At sequence level every token's ratio is the geometric mean of its completion's token ratios (GSPO),
    so the loss differs from the token-level one when the ratios differ."""
    logprobs = torch.log(torch.tensor([[1.1, 0.95, 1.3], [1.0, 1.05, 0.9]]))
    old, mask, advantages = torch.zeros(2, 3), torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([1.0, -1.0])
    args = dict(epsilon=10.0, epsilon_high=10.0, loss_type="bnpo", max_new_tokens=3, token_count=5)
    sequence = group_policy_loss(
        logprobs, old, advantages, mask, importance_sampling_level="sequence", **args
    )
    token = group_policy_loss(logprobs, old, advantages, mask, importance_sampling_level="token", **args)
    geometric = [float(np.prod([1.1, 0.95, 1.3]) ** (1 / 3)), float(np.sqrt(1.0 * 1.05))]
    expected = -(3 * geometric[0] - 2 * geometric[1]) / 5  # every token of a completion carries its ratio
    assert float(sequence.loss) == pytest.approx(expected, rel=1e-5)
    assert abs(float(sequence.loss) - float(token.loss)) > 1e-3


def test_dynamic_sampling_drops_groups_whose_rewards_are_all_equal() -> None:
    """Prompts of odd length always get 0.5 (their group's advantages are all 0), the others the completion's
    length; after dynamic sampling the update batch holds no all-equal group, and fewer episodes than were
    collected."""

    def half_constant(prompts: list[str], completions: list[str], references: Any = None) -> np.ndarray:
        scores = [0.5 if len(p) % 2 else float(len(c)) for p, c in zip(prompts, completions, strict=True)]
        return np.array(scores, dtype=np.float32)

    settings = dict(model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4)
    agent = GRPO(small_env(half_constant), dynamic_sampling=True, **settings)
    agent.learn(total_timesteps=8)
    batch, collected = agent.rollout_batch, agent.rollout.episodes
    assert batch is not None and 0 < len(batch.rewards) < len(collected)
    assert any(e.reward == 0.5 for e in collected) and not bool((batch.rewards == 0.5).any())
    for group in torch.unique(batch.group_ids):
        rewards = batch.rewards[batch.group_ids == group]
        assert float(rewards.max() - rewards.min()) > 0, "an all-equal group was kept"


def test_dynamic_sampling_stops_at_its_cap_and_skips_an_update_with_nothing_to_learn() -> None:
    """A constant reward: no group is informative; the rollout stops at max_sampling_factor x episodes and
    the weights do not move."""
    constant = lambda prompts, completions, references=None: np.ones(len(prompts), np.float32)  # noqa: E731
    settings = dict(model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4, learning_rate=1e-2)
    agent = GRPO(small_env(constant), dynamic_sampling=True, max_sampling_factor=2.0, **settings)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=8)
    assert 16 <= len(agent.rollout.episodes) < 16 + agent.n_envs
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))


def test_truncated_completions_leave_the_loss() -> None:
    """mask_truncated_completions: a completion that fills its slots without a stop token is masked."""
    agent = GRPO(small_env(), model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4)
    _, callback = agent._setup_learn(total_timesteps=10**6)
    assert agent.collect_rollouts(agent.env, callback)
    batch = agent.rollout_batch
    assert batch is not None
    truncated = agent._truncated(batch)
    stops = set(np.atleast_1d(agent.stop_token_ids).tolist())
    for row in range(len(batch.rewards)):
        full = bool(batch.gen_mask[row].all())
        assert bool(truncated[row]) == (full and int(batch.input_ids[row, -1]) not in stops)


def test_rollout_correction_undoes_a_real_bf16_copy_mismatch() -> None:
    """A bf16 rollout copy samples from slightly other probabilities than the fp32 network that trains.
    Over the whole vocabulary at each state of a rollout (an exact expectation, no sampling noise), the
    policy gradient with the copy's samples weighted by ``rollout_correction`` equals the on-policy
    gradient (relative error below 1e-6; measured 6e-8, float32 rounding); without the weights it is off
    by the mismatch (above 1e-4; measured 9e-4)."""
    torch.manual_seed(0)
    copy = dict(precision="fp32", rollout_precision="bf16", rollout_correction="token_tis")
    settings = dict(model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4)
    agent = GRPO(small_env(), rollout_correction_threshold=1e6, **copy, **settings)
    _, callback = agent._setup_learn(total_timesteps=10**6)
    assert agent.collect_rollouts(agent.env, callback)
    batch = agent.rollout_batch
    assert batch is not None and agent.rollout_copy is not None
    n_new, n_actions = agent.max_new_tokens, agent.n_actions
    with torch.no_grad():
        train_logits, _ = completion_logits(
            agent.policy, batch.input_ids, batch.attention_mask, n_new, n_actions
        )
        copy_logits, _ = completion_logits(
            agent.actor, batch.input_ids, batch.attention_mask, n_new, n_actions
        )
    states = batch.gen_mask.bool()
    train_logits, copy_logits = train_logits[states].float(), copy_logits[states].float()  # (S, V)
    train_lp, copy_lp = train_logits.log_softmax(-1), copy_logits.log_softmax(-1)
    gap = float((train_lp.exp() - copy_lp.exp()).abs().sum(-1).mean())
    print(f"\nbf16 copy vs fp32: mean total variation {gap:.2e}")
    assert gap > 1e-4, f"no real mismatch to correct (total variation {gap})"
    advantages = torch.randn(train_logits.shape, generator=torch.Generator().manual_seed(1))  # A(s, a)

    def gradient(sampling_lp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """d/d logits of E_{a ~ exp(sampling_lp)}[weights * surrogate], summed over the vocabulary."""
        logits = train_logits.clone().requires_grad_()
        logprobs = logits.log_softmax(-1)
        surrogate = clipped_surrogate(logprobs - logprobs.detach(), advantages, 0.2, 0.2).loss  # ratio 1
        (sampling_lp.exp() * weights * surrogate).sum().backward()
        assert logits.grad is not None
        return logits.grad

    on_policy = gradient(train_lp, torch.ones_like(train_lp))
    weights = rollout_correction(train_lp, copy_lp, torch.ones_like(train_lp), "token_tis", 1e6).weights
    corrected, uncorrected = gradient(copy_lp, weights), gradient(copy_lp, torch.ones_like(copy_lp))
    error = lambda g: float((g - on_policy).norm() / on_policy.norm())  # noqa: E731
    print(f"relative gradient error: corrected {error(corrected):.2e}, uncorrected {error(uncorrected):.2e}")
    assert error(corrected) < 1e-6 < 1e-4 < error(uncorrected), (error(corrected), error(uncorrected))


def test_grpo_resumes_exactly(tmp_path: Any) -> None:
    """save mid-run, load, continue: the same weights as the straight run."""
    settings = dict(model="tiny-sp", seed=0, precision="fp32", episodes_per_rollout=8, minibatch_size=4)
    straight = GRPO(small_env(), learning_rate=1e-3, **settings)
    straight.learn(total_timesteps=48)
    first = GRPO(small_env(), learning_rate=1e-3, **settings)
    first.learn(total_timesteps=24)
    first.save(tmp_path / "ckpt")
    resumed = GRPO.load(tmp_path / "ckpt", env=small_env())
    resumed.learn(total_timesteps=48 - resumed.num_timesteps, reset_num_timesteps=False)  # SB3 adds them
    assert resumed.num_timesteps == straight.num_timesteps
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss_type": "ppo"}, "loss_type='ppo' is not known"),
        ({"scale_rewards": "std"}, "scale_rewards='std' is not known"),
        ({"importance_sampling_level": "seq"}, "importance_sampling_level='seq' is not known"),
        ({"rollout_correction": "tis"}, "rollout_correction='tis' is not known"),
        ({"init_kl_coef": 0.05}, "set beta"),
        ({"epsilon": 1.5}, "epsilon must be in"),
        ({"epsilon_high": 0.0}, "epsilon_high must be > 0"),
        ({"beta": -1.0}, "beta and ent_coef must be >= 0"),
        ({"n_epochs": 1.5}, "n_epochs must be a whole number"),
        ({"overlong_buffer": -2}, "overlong_buffer must be >= 0"),
        ({"rollout_correction_threshold": 0.5}, "rollout_correction_threshold must be > 1"),
        ({"max_sampling_factor": 0.5}, "max_sampling_factor must be >= 1"),
    ],
)
def test_bad_settings_say_how_to_fix(settings: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        GRPOConfig(**settings)


def test_settings_that_need_the_env_or_a_copy_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="group_size=k"):
        GRPO(small_env(group_size=1), model="tiny-sp")
    with pytest.raises(ValueError, match="rollout_precision='bf16'"):
        GRPO(small_env(), model="tiny-sp", precision="fp32", rollout_correction="token_tis")
    with pytest.raises(ValueError, match="overlong_buffer"):
        GRPO(small_env(), model="tiny-sp", overlong_buffer=6)


def test_benchmark_runs_each_variant_of_the_family(tmp_path: Any) -> None:
    """``benchmarks.run --algo`` takes GRPO's named variants (agents.ALGORITHMS) and the ablation suite lists
    them beside RLOO on two tasks, reported apart from the CPU table's page."""
    from agents import ALGORITHMS
    from benchmarks import run, suite

    variants = {name for name, entry in ALGORITHMS.items() if entry.agent is GRPO}
    assert variants == {"grpo", "dr-grpo", "dapo", "gspo"}
    ablation = suite.SUITES["ablation"]
    assert {algo for _, algo, *_ in ablation.jobs} == variants | {"zero-shot", "rloo"}
    assert not ablation.results_page and ablation.publish == "benchmarks/results/ablation-cpu"
    common = ["--model", "tiny-sp", "--budget", "1it", "--eval-prompts", "2", "--evals", "1"]
    paths = run.main(["--task", "error-rate", "--algo", "gspo", *common, "--logdir", str(tmp_path)])
    summary = json.loads((paths[0] / "summary.json").read_text())
    assert summary["agent"]["importance_sampling_level"] == "sequence" and summary["agent"]["beta"] == 0.01
