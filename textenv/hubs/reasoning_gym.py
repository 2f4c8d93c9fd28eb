"""reasoning-gym's procedural tasks as single-turn prompt datasets, scored by reasoning-gym's own scorers.

`reasoning-gym <https://pypi.org/project/reasoning-gym/>`_ (Apache-2.0; ``pip install 'textenv[hubs]'``)
generates about a hundred kinds of verifiable problems (arithmetic, algebra, logic, games, ciphers, ...)
offline from a seed. Each becomes a ``TextGen-v0`` task:

- ``gym.make("TextGen-v0", task="reasoning_gym:chain_sum", split="test")``: the task's default settings,
  :data:`DEFAULT_SIZE` problems per split, and its scorer as the default reward; or
- ``dataset, reward = reasoning_gym_task("chain_sum", size=200, min_terms=2)``, then
  ``gym.make("TextGen-v0", dataset=dataset, reward_fn=reward)``: any size, seed and configuration (keyword
  arguments go to the task's reasoning-gym config).

The prompt is the question followed by ``"\\nAnswer:"`` (:data:`PROMPT`). The reward
(:class:`ReasoningGymScore`) takes the completion's answer (the last ``<answer>...</answer>`` if there is
one, reasoning-gym's convention, else its first line) and returns the task's own ``score_answer`` for the
problem, a float in [0, 1] (0 for an answer the scorer cannot parse: some scorers raise on those). What
it needs to rebuild the problem (seed, size, index, and the answer to check it against) travels in the
example's ``reference``, as JSON.

**Splits by seed.** Problem ``i`` of a reasoning-gym dataset is drawn from ``Random(seed + i)``; the train
split uses ``seed``, the test split ``seed + TEST_SEED_OFFSET`` and the validation split (to choose settings
on) ``seed + 2 * TEST_SEED_OFFSET``, so no two splits share a generator seed.
Tasks with few distinct problems (short sums, small grids) can still repeat a question across splits.

**Size.** A split's problems are generated when the env is made: milliseconds each for most tasks, but
0.1 to 0.4 s each for a few (``knight_swap``, ``zebra_puzzles``); pass a smaller ``size`` to
:func:`reasoning_gym_task` for those.

**Trust.** The hub's code runs in-process with your rights (as any Python package you import); no task
reads the network (``tests/test_textenv_hubs.py`` runs them with sockets refused).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from rewards.validation import CheckedReward
from textenv.data import Example, PromptDataset
from textenv.hubs.packages import import_hub

PREFIX = "reasoning_gym:"
PROMPT = "{question}\nAnswer:"
DEFAULT_SIZE = 500
"""Problems per split of ``task="reasoning_gym:<name>"`` (reasoning-gym's own default size)."""
TEST_SEED_OFFSET = 1_000_000_000
"""The test split's seed is the train seed plus this (the validation split's plus twice this); a split holds
fewer problems than this."""
SPLIT_OFFSETS = {"train": 0, "validation": 2 * TEST_SEED_OFFSET, "test": TEST_SEED_OFFSET}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def task_names() -> list[str]:
    """The reasoning-gym task names (``"composite"``, a mix that needs its own config, is left out)."""
    factory = import_hub("reasoning_gym").factory
    return sorted(name for name in factory.DATASETS if name != "composite")


def _create(name: str, seed: int, size: int, config: dict[str, Any]) -> Any:
    reasoning_gym = import_hub("reasoning_gym")
    if name not in task_names():
        raise ValueError(
            f"{name!r} is not a reasoning-gym task; use one of {', '.join(task_names())} "
            "(textenv.hubs.reasoning_gym.task_names())."
        )
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as error:
        raise ValueError(f"reasoning-gym task {name!r} refused its config {config}: {error}") from None


def reasoning_gym_task(
    name: str, split: str = "train", size: int = DEFAULT_SIZE, seed: int = 0, **config: Any
) -> tuple[PromptDataset, ReasoningGymScore]:
    """The prompts of reasoning-gym task ``name`` (``size`` problems of ``split``) and its scorer.

    ``config`` goes to the task's reasoning-gym config (e.g. ``min_terms=2`` for ``"chain_sum"``). Each
    example's ``metadata`` holds the task name, the answer and reasoning-gym's metadata of the problem.
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLIT_OFFSETS)}.")
    for argument, value, low in (("size", size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{argument}={value!r} must be an int >= {low}.")
    if size >= TEST_SEED_OFFSET:
        raise ValueError(
            f"size={size} must be below {TEST_SEED_OFFSET} so that the splits' seeds stay apart."
        )
    split_seed = seed + SPLIT_OFFSETS[split]
    dataset = _create(name, split_seed, size, config)
    examples = []
    for index in range(size):
        entry = dataset[index]
        key = {"answer": entry["answer"], "seed": split_seed, "size": size, "index": index}
        examples.append(
            Example(
                PROMPT.format(question=entry["question"]),
                reference=json.dumps(key),
                metadata={"task": name, "answer": entry["answer"], "metadata": entry["metadata"]},
            )
        )
    return PromptDataset(examples, name=f"{PREFIX}{name}/{split}"), ReasoningGymScore(name, **config)


@lru_cache(maxsize=8)
def _default_task(name: str, split: str) -> tuple[PromptDataset, ReasoningGymScore]:
    return reasoning_gym_task(name, split)


def load_reasoning_gym(task: str, split: str = "train") -> PromptDataset:
    """The prompts of ``task="reasoning_gym:<name>"`` with the task's defaults (:data:`DEFAULT_SIZE`)."""
    return _default_task(task.removeprefix(PREFIX), split)[0]


def extract_answer(completion: str) -> str:
    """The answer in a completion: the last ``<answer>...</answer>`` if any (reasoning-gym's convention),
    else its first non-empty line.

    >>> extract_answer(" 42\\nbecause"), extract_answer("I think <answer> 7 </answer>.")
    ('42', '7')
    """
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        return str(tagged[-1]).strip()
    lines = [line.strip() for line in completion.strip().splitlines()]
    return lines[0] if lines else ""


class ReasoningGymScore(CheckedReward):
    """A reasoning-gym task's own ``score_answer`` as a reward, in [0, 1].

    Each reference is the JSON that :func:`reasoning_gym_task` writes (seed, size and index of the problem,
    and its answer); the problem is rebuilt from it (reasoning-gym generates problem ``index`` from the seed
    alone) and checked against the answer, so that a reference made with another config is an error, not
    a wrong score. ``config`` must be the one the prompts were made with.
    """

    def __init__(self, name: str, **config: Any) -> None:
        self.name, self.config = name, config
        self._datasets: dict[tuple[int, int], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "_datasets": {}}

    def _entry(self, reference: str | None) -> tuple[Any, dict[str, Any]]:
        try:
            key = json.loads(reference or "")
            seed, size, index, answer = key["seed"], key["size"], key["index"], key["answer"]
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"{type(self).__name__} scores the prompts of reasoning_gym_task({self.name!r}) or "
                f"task='reasoning_gym:{self.name}', whose references are JSON with seed, size, index and "
                f"answer; got reference {reference!r}."
            ) from None
        if (seed, size) not in self._datasets:
            self._datasets[seed, size] = _create(self.name, seed, size, self.config)
        dataset = self._datasets[seed, size]
        entry = dataset[index]
        if entry["answer"] != answer:
            raise ValueError(
                f"reference {reference!r} does not match reasoning-gym task {self.name!r} with config "
                f"{self.config}: score the prompts with the reward made beside them by reasoning_gym_task()."
            )
        return dataset, entry

    def scores(self, prompts: list[str], completions: list[str], references: list[str | None] | None) -> Any:
        references = references if references is not None else [None] * len(completions)
        scores = []
        for completion, reference in zip(completions, references, strict=True):
            dataset, entry = self._entry(reference)
            try:
                score = float(dataset.score_answer(extract_answer(completion), entry))
            except Exception:  # some scorers raise on answers they cannot parse: those are wrong answers
                score = 0.0
            scores.append(score)
        return scores
