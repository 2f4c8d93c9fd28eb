"""The benchmark tasks: seeded noise, deterministic splits, preference pairs and the env factories."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import textenv
from agents import ALGORITHMS
from benchmarks import named_rewards
from rewards import VaderSentiment, drugs_preference_pairs
from textenv import task_envs
from textenv.noise import corrupt
from textenv.task_envs import BENCHMARKS
from textenv.tasks import error_correction


def test_corrupt_is_seeded_and_always_changes_the_text() -> None:
    text = "I have been taking this medicine for three weeks now"
    first = [corrupt(text, np.random.default_rng(seed)) for seed in range(20)]
    again = [corrupt(text, np.random.default_rng(seed)) for seed in range(20)]
    assert first == again
    assert all(noisy != text for noisy in first)
    assert len(set(first)) > 10  # different seeds give different noise


def test_corrupt_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="typo_rate"):
        corrupt("a b c", np.random.default_rng(0), typo_rate=1.5)


def test_error_correction_splits_are_deterministic_and_disjoint() -> None:
    test = error_correction("test")
    error_correction.cache_clear()
    assert [e.prompt for e in error_correction("test")] == [e.prompt for e in test]
    train_refs = {e.reference for e in error_correction("train")}
    assert len(test) == 300 and {e.metadata["source"] for e in test} == {"drugs.com", "shakespeare"}
    assert test[0].prompt.startswith("Fix the typos.\n") and test[0].prompt.endswith("\nCorrected:")
    overlap = sum(e.reference in train_refs for e in test)
    assert overlap < 0.05 * len(test)  # only repeated stock phrases can occur in both splits


def test_preference_pairs_prefer_positive_continuations() -> None:
    from textenv.data import drug_review_rows

    halves: dict[str, set[str]] = {"positive": set(), "negative": set()}
    for row in drug_review_rows("test"):
        words = row["review"].split()
        if row["label"] in halves:
            halves[row["label"]].add(" " + " ".join(words[max(1, len(words) // 2) :]))
    triples = drugs_preference_pairs("test")
    assert triples == drugs_preference_pairs("test")
    assert all(
        chosen in halves["positive"] and rejected in halves["negative"] for _, chosen, rejected in triples
    )
    assert len(triples) == 342  # one pair per positive or negative test review


def test_benchmark_env_ids_make_checked_envs() -> None:
    env = gym.make("TextGen-ErrorRate-v0", model="tiny-sp", max_new_tokens=4, split="test")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert info["prompt"].startswith("Fix the typos.") and obs["input_ids"].shape == (96 + 4,)
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert truncated and float(reward) <= 0.0 and "completion" in info
    vec = gym.make_vec(
        "TextGen-Sentiment-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model="tiny-sp",
        reward_fn=VaderSentiment(),
        max_new_tokens=3,
    )
    assert vec.num_envs == 2 and vec.unwrapped.max_new_tokens == 3  # type: ignore[attr-defined]


def test_unknown_names_say_what_to_use() -> None:
    with pytest.raises(ValueError, match="sentiment"):
        task_envs.env_kwargs("nope")
    with pytest.raises(ValueError, match="classifier"):
        named_rewards.build_reward("nope")
    assert set(BENCHMARKS) == {"sentiment", "error-rate", "similarity", "preference"}


def test_each_task_reports_its_default_reward_by_the_name_of_the_same_factory() -> None:
    assert set(named_rewards.REPORTS) == set(BENCHMARKS)
    for task, spec in BENCHMARKS.items():
        report = named_rewards.REPORTS[task]
        assert named_rewards.REWARDS[report.reward] is spec.reward, task
        assert set(report.metrics) <= set(named_rewards.REWARDS), task


def test_recommended_agent_kwargs_are_the_settings_the_benchmarks_use() -> None:
    """One call applies a task's settings (the error-rate task samples at 0.5); benchmarks.run reads them."""
    envs = gym.make_vec(
        "TextGen-ErrorRate-v0", num_envs=2, vectorization_mode="vector_entry_point", model="tiny-sp"
    )
    recommended = textenv.recommended_agent_kwargs(envs)
    assert recommended == textenv.recommended_agent_kwargs("TextGen-ErrorRate-v0") == {"temperature": 0.5}
    assert recommended["temperature"] == BENCHMARKS["error-rate"].temperature
    assert textenv.recommended_agent_kwargs(gym.make("TextGen-Similarity-v0", model="tiny-sp")) == {
        "temperature": 1.0
    }
    assert textenv.recommended_agent_kwargs("TextGen-v0") == {}  # not a task env: nothing to recommend
    for entry in ALGORITHMS.values():  # every agent takes them
        assert set(recommended) <= {f.name for f in dataclasses.fields(entry.config_class)}
    with pytest.raises(gym.error.NameNotFound):
        textenv.recommended_agent_kwargs("TextGen-Nope-v0")
    with pytest.raises(ValueError, match="pass the registered id instead"):
        textenv.recommended_agent_kwargs(object())
