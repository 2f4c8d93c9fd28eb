"""DQN's value-head options: ``value_expectile`` (ILQL's expectile V, its own loss, the bootstrap from V(s'))
and ``value_lr_scale`` (the head's own learning rate): the math by hand, the optimizer's groups, the resume,
the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger
from test_agents_learning import make_env

import textenv  # noqa: F401  (registers the envs)
from agents import q_learning, soft_q
from agents.dqn import DQN, DQNConfig
from agents.policy import completion_logits
from agents.q_learning import agent_td_targets, expectile_loss

pytestmark = pytest.mark.usefixtures("one_thread")

DUELING = dict(dueling=True)
SOFT = dict(soft_q_coef=0.1, exploration="policy")


def tiny(**settings) -> DQN:
    base = dict(
        learning_starts=8, batch_size=8, buffer_size=256, seed=0, learning_rate=1e-3, precision="fp32"
    )
    return DQN(make_env(2, max_new_tokens=4, max_prompt_tokens=8), model="tiny-sp", **(base | settings))


def test_expectile_loss_by_hand() -> None:
    errors = torch.tensor([2.0, -1.0, 0.5])  # target - V
    # above V weighs tau, below 1 - tau: (0.9 * 4 + 0.1 * 1 + 0.9 * 0.25) / 3
    assert expectile_loss(errors, 0.9).item() == pytest.approx(3.925 / 3)
    assert expectile_loss(errors, 0.5).item() == pytest.approx(0.5 * errors.square().mean().item())
    # the minimiser over a constant V is the tau-expectile: above the mean for tau > 0.5
    targets, v = torch.tensor([0.0, 0.0, 3.0]), torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        expectile_loss(targets - v, 0.8).backward()
        optimizer.step()
    # 0.8 * (3 - v) = 0.2 * 2 v  ->  v = 2.4 / 1.2 = 2
    assert v.item() == pytest.approx(2.0, abs=1e-4) and targets.mean().item() == 1.0


def value_head_grads(loss: torch.Tensor, agent: DQN) -> list[torch.Tensor | None]:
    params = list(agent.policy.value_head.parameters())
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


@pytest.mark.parametrize("settings", [DUELING, SOFT], ids=["dueling", "soft-q"])
def test_expectile_value_learns_on_its_own_loss(settings: dict) -> None:
    """With ``value_expectile``: the targets bootstrap from the target network's V(s') (dueling; soft Q does
    already), V's loss is the expectile of the (soft) targets less V(s), and the TD loss leaves the value
    head alone (V detached in Q); without it the TD loss is what moves V and there is no value loss."""
    agent = tiny(**settings)
    agent.learn(total_timesteps=24)
    batch = agent.replay.sample(16, np.random.default_rng(0))
    # the policy itself, not its engine: the test takes gradients with torch.autograd, not engine.backward
    networks = q_learning.QNetworks(online=agent.policy, target=agent.target, reference=agent.reference)
    update = soft_q.update_terms if "soft_q_coef" in settings else q_learning.update_terms
    level, tau = 0.5, 0.7

    def terms(**options):
        config = DQNConfig(**settings, n_steps=2, conservative_coef=0.1, **options)
        kwargs = dict(level=level, n_actions=agent.n_actions, exploration=agent.exploration)
        return update(networks, batch, config, **kwargs)

    plain, ilql = terms(), terms(value_expectile=tau)
    assert plain.value_loss is None and ilql.value_loss is not None and ilql.values is not None
    rows, positions = ilql.detail.rows, ilql.detail.positions
    ids, attn, n_new = batch.input_ids, batch.attention_mask, batch.gen_mask.shape[1]
    with torch.no_grad():
        values = completion_logits(agent.policy, ids, attn, n_new, agent.n_actions)[1]
        target_logits, target_values = completion_logits(agent.target, ids, attn, n_new, agent.n_actions)
    assert torch.allclose(ilql.values, level + values[rows, positions])  # V(s) of the sampled states
    if update is q_learning.update_terms:  # the bootstrap: the target network's V(s), n-step over 2 tokens
        bootstrap = level + target_values
        targets = agent_td_targets(bootstrap, batch.gen_mask, batch.rewards, 1.0, n_steps=2)
        assert torch.allclose(ilql.targets, targets[rows, positions])
        value_targets = ilql.targets
    else:  # the soft targets less beta times the target network's log-ratio of the taken token
        ref_logits = completion_logits(agent.reference, ids, attn, n_new, agent.n_actions)[0]
        actions = ids[:, -n_new:]
        ratio = soft_q.taken_log_probs(target_logits, actions) - soft_q.taken_log_probs(ref_logits, actions)
        value_targets = ilql.targets - settings["soft_q_coef"] * ratio[rows, positions]
        assert torch.allclose(ilql.targets, plain.targets)  # soft Q bootstraps from V(s') either way
    expected = expectile_loss(value_targets - ilql.values, tau)
    assert ilql.value_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ilql.penalty is not None
    by_hand = ilql.td_loss + 0.1 * ilql.penalty + ilql.value_loss
    assert ilql.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert all(g is None or not g.any() for g in value_head_grads(ilql.td_loss, agent))  # V detached in Q
    assert all(g is not None and g.any() for g in value_head_grads(ilql.value_loss, agent))
    assert all(g is not None and g.any() for g in value_head_grads(plain.td_loss, agent))


def value_group_lr(agent: DQN) -> list[tuple[int, float]]:
    """(number of parameters, lr) of each optimizer group, the value head's marked by a negative count."""
    head = {id(p) for p in agent.policy.value_head.parameters()}
    groups = agent.engine.optimizer.param_groups
    return [
        (-len(g["params"]) if {id(p) for p in g["params"]} <= head else len(g["params"]), g["lr"])
        for g in groups
    ]


def test_value_head_gets_its_own_learning_rate() -> None:
    """``value_lr_scale`` puts the value head in an AdamW group at learning_rate times it; the rest, and
    every parameter without the option, stays at learning_rate. The first Adam step moves each weight by
    about its group's rate, so the head moves about 100 times further."""
    trainable = sum(p.requires_grad for p in tiny(**DUELING).policy.parameters())
    plain, scaled = tiny(**DUELING), tiny(**DUELING, value_lr_scale=100.0)
    assert value_group_lr(plain) == [(trainable, 1e-3)]
    assert value_group_lr(scaled) == [(trainable - 2, 1e-3), (-2, pytest.approx(0.1))]

    def head_step(agent: DQN) -> float:
        agent.learn(total_timesteps=8)  # fills the replay; no update yet
        before = agent.policy.value_head.weight.detach().clone()
        agent.train(1, batch_size=8)
        return (agent.policy.value_head.weight.detach() - before).abs().mean().item()

    plain_step, scaled_step = head_step(plain), head_step(scaled)
    assert 30 < scaled_step / plain_step < 300, (plain_step, scaled_step)


def test_value_options_need_a_value_head_and_valid_values() -> None:
    with pytest.raises(ValueError, match="set dueling=True or soft_q_coef > 0"):
        DQNConfig(value_expectile=0.7)
    with pytest.raises(ValueError, match="set dueling=True or soft_q_coef > 0"):
        DQNConfig(value_lr_scale=10.0)
    for bad in (dict(value_expectile=1.0), dict(value_expectile=0.0), dict(value_lr_scale=0.0)):
        with pytest.raises(ValueError, match="e.g. 0.7"):
            DQNConfig(dueling=True, **bad)


@pytest.mark.parametrize("settings", [DUELING, SOFT], ids=["dueling", "soft-q"])
def test_save_load_resumes_exactly_with_the_value_options(tmp_path, settings: dict) -> None:
    """The value head's optimizer group, its learning rate and Adam state, survive a checkpoint: the resumed
    agent's next updates equal the uninterrupted agent's."""
    agent = tiny(**settings, value_expectile=0.7, value_lr_scale=10.0, target_update_interval=8)
    agent.learn(total_timesteps=48)
    agent.save(tmp_path / "agent")
    resumed = DQN.load(tmp_path / "agent", env=make_env(2, max_new_tokens=4, max_prompt_tokens=8))
    assert resumed.config.value_expectile == 0.7 and value_group_lr(resumed) == value_group_lr(agent)
    resumed.set_logger(Logger(None, []))
    agent.train(2, batch_size=8)
    resumed.train(2, batch_size=8)
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_benchmark_cli_passes_the_value_options_and_lambda(tmp_path) -> None:
    from benchmarks import run

    argv = ["--task", "error-rate", "--algo", "dqn", "--budget", "40", "--num-envs", "2"]
    argv += ["--dqn-td-lambda", "0.9", "--dqn-value-expectile", "0.7", "--dqn-value-lr-scale", "10"]
    argv += ["--max-new-tokens", "2", "--model", "tiny-sp", "--threads", "1", "--no-progress-bar"]
    argv += ["--eval-prompts", "2", "--logdir", str(tmp_path)]
    (run_dir,) = run.main(argv)
    summary = json.loads((run_dir / "summary.json").read_text())
    agent, args = summary["agent"], summary["args"]
    assert (agent["td_lambda"], agent["value_expectile"], agent["value_lr_scale"]) == (0.9, 0.7, 10.0), agent
    assert (args["dqn_td_lambda"], args["dqn_value_expectile"], args["dqn_value_lr_scale"]) == (
        0.9,
        0.7,
        10.0,
    )
    default = run.Args(task="error-rate", algo="dqn")
    assert (default.dqn_td_lambda, default.dqn_value_expectile, default.dqn_value_lr_scale) == (
        None,
        None,
        1.0,
    )


# ---- what the options change -----------------------------------------------------------------------------
def explained_variance_at_the_end(**settings) -> float:
    """``train/v_explained_variance`` over the last 3 logged rounds of 1,024 tokens of the letter-"e" task at
    a small learning rate (3e-5: the value head, at the LM's rate, lags as it did on SmolLM2)."""
    from test_dqn_diagnostics import Recorder

    base = dict(learning_starts=64, batch_size=32, buffer_size=4096, train_freq=(8, "episode"), top_k=0)
    base |= dict(gradient_steps=4, target_update_interval=128, n_steps=4, learning_rate=3e-5, seed=0)
    agent = DQN(
        make_env(8, max_new_tokens=8, max_prompt_tokens=16),
        model="tiny-sp",
        precision="fp32",
        **base,
        **settings,
    )
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    agent.learn(total_timesteps=1024, log_interval=8)
    return float(np.mean([row["v_explained_variance"] for row in recorder.rows[-3:]]))


def test_expectile_v_at_its_own_rate_carries_the_state_values() -> None:
    """The SmolLM2 diagnosis on the tiny model: dueling DQN's V(s) explains none of the targets' variance
    (seed 0: -0.01); with value_expectile 0.5 and value_lr_scale 100 it explains a third (0.32). Neither
    alone does (0.06; -0.05: the faster head, still pulled by the TD error of single tokens, overshoots)."""
    plain = explained_variance_at_the_end(dueling=True)
    both = explained_variance_at_the_end(dueling=True, value_expectile=0.5, value_lr_scale=100.0)
    assert plain < 0.1 and both > 0.2, (plain, both)


def test_dueling_dqn_with_expectile_v_learns(capsys) -> None:
    """The DQN learning test's setting (tests/test_dqn.py, double_q, greedy held-out reward before 0.121,
    3,072 tokens, 2026-12-07) with the dueling form, where the plain dueling form mostly does not learn
    (seeds 0 / 1 / 2 / 3 / 4: 0.002 / 0.000 / 0.000 / 0.000 / 0.500): value_expectile 0.7 and
    value_lr_scale 10 reach 0.355 / 0.745 / 0.320 / 0.573 / 0.139 (V explaining 0.66 / 0.66 / 0.09 / 0.61 /
    0.43 of the targets' variance at the end, plain dueling 0.11 / 0.14 / 0.07 / 0.02 / 0.02);
    value_expectile 0.7 alone 0.445 / 0.492 / 0.013 (seeds 0-2). value_lr_scale 10 alone: 0.000 (seed 0);
    with value_expectile 0.5 instead of 0.7: 0.081 / 0.315 (seeds 0 / 1)."""
    from test_dqn import LEARNING_SCHEDULE, held_out_reward
    from test_dqn import make_env as dqn_env

    settings = dict(LEARNING_SCHEDULE, exploration_fraction=0.5, learning_rate=3e-4, seed=0)
    settings |= dict(dueling=True, value_expectile=0.7, value_lr_scale=10.0)
    agent = DQN(dqn_env(8, max_new_tokens=8, max_prompt_tokens=16), model="tiny-sp", **settings)
    before = held_out_reward(agent)
    agent.learn(total_timesteps=3072)
    after = held_out_reward(agent)
    with capsys.disabled():
        print(f"\ndueling DQN, expectile V: greedy held-out reward before {before:.3f}, after {after:.3f}")
    assert after - before > 0.15, (before, after)
