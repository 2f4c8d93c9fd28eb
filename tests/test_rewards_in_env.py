"""Every reward plugs into gym.make("TextGen-v0", reward_fn=...) offline; the env pays exactly its score."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import rewards
import textenv  # noqa: F401

SIMPLE = {
    "error-rate-word": lambda: rewards.ErrorRate(),
    "error-rate-char": lambda: rewards.ErrorRate(unit="char"),
    "embedding": lambda: rewards.EmbeddingSimilarity(),
    "bleu": lambda: rewards.BLEU(),
    "chrf": lambda: rewards.ChrF(),
    "rouge-l": lambda: rewards.RougeL(),
    "vader": lambda: rewards.VaderSentiment(),
    "length": lambda: rewards.LengthPenalty(target_length=4),
    "repetition": lambda: rewards.RepetitionPenalty(),
    "weighted-sum": lambda: rewards.WeightedSum(
        [rewards.VaderSentiment(), rewards.ChrF(), rewards.LengthPenalty(target_length=4)], [1.0, 0.5, 0.1]
    ),
}


def run_episodes(reward_fn: rewards.Reward, episodes: int = 3) -> None:
    """Run a few episodes of the vector env and check each paid reward against a direct call."""
    env = gym.make_vec(
        "TextGen-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model="tiny-sp",
        task="drugs-sentiment",
        reward_fn=reward_fn,
        max_new_tokens=5,
    )
    env.reset(seed=0)
    rng, paid = np.random.default_rng(0), 0
    while paid < episodes:
        obs, reward, terminated, truncated, info = env.step(rng.integers(3, 500, size=2))
        for row in np.flatnonzero(terminated | truncated):
            final = info["final_info"]
            prompt, completion, reference = (final[key][row] for key in ("prompt", "completion", "reference"))
            expected = reward_fn([prompt], [completion], [reference])
            assert reward[row] == pytest.approx(float(expected[0]), abs=1e-6)
            assert np.isfinite(reward[row])
            paid += 1
    env.close()


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_reward_through_env(name: str) -> None:
    run_episodes(SIMPLE[name]())


def test_learned_reward_models_through_env(tmp_path: Path) -> None:
    """A (freshly initialised) MiniLM classifier and preference model, saved and loaded back by path."""
    for cls in (rewards.ClassifierRewardModel, rewards.PreferenceRewardModel):
        path = cls.create(max_length=32).save(tmp_path / cls.__name__)
        run_episodes(cls.load(path), episodes=2)
