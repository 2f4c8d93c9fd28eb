"""The real default model: SmolLM2-135M-Instruct (a dequantized Q4_1 copy), loaded once for this module."""

from __future__ import annotations

import time
import warnings
from typing import Any

import gymnasium as gym
import pytest
import torch

import textenv
from textenv.__main__ import main, run_episode


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, float]:
    textenv.load_model(textenv.DEFAULT_MODEL)  # converts the GGUF once (about 20 s) if not cached yet
    start = time.perf_counter()
    model = textenv.load_model(textenv.DEFAULT_MODEL)
    return model, time.perf_counter() - start


def test_loads_fast_from_cache(smollm2: tuple[Any, float]) -> None:
    model, seconds = smollm2
    assert seconds < 2.0
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.vocab_size == 49152 and 130e6 < model.num_parameters() < 140e6


def test_generates_sensible_tokens(smollm2: tuple[Any, float]) -> None:
    model, _ = smollm2
    tokenizer = textenv.load_tokenizer()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_env_rollout_with_kv_cache(smollm2: tuple[Any, float]) -> None:
    model, _ = smollm2
    env = gym.make("TextGen-v0", split="test", max_new_tokens=4)
    assert env.unwrapped.action_space.n == 49152
    info, reward, steps = run_episode(env, model, seed=0, temperature=0.0, generator=torch.Generator())
    assert 1 <= steps <= 4 and info["completion"] and -1.0 <= reward <= 1.0


def test_main_demo(capsys: pytest.CaptureFixture) -> None:
    """``python -m textenv``: two episodes, and no deprecation warning from transformers (the KV cache goes
    under the name this transformers version takes, ``textenv.models.cache_argument``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        main(["--model", "tiny-sp", "--episodes", "2", "--max-new-tokens", "4", "--task", "shakespeare"])
    out = capsys.readouterr().out
    assert out.count("completion:") == 2 and "mean reward" in out
