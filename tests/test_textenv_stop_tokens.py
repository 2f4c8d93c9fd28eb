"""Stop tokens (``stop_token_ids`` / ``stop_strings``): they end an episode as EOS does, in every env and in
the benchmark evaluation's ``generate``."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textenv
from textenv.envs.core import token_ids_containing
from textenv.tasks import error_correction

NEWLINE = {"stop_strings": ["\n"]}


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_stop_strings_find_the_newline_tokens(sp_tokenizer: Any) -> None:
    env = gym.make("TextGen-v0", tokenizer=sp_tokenizer, dataset=["x"], **NEWLINE).unwrapped
    newline = encode(sp_tokenizer, "a\nb")[1]
    assert env.stop_token_ids == tuple(sorted({newline, env.eos_token_id}))
    assert gym.make("TextGen-v0", tokenizer=sp_tokenizer, dataset=["x"]).unwrapped.stop_token_ids == (
        env.eos_token_id,
    )


def test_smollm2_newline_tokens_end_every_line() -> None:
    """The rule "a token whose text contains a newline ends the line", on SmolLM2's tokenizer: the ids are
    whitespace only (no text is lost when the stop token is left out), and a completion that goes on past a
    line break is cut exactly at it, for every test sentence of the error-correction task."""
    tok = textenv.load_tokenizer("tiny-smollm2")  # SmolLM2's own tokenizer, random weights
    ids = token_ids_containing(tok, ["\n"])
    texts = [tok.decode([i]) for i in ids]
    assert len(ids) == 129 and all("\n" in t and not t.strip() for t in texts)
    env = gym.make("TextGenSeq-v0", tokenizer=tok, dataset=["x"], max_new_tokens=96, **NEWLINE).unwrapped
    cut = 0
    for example in error_correction("test"):
        sentence = example.reference
        for tail in ("\nCorrected: more", "\n\nText: more", " \n  indented"):
            tokens = np.array(encode(tok, sentence + tail))
            completion = env.core.decode([env.core.completion_ids(tokens)])[0]
            assert completion.rstrip() == sentence, (sentence, tail)
            cut += 1
    assert cut == 3 * len(error_correction("test"))


def test_token_env_stops_at_a_stop_token(env_kwargs: dict, sp_tokenizer: Any) -> None:
    env = gym.make("TextGen-v0", **{**env_kwargs, **NEWLINE})
    P = env_kwargs["max_prompt_tokens"]
    env.reset(seed=0)
    newline = encode(sp_tokenizer, "a\nb")[1]
    tokens = encode(sp_tokenizer, " good")
    for token in tokens:
        assert env.step(token)[2:4] == (False, False)
    obs, reward, terminated, truncated, info = env.step(newline)
    assert terminated and not truncated
    assert info["completion"] == "good" and reward == len("good")  # the stop token is left out, as EOS is
    assert obs["input_ids"][P:][obs["attention_mask"][P:] == 1].tolist() == tokens + [newline]
    assert env.render().endswith("▶ good")  # the render shows the completion as scored
    env.reset(seed=0)
    assert env.step(env.unwrapped.eos_token_id)[2] is True  # EOS still ends it


def test_explicit_stop_token_ids(env_kwargs: dict, sp_tokenizer: Any) -> None:
    env = gym.make("TextGenSeq-v0", **{**env_kwargs, "stop_token_ids": [7]})
    assert env.unwrapped.stop_token_ids == (env.unwrapped.eos_token_id, 7)
    env.reset(seed=0)
    fine = encode(sp_tokenizer, " fine")
    action = np.array((fine + [7] + [300] * 5)[:5])
    _, reward, terminated, _, info = env.step(action)
    assert terminated and info["completion"] == "fine" and reward == 4.0


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_env_checkers_with_stop_tokens(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **{**env_kwargs, **NEWLINE}).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"stop_token_ids": 5}, TypeError, "list of token ids"),
        ({"stop_token_ids": "\n"}, TypeError, "list of token ids"),
        ({"stop_token_ids": [1.5]}, TypeError, "int token id"),
        ({"stop_token_ids": [100_000]}, ValueError, "outside the vocabulary"),
        ({"stop_strings": "\n"}, TypeError, "list of non-empty strings"),
        ({"stop_strings": [""]}, TypeError, "list of non-empty strings"),
        ({"stop_strings": ["\x07\x07"]}, ValueError, "no token of the tokenizer"),
    ],
)
def test_bad_stop_settings_name_the_argument(
    env_kwargs: dict, settings: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        gym.make("TextGen-v0", **{**env_kwargs, **settings})


def test_evaluation_generate_stops_at_the_env_stop_ids(sp_tokenizer: Any) -> None:
    from benchmarks.evaluation import evaluate

    lm = textenv.load_model("tiny-sp")
    kwargs = {"tokenizer": sp_tokenizer, "dataset": ["Hello there", "The day"], "max_new_tokens": 6}
    kwargs["reward_fn"] = lambda p, c, r=None: np.array([len(x) for x in c], np.float32)
    plain = evaluate(lm, lm, gym.make("TextGen-v0", **kwargs), seed=0, num_prompts=2)
    every_id = list(range(len(sp_tokenizer)))  # every token is a stop token: each completion is empty
    stopped = evaluate(
        lm, lm, gym.make("TextGen-v0", **kwargs, stop_token_ids=every_id), seed=0, num_prompts=2
    )
    assert plain["completion_tokens"] > 1.0
    assert (
        stopped["completion_tokens"] == 1.0 and stopped["_samples"] == ["", ""] and stopped["reward"] == 0.0
    )
