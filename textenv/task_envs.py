"""The four registered task environments: their prompt datasets, default rewards, sizes and recommended agent
settings.

Each is a registered environment id (token level; ``gym.make_vec(...,
vectorization_mode="vector_entry_point")`` gives the native vector env), set up by a :class:`Benchmark` spec
in ``BENCHMARKS``. All use ``max_prompt_tokens=64`` (prompts longer than that keep their last 64 tokens) and
``max_new_tokens=48`` unless noted. Every argument of ``TextGen-v0`` overrides the task's own (``reward_fn=``
a reward object, ``max_new_tokens=``, ``split=``, ``model=``...). :func:`recommended_agent_kwargs` gives the
agent settings a task was benchmarked with (``PPO(envs, **textenv.recommended_agent_kwargs(env_id))``). The
scripts in ``benchmarks/`` train and evaluate agents on them, and look rewards up by name
(:mod:`benchmarks.named_rewards`).

- ``TextGen-Sentiment-v0`` (``"sentiment"``): RL4LMs' IMDB protocol on drugs.com reviews, with headroom:
  turn a complaint around. Prompt: the opening of a negative or neutral review (its first third, at most 40
  words; 10 % of the prompts open positive reviews; task ``"drugs-turnaround"``). Reward
  (:func:`whole_review_sentiment`): ``P(positive)`` of the whole review, prompt + completion
  (:class:`rewards.WholeText`, as TRL's sentiment example), by a classifier trained on whole, half and
  turned-around train reviews and off-topic text (:func:`rewards.drugs_review_sentiment_model`);
  ``reward_fn=rewards.VaderSentiment()`` scores the completion by VADER instead.
- ``TextGen-ErrorRate-v0`` (``"error-rate"``): correct a real sentence (a drugs.com review sentence or a
  Shakespeare line, task ``"error-correction"``) corrupted with seeded typos, dropped and swapped words.
  Prompt: a one-shot example, then ``"Text: <corrupted>\\nCorrected:"``; reference: the original. The
  completion ends at the end of the line (``stop_strings=("\\n",)``). Reward: ``-WER``
  (:func:`word_error_rate`). ``max_new_tokens=40``, ``max_prompt_tokens=96``; recommended sampling
  temperature ``ERROR_RATE_TEMPERATURE``.
- ``TextGen-Similarity-v0`` (``"similarity"``): write a review sentence around 3 or 4 given words of it (task
  ``"review-keywords"``, CommonGen style); the completion ends at the end of the line. Reward:
  all-MiniLM-L6-v2 cosine similarity to the sentence the words came from
  (:class:`rewards.EmbeddingSimilarity`).
  ``max_new_tokens=32``. (It used to continue a Shakespeare speech, whose next line the prompt does not
  determine: the reward did not move under RL; see :func:`textenv.tasks.review_keywords`.)
- ``TextGen-Preference-v0`` (``"preference"``): the first half of a review's words (task
  ``"drugs-sentiment"``, the prompts of its preference pairs), rewarded by a Bradley-Terry
  :class:`rewards.PreferenceRewardModel` trained on :func:`rewards.drugs_preference_pairs` (see
  :func:`rewards.drugs_preference_model`; ``reward_fn=rewards.PreferenceRewardModel.load(path)`` uses
  another).

>>> sorted(BENCHMARKS)
['error-rate', 'preference', 'sentiment', 'similarity']
>>> BENCHMARKS["error-rate"].env_id
'TextGen-ErrorRate-v0'
>>> recommended_agent_kwargs("TextGen-ErrorRate-v0")
{'temperature': 0.5}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

import rewards
from textenv.data import PromptDataset
from textenv.envs import TextGenEnv, TextGenVectorEnv
from textenv.tasks import load_task


def benchmark_dataset(task: str, split: str = "train") -> PromptDataset:
    """Prompt dataset of built-in task ``task`` and ``split`` (see :mod:`textenv.tasks`)."""
    return load_task(task, split)


def whole_review_sentiment() -> rewards.WholeText:
    """``TextGen-Sentiment-v0``'s reward: P(positive) of prompt + completion (:class:`rewards.WholeText`) by
    the review classifier :func:`rewards.drugs_review_sentiment_model` (trained once, then cached)."""
    return rewards.WholeText(rewards.drugs_review_sentiment_model())


def word_error_rate() -> rewards.ErrorRate:
    """``TextGen-ErrorRate-v0``'s reward: ``-WER`` against the reference.

    >>> word_error_rate()(["p"], ["the cat"], ["the cat"]).tolist()
    [0.0]
    """
    return rewards.ErrorRate(unit="word")


@dataclass(frozen=True)
class Benchmark:
    """How one registered task environment is set up."""

    env_id: str
    """The registered environment id."""
    task: str
    """Prompt dataset (see :func:`benchmark_dataset`)."""
    reward: Callable[[], Any]
    """Makes the default reward (called once for each env made without ``reward_fn=``)."""
    max_new_tokens: int = 48
    """Completion length N."""
    max_prompt_tokens: int = 64
    """Prompt slots P (longer prompts keep their last P tokens)."""
    stop_strings: tuple[str, ...] = ()
    """Besides EOS, the tokens whose text contains one of these end a completion (``("\\n",)``: the end
    of the line); the env's ``stop_strings``."""
    temperature: float = 1.0
    """Recommended sampling temperature of the agents' rollouts (their ``temperature``), which the benchmarks'
    training and held-out evaluation use."""

    @property
    def agent_kwargs(self) -> dict[str, Any]:
        """The agent settings the task was benchmarked with: keyword arguments of every agent."""
        return {"temperature": self.temperature}


ERROR_RATE_TEMPERATURE = 0.5
"""The error-rate task's sampling temperature (rollouts and evaluation). SmolLM2's zero-shot WER on the first
32 test prompts with the one-shot prompt: 0.97 at 1.0, 0.72 at 0.7, 0.57 at 0.5, 0.42 greedy (copying the
input: 0.23). 0.5 keeps it well below 1 while the samples still differ enough to learn from."""

BENCHMARKS: dict[str, Benchmark] = {
    "sentiment": Benchmark("TextGen-Sentiment-v0", "drugs-turnaround", whole_review_sentiment),
    "error-rate": Benchmark(
        "TextGen-ErrorRate-v0",
        "error-correction",
        word_error_rate,
        max_new_tokens=40,
        max_prompt_tokens=96,
        stop_strings=("\n",),
        temperature=ERROR_RATE_TEMPERATURE,
    ),
    "similarity": Benchmark(
        "TextGen-Similarity-v0",
        "review-keywords",
        rewards.EmbeddingSimilarity,
        max_new_tokens=32,
        stop_strings=("\n",),
    ),
    "preference": Benchmark("TextGen-Preference-v0", "drugs-sentiment", rewards.drugs_preference_model),
}


def recommended_agent_kwargs(env: str | Any) -> dict[str, Any]:
    """The agent settings a registered task env was benchmarked with, as keyword arguments of ``PPO``,
    ``REINFORCE`` and ``DQN`` (today the sampling ``temperature`` of rollouts); ``{}`` for the other env ids.
    ``env`` is an env id or an env made by ``gym.make`` / ``gym.make_vec``.

    >>> import gymnasium as gym
    >>> envs = gym.make_vec("TextGen-ErrorRate-v0", num_envs=2, vectorization_mode="vector_entry_point",
    ...                     model="tiny-sp")
    >>> recommended_agent_kwargs(envs), recommended_agent_kwargs("TextGen-v0")
    ({'temperature': 0.5}, {})
    """
    spec = env if isinstance(env, str) else getattr(env, "spec", None)
    if spec is None:
        raise ValueError(
            f"{type(env).__name__} carries no env id (no .spec); pass the registered id instead, e.g. "
            "recommended_agent_kwargs('TextGen-ErrorRate-v0')."
        )
    spec = gym.spec(spec) if isinstance(spec, str) else spec  # an unknown id raises gymnasium's own error
    if spec.entry_point != f"{__name__}:make_env":
        return {}
    return BENCHMARKS[spec.kwargs.get("benchmark", "sentiment")].agent_kwargs


def env_kwargs(benchmark: str, **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of ``TextGenEnv`` for ``benchmark``; explicit ``kwargs`` (``dataset``, ``reward_fn``,
    ``max_new_tokens``, ``split``, ``model``...) override the benchmark's defaults."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}.")
    spec = BENCHMARKS[benchmark]
    for name in ("reward", "reward_model"):
        if kwargs.pop(name, None) is not None:
            raise TypeError(
                f"{spec.env_id} takes no {name}= (a reward by name); pass a reward object as reward_fn=, "
                "e.g. reward_fn=rewards.VaderSentiment() or rewards.PreferenceRewardModel.load(path) "
                "(benchmarks.named_rewards.build_reward looks up the names of python -m benchmarks.run)."
            )
    split = kwargs.pop("split", "train")
    if kwargs.get("task") is None and kwargs.get("dataset") is None:
        kwargs["dataset"] = benchmark_dataset(spec.task, split)
    else:
        kwargs["split"] = split  # for task=; beside dataset= TextGenEnv refuses a split but "train"
    if kwargs.get("reward_fn") is None:
        kwargs["reward_fn"] = spec.reward()
    kwargs.setdefault("max_new_tokens", spec.max_new_tokens)
    kwargs.setdefault("max_prompt_tokens", spec.max_prompt_tokens)
    if spec.stop_strings:
        kwargs.setdefault("stop_strings", list(spec.stop_strings))
    return kwargs


def make_env(benchmark: str = "sentiment", **kwargs: Any) -> TextGenEnv:
    """Entry point of the task env ids: a ``TextGenEnv`` set up by :func:`env_kwargs`."""
    return TextGenEnv(**env_kwargs(benchmark, **kwargs))


def make_vector_env(num_envs: int = 1, benchmark: str = "sentiment", **kwargs: Any) -> TextGenVectorEnv:
    """Vector entry point of the task env ids: a ``TextGenVectorEnv`` set up by :func:`env_kwargs`."""
    return TextGenVectorEnv(num_envs, **env_kwargs(benchmark, **kwargs))
