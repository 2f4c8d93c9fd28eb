"""DQN's diagnostics (agents.dqn_diagnostics): the train/ keys are logged with finite values, the target
lag resets at a target update, the replay's age grows with reuse, and none of it changes the training run."""

from __future__ import annotations

import math
from typing import Any

import pytest
from stable_baselines3.common.logger import KVWriter, Logger
from test_agents_learning import make_env

import textenv  # noqa: F401  (registers the envs)
from agents.dqn import DQN

EVERY_UPDATE = (
    "td_abs_mean",
    "td_abs_std",
    "q_taken_mean",
    "q_taken_std",
    "q_max_mean",
    "q_max_std",
    "target_mean",
    "target_std",
    "grad_untaken_share",
    "replay_age_mean",
    "replay_age_max",
    "target_lag",
)
STEP = ("logit_step", "logprob_step", "step_kl")
VALUE = ("v_mean", "v_std")  # with a value head (and v_explained_variance, unless the targets are equal)
GRADIENT_STEPS = 2


class Recorder(KVWriter):
    """Keeps every dump's ``train/`` values."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
        train = {k.removeprefix("train/"): v for k, v in key_values.items() if k.startswith("train/")}
        if train:
            self.rows.append(train)


def run(total_timesteps: int = 96, **settings: Any) -> tuple[DQN, list[dict[str, float]]]:
    """A tiny DQN that trains (``GRADIENT_STEPS`` updates) and logs after every round of 2 episodes."""
    base = dict(batch_size=8, learning_starts=8, buffer_size=512, train_freq=(2, "episode"), seed=0)
    base |= dict(gradient_steps=GRADIENT_STEPS, learning_rate=1e-3, precision="fp32")
    agent = DQN(make_env(2, max_new_tokens=4, max_prompt_tokens=8), model="tiny-sp", **(base | settings))
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    agent.learn(total_timesteps=total_timesteps, log_interval=2)
    assert recorder.rows, "no train/ values were logged"
    return agent, recorder.rows


@pytest.mark.parametrize(
    "settings, extra",
    [
        (dict(dueling=True, tau=0.5), ("conservative_share", "kl_ref", "target_distance", *VALUE)),
        (dict(soft_q_coef=0.1, exploration="policy", conservative_coef=0.0), ("kl_ref", *VALUE)),
        (dict(dueling=True, value_expectile=0.7), ("conservative_share", "kl_ref", *VALUE, "value_loss")),
        (dict(conservative_coef=0.0), ()),  # raw logits, no CQL: no reference forward, so no KL
    ],
    ids=["dueling-cql-polyak", "soft-q", "expectile-v", "raw"],
)
def test_keys_are_logged_finite(settings: dict[str, Any], extra: tuple[str, ...]) -> None:
    _, rows = run(log_step_size=True, **settings)
    for row in rows:
        missing = [k for k in EVERY_UPDATE + STEP + extra if k not in row]
        assert not missing, f"{settings}: {missing} not logged"
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["td_abs_mean"] >= 0 and row["replay_age_max"] >= row["replay_age_mean"] >= 0
        assert 0 <= row["grad_untaken_share"] <= 1 and row.get("kl_ref", 0.0) >= 0 and row["step_kl"] >= 0
    if not extra:
        assert "kl_ref" not in rows[-1] and "conservative_share" not in rows[-1]
        assert not any(key.startswith("v") for key in rows[-1])  # raw-logit Q: no value head
    if "v_std" in extra:
        explained = [row["v_explained_variance"] for row in rows if "v_explained_variance" in row]
        assert explained and all(value <= 1 for value in explained), rows
    assert any(row["logit_step"] > 0 for row in rows)  # the updates do move the logits


def test_step_size_is_not_logged_by_default() -> None:
    _, rows = run(total_timesteps=40)
    assert not any(key in row for row in rows for key in STEP)


def test_untaken_share_is_zero_without_terms_on_untaken_tokens() -> None:
    """Raw-logit Q with only the TD loss touches the taken tokens alone; the CQL term touches the rest."""
    _, plain = run(total_timesteps=40, conservative_coef=0.0)
    _, cql = run(total_timesteps=40, conservative_coef=1.0)
    assert all(row["grad_untaken_share"] == 0.0 for row in plain)
    assert all(0 < row["grad_untaken_share"] <= 1 for row in cql)


def test_target_lag_resets_at_a_target_update() -> None:
    # each round averages the lags of its 2 updates: (k + k+1) / 2 for k updates since the last target update
    _, synced = run(target_update_interval=16)
    lags = [row["target_lag"] for row in synced]
    assert any(later < earlier for earlier, later in zip(lags, lags[1:], strict=False)), lags
    assert (GRADIENT_STEPS - 1) / 2 in lags[1:], lags  # a round right after a target update
    _, never = run(target_update_interval=10_000)
    lags = [row["target_lag"] for row in never]
    assert lags == sorted(lags) and lags[-1] > lags[0], lags  # no update: the lag only grows


def test_replay_age_grows_with_reuse() -> None:
    kept, rows = run(total_timesteps=120)  # the buffer keeps every episode: old ones are sampled again
    ages = [row["replay_age_max"] for row in rows]
    assert ages[-1] > ages[0] and ages[-1] >= GRADIENT_STEPS, ages
    _, fresh = run(total_timesteps=120, buffer_size=8, batch_size=4)  # only the last round is left
    assert all(row["replay_age_max"] <= GRADIENT_STEPS - 1 for row in fresh), fresh
    assert rows[-1]["replay_age_mean"] > fresh[-1]["replay_age_mean"]
    assert kept.replay.stamps and max(kept.replay.stamps.values()) == kept._n_updates - GRADIENT_STEPS


@pytest.mark.parametrize("settings", [dict(dueling=True), dict(soft_q_coef=0.1, exploration="policy")])
def test_logging_the_step_size_changes_nothing(settings: dict[str, Any]) -> None:
    """The extra forward draws no random numbers and leaves the weights as they were."""
    plain, _ = run(total_timesteps=48, **settings)
    logged, _ = run(total_timesteps=48, log_step_size=True, **settings)
    for (name, a), b in zip(
        plain.policy.state_dict().items(), logged.policy.state_dict().values(), strict=True
    ):
        assert a.equal(b), name
