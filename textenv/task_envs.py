"""The four registered task environments: their prompt datasets, rewards and environment factories.

Each is a registered environment id (token level; ``gym.make_vec(...,
vectorization_mode="vector_entry_point")`` gives the native vector env), set up by a :class:`Benchmark` spec
in ``BENCHMARKS``. All use ``max_prompt_tokens=64`` (prompts longer than that keep their last 64 tokens) and
``max_new_tokens=48`` unless noted. The scripts in ``benchmarks/`` train and evaluate agents on them.

- ``TextGen-Sentiment-v0`` (``"sentiment"``): RL4LMs' IMDB protocol on drugs.com reviews, with headroom:
  turn a complaint around. Prompt: the opening of a negative or neutral review (its first third, at most 40
  words; 10 % of the prompts open positive reviews; task ``"drugs-turnaround"``). Reward (``"review"``):
  ``P(positive)`` of the whole review, prompt + completion (:class:`rewards.WholeText`, as TRL's sentiment
  example), by a classifier trained on whole, half and turned-around train reviews and off-topic text
  (:func:`rewards.drugs_review_sentiment_model`); ``reward="vader"`` uses VADER's compound score of the
  completion instead. Reported beside it: the same classifier on the completion alone (``"continuation"``),
  VADER of the completion, perplexity of held-out human reviews under the policy, distinct-1/2, KL to the
  reference.
- ``TextGen-ErrorRate-v0`` (``"error-rate"``): correct a real sentence (a drugs.com review sentence or a
  Shakespeare line, task ``"error-correction"``) corrupted with seeded typos, dropped and swapped words.
  Prompt: a one-shot example, then ``"Text: <corrupted>\\nCorrected:"``; reference: the original. The
  completion ends at the end of the line (``stop_strings=("\\n",)``). Reward: ``-WER``
  (:class:`rewards.ErrorRate`); CER reported beside it. ``max_new_tokens=40``, ``max_prompt_tokens=96``,
  sampling temperature ``ERROR_RATE_TEMPERATURE`` in rollouts and evaluation.
- ``TextGen-Similarity-v0`` (``"similarity"``): write a review sentence around 3 or 4 given words of it (task
  ``"review-keywords"``, CommonGen style); the completion ends at the end of the line. Reward:
  all-MiniLM-L6-v2 cosine similarity to the sentence the words came from; chrF beside it.
  ``max_new_tokens=32``. (It used to continue a Shakespeare speech, whose next line the prompt does not
  determine: the reward did not move under RL; see :func:`textenv.tasks.review_keywords`.)
- ``TextGen-Preference-v0`` (``"preference"``): the first half of a review's words (task
  ``"drugs-sentiment"``, the prompts of its preference pairs), rewarded by a Bradley-Terry
  :class:`rewards.PreferenceRewardModel` trained on :func:`rewards.drugs_preference_pairs` (see
  :func:`rewards.drugs_preference_model`). The whole-review classifier :func:`rewards.drugs_sentiment_model`
  on the completion (``"classifier"``) and VADER are held-out "gold" scorers that measure over-optimisation
  of the proxy.

>>> sorted(BENCHMARKS)
['error-rate', 'preference', 'sentiment', 'similarity']
>>> BENCHMARKS["error-rate"].env_id
'TextGen-ErrorRate-v0'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rewards
from textenv.data import PromptDataset
from textenv.envs import TextGenEnv, TextGenVectorEnv
from textenv.tasks import load_task


def benchmark_dataset(task: str, split: str = "train") -> PromptDataset:
    """Prompt dataset of built-in task ``task`` and ``split`` (see :mod:`textenv.tasks`)."""
    return load_task(task, split)


REWARD_NAMES = ("classifier", "vader", "wer", "cer", "minilm", "chrf", "preference", "review", "continuation")
"""The rewards :func:`build_reward` knows by name."""


def build_reward(name: str, reward_model: str | Path | None = None) -> Any:
    """A reward callable by benchmark name: ``classifier``, ``vader``, ``wer``, ``cer``, ``minilm``, ``chrf``,
    ``preference`` (``reward_model``: a saved PreferenceRewardModel directory; default the cached
    :func:`rewards.drugs_preference_model`), ``review`` (the review classifier
    :func:`rewards.drugs_review_sentiment_model` on prompt + completion, :class:`rewards.WholeText`) and
    ``continuation`` (the same classifier on the completion alone).

    >>> build_reward("wer")(["p"], ["the cat"], ["the cat"]).tolist()
    [0.0]
    """
    if name == "classifier":
        return rewards.drugs_sentiment_model()
    if name == "review":
        return rewards.WholeText(rewards.drugs_review_sentiment_model())
    if name == "continuation":
        return rewards.drugs_review_sentiment_model()
    if name == "vader":
        return rewards.VaderSentiment()
    if name in ("wer", "cer"):
        return rewards.ErrorRate(unit="word" if name == "wer" else "char")
    if name == "minilm":
        return rewards.EmbeddingSimilarity()
    if name == "chrf":
        return rewards.ChrF()
    if name == "preference":
        if reward_model is None:
            return rewards.drugs_preference_model()
        return rewards.PreferenceRewardModel.load(reward_model)
    raise ValueError(
        f"Unknown reward {name!r}; use one of {', '.join(REWARD_NAMES)}, or pass reward_fn= (a callable) "
        "instead."
    )


@dataclass(frozen=True)
class Benchmark:
    """How one registered task environment is set up."""

    env_id: str
    """The registered environment id."""
    task: str
    """Prompt dataset (see :func:`benchmark_dataset`)."""
    reward: str
    """Default reward (see :func:`build_reward`)."""
    metrics: tuple[str, ...]
    """Rewards reported beside the trained one (for ``preference``: the gold scorers)."""
    max_new_tokens: int = 48
    """Completion length N."""
    max_prompt_tokens: int = 64
    """Prompt slots P (longer prompts keep their last P tokens)."""
    heldout_text: bool = False
    """Report the perplexity of held-out human reviews (drift from natural text)."""
    stop_strings: tuple[str, ...] = ()
    """Besides EOS, the tokens whose text contains one of these end a completion (``("\\n",)``: the end
    of the line); the env's ``stop_strings``."""
    temperature: float = 1.0
    """Sampling temperature of the task's rollouts (the agents' ``temperature``) and of its held-out
    evaluation (:func:`benchmarks.evaluation.evaluate`)."""


ERROR_RATE_TEMPERATURE = 0.5
"""The error-rate task's sampling temperature (rollouts and evaluation). SmolLM2's zero-shot WER on the first
32 test prompts with the one-shot prompt: 0.97 at 1.0, 0.72 at 0.7, 0.57 at 0.5, 0.42 greedy (copying the
input: 0.23). 0.5 keeps it well below 1 while the samples still differ enough to learn from."""

BENCHMARKS: dict[str, Benchmark] = {
    "sentiment": Benchmark(
        "TextGen-Sentiment-v0", "drugs-turnaround", "review", ("vader",), heldout_text=True
    ),
    "error-rate": Benchmark(
        "TextGen-ErrorRate-v0",
        "error-correction",
        "wer",
        ("cer",),
        max_new_tokens=40,
        max_prompt_tokens=96,
        stop_strings=("\n",),
        temperature=ERROR_RATE_TEMPERATURE,
    ),
    "similarity": Benchmark(
        "TextGen-Similarity-v0",
        "review-keywords",
        "minilm",
        ("chrf",),
        max_new_tokens=32,
        stop_strings=("\n",),
    ),
    "preference": Benchmark(
        "TextGen-Preference-v0", "drugs-sentiment", "preference", ("classifier", "vader"), heldout_text=True
    ),
}


REWARD_COMPANIONS: dict[str, tuple[str, ...]] = {"review": ("continuation",)}
"""Side metrics that explain a reward, reported beside it whenever it is the trained reward: the whole-review
score is read beside the completion scored alone."""


def side_metrics(benchmark: str, reward: str | None = None) -> dict[str, Any]:
    """The rewards reported beside ``benchmark``'s trained reward (``reward``, or the benchmark's own): its
    ``metrics``, then the :data:`REWARD_COMPANIONS` of the trained reward.

    >>> list(side_metrics("sentiment", reward="vader"))
    ['vader']
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}.")
    spec = BENCHMARKS[benchmark]
    names = dict.fromkeys(spec.metrics + REWARD_COMPANIONS.get(reward or spec.reward, ()))
    return {name: build_reward(name) for name in names}


def env_kwargs(
    benchmark: str, reward: str | None = None, reward_model: str | Path | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Keyword arguments of ``TextGenEnv`` for ``benchmark``; explicit ``kwargs`` (``dataset``, ``reward_fn``,
    ``max_new_tokens``, ``split``, ``model``...) override the benchmark's defaults."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}.")
    spec = BENCHMARKS[benchmark]
    if reward is not None and kwargs.get("reward_fn") is not None:
        raise ValueError("Pass either reward= (a reward name) or reward_fn= (a callable), not both.")
    if reward_model is not None and (reward or spec.reward) != "preference":
        raise ValueError(
            f"reward_model= is used by the 'preference' reward only, not by {reward or spec.reward!r}; "
            "drop it, or pass reward='preference'."
        )
    split = kwargs.pop("split", "train")
    if kwargs.get("task") is None and kwargs.get("dataset") is None:
        kwargs["dataset"] = benchmark_dataset(spec.task, split)
    else:
        kwargs["split"] = split  # for task=; beside dataset= TextGenEnv refuses a split but "train"
    if kwargs.get("reward_fn") is None:
        kwargs["reward_fn"] = build_reward(reward or spec.reward, reward_model)
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
