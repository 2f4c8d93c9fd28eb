"""Shared fixtures for the textenv tests: tiny models and small prompt datasets (fast, offline)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import textenv
from textenv import Example, PromptDataset

PROMPTS = [
    "The weather today is",
    "My doctor said that",
    "Once upon a time there was a",
    "I love this medicine because",
    "Shall I compare thee to a",
]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``), the
    count restored after: tiny models run faster on one thread, and the test workers share two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sp_tokenizer() -> Any:
    """The 512-piece sentencepiece tokenizer of the tiny-sp model."""
    return textenv.load_tokenizer("tiny-sp")


@pytest.fixture(scope="session")
def small_dataset() -> PromptDataset:
    """Five short prompts with references."""
    return PromptDataset.from_list(
        [Example(p, " reference " + str(i), {"i": i}) for i, p in enumerate(PROMPTS)]
    )


def length_reward(
    prompts: list[str], completions: list[str], references: list[str | None] | None = None
) -> np.ndarray:
    """A cheap deterministic reward: completion length in characters."""
    return np.array([len(c) for c in completions], dtype=np.float32)


@pytest.fixture
def env_kwargs(sp_tokenizer: Any, small_dataset: PromptDataset) -> dict[str, Any]:
    """Keyword arguments for a fast env: tiny-sp tokenizer, five prompts, short completions, cheap reward."""
    return {
        "tokenizer": sp_tokenizer,
        "dataset": small_dataset,
        "reward_fn": length_reward,
        "max_prompt_tokens": 8,
        "max_new_tokens": 5,
    }
