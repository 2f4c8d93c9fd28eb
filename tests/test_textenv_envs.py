"""Single environments: contract, seeding, round-trips, checkers and bad input."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401  (registers the envs)
from textenv.tiny import gpt2_tokenizer

ENV_IDS = ["TextGen-v0", "TextGenSeq-v0"]


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompts_after_resets(env: gym.Env, seed: int, n: int = 6) -> list[str]:
    prompts = [env.reset(seed=seed)[1]["prompt"]]
    prompts += [env.reset()[1]["prompt"] for _ in range(n - 1)]
    return prompts


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeding(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **env_kwargs)
    first = prompts_after_resets(env, seed=3)
    assert prompts_after_resets(env, seed=3) == first
    assert prompts_after_resets(gym.make(env_id, **env_kwargs), seed=3) == first
    assert len(set(first)) > 1
    assert any(prompts_after_resets(env, seed=s) != first for s in range(4, 8))


def test_token_env_contract_and_round_trip(env_kwargs: dict, sp_tokenizer: Any) -> None:
    env = gym.make("TextGen-v0", **{**env_kwargs, "max_prompt_tokens": 16})
    P, N = 16, 5
    assert env.observation_space["input_ids"].shape == (P + N,)
    obs, info = env.reset(seed=0)
    ids, mask = obs["input_ids"], obs["attention_mask"]
    assert ids.dtype == np.int64 and mask[P:].sum() == 0 and mask[:P].sum() > 0
    assert np.all(mask[: P - mask[:P].sum()] == 0)  # left padding
    assert sp_tokenizer.decode(ids[:P][mask[:P] == 1]) == info["prompt"]
    tokens = encode(sp_tokenizer, " good")
    for token in tokens:
        obs, reward, terminated, truncated, info = env.step(token)
        assert (reward, terminated, truncated, info) == (0.0, False, False, {})
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.eos_token_id)
    assert terminated and not truncated
    generated = obs["input_ids"][P:][obs["attention_mask"][P:] == 1]
    assert generated.tolist() == tokens + [env.unwrapped.eos_token_id]
    assert info["completion"] == sp_tokenizer.decode(generated, skip_special_tokens=True) == "good"
    assert reward == len("good") and info["reference"].startswith(" reference")


def test_truncated_after_max_new_tokens(env_kwargs: dict) -> None:
    env = gym.make("TextGen-v0", **env_kwargs)
    env.reset(seed=0)
    results = [env.step(10)[1:4] for _ in range(5)]
    assert [r[1:] for r in results] == [(False, False)] * 4 + [(False, True)]
    assert [r[0] for r in results[:4]] == [0.0] * 4 and results[-1][0] > 0


def test_long_prompt_truncated_from_left(sp_tokenizer: Any) -> None:
    text = "one two three four five six seven eight nine ten eleven twelve"
    env = gym.make(
        "TextGen-v0", tokenizer=sp_tokenizer, dataset=[text], max_prompt_tokens=6, max_new_tokens=2
    )
    obs, _ = env.reset(seed=0)
    assert obs["attention_mask"][:6].tolist() == [1] * 6
    assert obs["input_ids"][:6].tolist() == encode(sp_tokenizer, text)[-6:]


def test_seq_env_contract(env_kwargs: dict, sp_tokenizer: Any) -> None:
    env = gym.make("TextGenSeq-v0", **env_kwargs)
    assert env.action_space.shape == (5,) and env.observation_space["input_ids"].shape == (8,)
    obs, info = env.reset(seed=0)
    eos = env.unwrapped.eos_token_id
    action = np.array(
        encode(sp_tokenizer, " fine") + [eos, 7, 7, 7][: 5 - len(encode(sp_tokenizer, " fine"))]
    )
    obs2, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated and info["completion"] == "fine" and reward == 4.0
    assert np.array_equal(obs2["input_ids"], obs["input_ids"])


def test_group_size_repeats_prompts(env_kwargs: dict) -> None:
    env = gym.make("TextGen-v0", group_size=3, **env_kwargs)
    prompts = prompts_after_resets(env, seed=0, n=9)
    assert prompts[0:3] == [prompts[0]] * 3 and prompts[3:6] == [prompts[3]] * 3


def test_env_attributes_and_vocab(sp_tokenizer: Any) -> None:
    env = gym.make("TextGen-v0", model="tiny-smollm2", max_new_tokens=3).unwrapped
    assert env.action_space.n == 49152 == env.vocab_size
    assert env.pad_token_id == env.eos_token_id == 2  # SmolLM2 has no pad: EOS is used
    assert env.dataset.name == "drugs-sentiment/train" and callable(env.reward_fn)
    assert (env.max_prompt_tokens, env.max_new_tokens) == (64, 3)
    tok = gpt2_tokenizer()
    tok.pad_token = None
    env = gym.make("TextGen-v0", tokenizer=tok, task="shakespeare", max_new_tokens=3).unwrapped
    assert env.pad_token_id == env.eos_token_id == 50256 and env.action_space.n == 50257


def test_default_reward_is_sentiment(sp_tokenizer: Any) -> None:
    env = gym.make("TextGenSeq-v0", tokenizer=sp_tokenizer, dataset=["x"], max_new_tokens=8)
    env.reset(seed=0)
    _, good, *_ = env.step(np.array(encode(sp_tokenizer, " great, I love it")[:8] + [2] * 8)[:8])
    env.reset()
    _, bad, *_ = env.step(np.array(encode(sp_tokenizer, " awful, I hate it")[:8] + [2] * 8)[:8])
    assert good > 0.3 > -0.3 > bad


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_checkers(env_id: str, env_kwargs: dict) -> None:
    for render_mode in (None, "ansi"):
        env = gym.make(env_id, render_mode=render_mode, **env_kwargs).unwrapped
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gym_check_env(env, skip_render_check=False)
            sb3_check_env(env, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_dummy_vec_env(env_id: str, env_kwargs: dict) -> None:
    venv = DummyVecEnv([lambda: gym.make(env_id, **env_kwargs)] * 2)
    venv.seed(0)
    obs = venv.reset()
    assert obs["input_ids"].shape[0] == 2
    for _ in range(6):
        obs, rewards, dones, infos = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        if dones.any():
            assert "completion" in infos[int(np.flatnonzero(dones)[0])]
            break
    else:
        pytest.fail("no episode ended")


def test_render(env_kwargs: dict, capsys: pytest.CaptureFixture) -> None:
    env = gym.make("TextGen-v0", render_mode="ansi", **env_kwargs)
    _, info = env.reset(seed=0)
    assert env.render().startswith(info["prompt"])
    env = gym.make("TextGenSeq-v0", render_mode="human", **env_kwargs)
    env.reset(seed=0)
    assert "▶" in capsys.readouterr().out


def test_reset_options_pick_an_example(env_kwargs: dict) -> None:
    env = gym.make("TextGen-v0", **env_kwargs)
    assert env.reset(seed=0, options={"index": 3})[1]["prompt"] == env_kwargs["dataset"][3].prompt
    envs = gym.make_vec("TextGenSeq-v0", num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    _, info = envs.reset(seed=0, options={"indices": [4, 1]})
    assert info["prompt"].tolist() == [env_kwargs["dataset"][4].prompt, env_kwargs["dataset"][1].prompt]


def test_env_pickles(env_kwargs: dict) -> None:
    import pickle

    env = gym.make("TextGen-v0", **{**env_kwargs, "reward_fn": None})  # default (VADER) reward
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    obs, reward, *_ = clone.step(5)
    assert obs["attention_mask"][8] == 1


def test_state_loads_into_an_env_that_was_never_reset() -> None:
    """An env's ``state_dict()`` (through JSON) loaded into a fresh env that has not made its RNG yet gives
    the same next episodes; a state whose RNG kind is unknown is refused with a clear error."""
    import json

    def make() -> Any:
        return gym.make("TextGen-v0", model="tiny-sp", max_new_tokens=4, max_prompt_tokens=8).unwrapped

    source = make()
    source.reset(seed=3)
    source.step(5)
    state = json.loads(json.dumps(source.state_dict()))
    fresh = make()
    fresh.load_state_dict(state)
    for actions in [(6, 7, 8), (6, 7, 8, 9), (9, 8, 7, 6)]:  # the running episode, then two new ones
        for action in actions:
            a, b = source.step(action), fresh.step(action)
            assert np.array_equal(a[0]["input_ids"], b[0]["input_ids"]) and a[1:4] == b[1:4]
        assert a[2] or a[3]
        assert np.array_equal(source.reset()[0]["input_ids"], fresh.reset()[0]["input_ids"])
    broken = json.loads(json.dumps(state).replace('"PCG64"', '"seed"'))
    with pytest.raises(ValueError, match="RNG of kind 'seed'"):
        make().load_state_dict(broken)
