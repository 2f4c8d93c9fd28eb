"""The error-rate and similarity task presets: one-shot prompt, end of line as the end of a completion,
the task's sampling temperature in rollouts and evaluation, and the review-keywords prompts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import textenv  # noqa: F401  (registers the envs)
from benchmarks.named_rewards import build_reward
from textenv.task_envs import BENCHMARKS
from textenv.tasks import ERROR_PROMPT, KEYWORDS_PROMPT, error_correction, review_keywords


def newline_id(env: gym.Env) -> int:
    return env.unwrapped.tokenizer("a\nb", add_special_tokens=False)["input_ids"][1]


@pytest.mark.parametrize(
    ("env_id", "reward"), [("TextGen-ErrorRate-v0", "wer"), ("TextGen-Similarity-v0", "chrf")]
)
def test_task_envs_end_the_completion_at_the_end_of_the_line(env_id: str, reward: str) -> None:
    env = gym.make(env_id, model="tiny-sp", split="test", reward_fn=build_reward(reward))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    newline = newline_id(env)
    assert newline in env.unwrapped.stop_token_ids
    env.reset(seed=0, options={"index": 0})
    word = env.unwrapped.tokenizer(" The", add_special_tokens=False)["input_ids"]
    for token in word:
        assert env.step(token)[2] is False
    _, _, terminated, truncated, info = env.step(newline)
    assert terminated and not truncated and info["completion"] == "The"
    vec = gym.make_vec(
        env_id,
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model="tiny-sp",
        reward_fn=build_reward(reward),
    )
    vec.reset(seed=0)
    assert vec.step(np.array([newline, newline]))[2].tolist() == [True, True]


def test_error_rate_prompt_is_one_shot_and_fits() -> None:
    spec = BENCHMARKS["error-rate"]
    assert spec.stop_strings == ("\n",) and 0 < spec.temperature < 1
    test = error_correction("test")
    tok = textenv.load_tokenizer("tiny-smollm2")  # SmolLM2's tokenizer
    lengths = [len(tok(e.prompt, add_special_tokens=False)["input_ids"]) for e in test]
    assert max(lengths) <= spec.max_prompt_tokens  # the one-shot example is never cut off
    example = test[0]
    assert example.prompt == ERROR_PROMPT.format(corrupted=example.metadata["corrupted"])
    assert example.prompt.endswith(f"Text: {example.metadata['corrupted']}\nCorrected:")
    shown = ERROR_PROMPT.split("\n")[2].removeprefix("Corrected: ")
    references = {e.reference for split in ("train", "test") for e in error_correction(split)}
    assert shown not in references  # the worked example is in neither split


def test_review_keywords_are_seeded_disjoint_and_from_the_reference() -> None:
    test = review_keywords("test")
    review_keywords.cache_clear()
    again = review_keywords("test")
    assert [e.prompt for e in again] == [e.prompt for e in test] and len(test) == 300
    for example in test:
        words = example.metadata["keywords"]
        assert 3 <= len(words) <= 4 and len(set(words)) == len(words)
        assert all(w in example.reference.lower() for w in words)
        assert example.prompt == KEYWORDS_PROMPT.format(keywords=", ".join(words))
    train = {e.reference for e in review_keywords("train")}
    assert not train & {e.reference for e in test}
    shown = KEYWORDS_PROMPT.split("\n")[2].removeprefix("Sentence: ")
    assert shown not in train | {e.reference for e in test}  # the worked example is in neither split
    tok = textenv.load_tokenizer("tiny-smollm2")  # SmolLM2's tokenizer: the one-shot prompt is never cut off
    lengths = [len(tok(e.prompt, add_special_tokens=False)["input_ids"]) for e in test]
    assert max(lengths) <= BENCHMARKS["similarity"].max_prompt_tokens
    with pytest.raises(ValueError, match="size=0"):
        review_keywords("test", size=0)


def test_run_passes_the_task_temperature_to_rollouts_and_evaluation(tmp_path: Path) -> None:
    from benchmarks import run

    torch.set_num_threads(1)
    argv = ["--task", "error-rate", "--algo", "ppo", "--budget", "1it", "--num-envs", "2"]
    argv += [
        "--episodes-per-rollout",
        "2",
        "--minibatch-size",
        "2",
        "--max-new-tokens",
        "3",
        "--model",
        "tiny-sp",
    ]
    argv += ["--eval-prompts", "2", "--no-progress-bar", "--evals", "1", "--logdir", str(tmp_path)]
    (run_dir,) = run.main(argv)
    summary = json.loads((run_dir / "summary.json").read_text())
    temperature = BENCHMARKS["error-rate"].temperature
    assert summary["agent"]["temperature"] == temperature == summary["benchmark"]["temperature"]
    assert summary["env_kwargs"]["model"] == "tiny-sp"
