"""The four benchmark tasks: their prompt datasets, rewards and environment factories.

Each benchmark is a registered environment id (token level; ``gym.make_vec(...,
vectorization_mode="vector_entry_point")`` gives the native vector env). All use ``max_prompt_tokens=64``
(prompts longer than that keep their last 64 tokens) and ``max_new_tokens=48`` unless noted.

- ``TextGen-Sentiment-v0`` (``"sentiment"``): RL4LMs' IMDB protocol on drugs.com reviews. Prompt: the first
  50% of a review's words (task ``"drugs-sentiment"``). Reward: ``P(positive)`` of the learned drugs.com
  classifier (:func:`rewards.drugs_sentiment_model`); ``reward="vader"`` uses VADER's compound score instead.
  Reported beside it: VADER, perplexity of held-out human reviews under the policy, distinct-1/2, KL to the
  reference.
- ``TextGen-ErrorRate-v0`` (``"error-rate"``): correct a real sentence (a drugs.com review sentence or a
  Shakespeare line, task ``"error-correction"``) corrupted with seeded typos, dropped and swapped words.
  Prompt: ``"Fix the typos: <corrupted>\\nCorrected:"``; reference: the original. Reward: ``-WER``
  (:class:`rewards.ErrorRate`); CER reported beside it. ``max_new_tokens=40``.
- ``TextGen-Similarity-v0`` (``"similarity"``): continue a Shakespeare speech (task ``"shakespeare"``: speaker
  and two lines -> the third). Reward: all-MiniLM-L6-v2 cosine similarity to the real next line; chrF beside
  it. ``max_new_tokens=24``.
- ``TextGen-Preference-v0`` (``"preference"``): the sentiment prompts, rewarded by a Bradley-Terry
  :class:`rewards.PreferenceRewardModel` trained on :func:`preference_pairs` (see there). The classifier and
  VADER are held-out "gold" scorers that measure over-optimisation of the proxy.

>>> sorted(BENCHMARKS)
['error-rate', 'preference', 'sentiment', 'similarity']
>>> BENCHMARKS["error-rate"].env_id
'TextGen-ErrorRate-v0'
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textenv import data
from textenv.data import Example, PromptDataset

ERROR_PROMPT = "Fix the typos: {corrupted}\nCorrected:"
NOISE_SEED = 1234
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ---- noise ----------------------------------------------------------------------------------------------
def typo(word: str, rng: np.random.Generator) -> str:
    """One character edit of ``word``: delete, insert, substitute or transpose (seeded by ``rng``).

    >>> typo("cat", np.random.default_rng(0)) != "cat"
    True
    """
    if not word:
        return word
    position = int(rng.integers(len(word)))
    letter = _LETTERS[int(rng.integers(len(_LETTERS)))]
    kind = int(rng.integers(4)) if len(word) > 1 else 1 + int(rng.integers(2))
    if kind == 0:  # delete
        return word[:position] + word[position + 1 :]
    if kind == 1:  # insert
        return word[:position] + letter + word[position:]
    if kind == 2:  # substitute (a different letter)
        if word[position].lower() == letter:
            letter = _LETTERS[(_LETTERS.index(letter) + 1) % len(_LETTERS)]
        return word[:position] + letter + word[position + 1 :]
    position = min(position, len(word) - 2)  # transpose with the next character
    swapped = word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    return swapped if swapped != word else word[:position] + letter + word[position + 1 :]


def corrupt(
    text: str,
    rng: np.random.Generator,
    typo_rate: float = 0.12,
    drop_rate: float = 0.05,
    swap_rate: float = 0.05,
) -> str:
    """``text`` with seeded noise: each word gets a typo with ``typo_rate`` and is dropped with ``drop_rate``
    (at least two words are kept); then neighbouring words are swapped with ``swap_rate``. The result always
    differs from ``text`` (a typo is forced if no noise fired).

    >>> corrupt("the cat sat on the mat", np.random.default_rng(1))
    'the cat sat on teh mat'
    >>> text = "to be or not to be"
    >>> corrupt(text, np.random.default_rng(1)) == corrupt(text, np.random.default_rng(1))
    True
    """
    for name, rate in [("typo_rate", typo_rate), ("drop_rate", drop_rate), ("swap_rate", swap_rate)]:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name}={rate} must be a probability in [0, 1], e.g. 0.05.")
    words = text.split()
    kept: list[str] = []
    for index, word in enumerate(words):
        if rng.random() < drop_rate and len(kept) + len(words) - index > 2:
            continue
        kept.append(typo(word, rng) if rng.random() < typo_rate else word)
    index = 0
    while index < len(kept) - 1:
        if rng.random() < swap_rate:
            kept[index], kept[index + 1] = kept[index + 1], kept[index]
            index += 2
        else:
            index += 1
    result = " ".join(kept)
    while result == " ".join(words) and kept:
        position = int(rng.integers(len(kept)))
        kept[position] = typo(kept[position], rng)
        result = " ".join(kept)
    return result


# ---- datasets -------------------------------------------------------------------------------------------
def _spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items taken evenly across ``items`` (so every source file is represented)."""
    stride = max(1, len(items) // limit)
    return items[::stride][:limit]


def _review_sentences(split: str) -> list[str]:
    sentences = []
    for row in data.drug_review_rows(split):
        sentences += [s for s in _SENTENCE_END.split(row["review"]) if 6 <= len(s.split()) <= 25]
    return sentences


@lru_cache(maxsize=4)
def error_correction(split: str = "train", size: int | None = None) -> PromptDataset:
    """Sentences to un-corrupt: drugs.com review sentences (from the same split) and Shakespeare lines (the
    references of task ``"shakespeare"``'s split), half and half; 1000 train / 300 test by default.

    Example ``i`` of source ``s`` is corrupted with ``np.random.default_rng([NOISE_SEED, s, i])``, so the data
    is identical on every machine and does not depend on iteration order.
    Metadata: ``source``, ``noise_seed``.
    """
    from textenv.tasks import load_task

    size = size or (1000 if split == "train" else 300)
    sources = {
        "drugs.com": _review_sentences(split),
        "shakespeare": [
            e.reference
            for e in load_task("shakespeare", split)
            if e.reference and len(e.reference.split()) >= 5
        ],
    }
    examples = []
    for source_id, (source, sentences) in enumerate(sources.items()):
        for index, sentence in enumerate(_spread(sentences, size // 2)):
            rng = np.random.default_rng([NOISE_SEED, source_id, index])
            examples.append(
                Example(
                    prompt=ERROR_PROMPT.format(corrupted=corrupt(sentence, rng)),
                    reference=sentence,
                    metadata={"source": source, "noise_seed": [NOISE_SEED, source_id, index]},
                )
            )
    return PromptDataset(examples, name=f"error-correction/{split}")


def preference_pairs(split: str = "train", seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples from the labelled drugs.com reviews of ``split``.

    For each positive or negative review: the prompt is its first half (as in task ``"drugs-sentiment"``);
    one side of the pair is its real second half, the other the second half of a random review of the opposite
    label (drawn with ``np.random.default_rng(seed)``). The positive continuation is ``chosen``. Both sides of
    every pair are real review text and the real continuation is chosen as often as it is rejected, so the
    reward model learns sentiment of the continuation rather than coherence with the prompt.

    >>> triples = preference_pairs("test")
    >>> len(triples), all(len(t) == 3 for t in triples)
    (342, True)
    """
    halves: dict[str, list[tuple[str, str]]] = {"positive": [], "negative": []}
    for row in data.drug_review_rows(split):
        words = row["review"].split()
        half = max(1, len(words) // 2)
        if row["label"] in halves and words[half:]:
            halves[row["label"]].append((" ".join(words[:half]), " " + " ".join(words[half:])))
    rng = np.random.default_rng(seed)
    triples = []
    for label, opposite in [("positive", "negative"), ("negative", "positive")]:
        for prompt, continuation in halves[label]:
            other = halves[opposite][int(rng.integers(len(halves[opposite])))][1]
            chosen, rejected = (continuation, other) if label == "positive" else (other, continuation)
            triples.append((prompt, chosen, rejected))
    return triples


def benchmark_dataset(task: str, split: str = "train") -> PromptDataset:
    """Prompt dataset ``task`` of ``split``: ``"error-correction"`` from here, others from ``load_task``."""
    if task == "error-correction":
        return error_correction(split)
    from textenv.tasks import load_task

    return load_task(task, split)


def heldout_reviews(count: int = 64) -> list[str]:
    """The first ``count`` reviews of the drugs.com test split: human text whose perplexity tracks drift."""
    return [row["review"] for row in data.drug_review_rows("test")[:count]]


# ---- evaluation metrics -------------------------------------------------------------------------------
def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all n-grams of all texts (0 when there are none).

    >>> distinct_n(["a b a b", "a b"], 1), distinct_n(["a b a b", "a b"], 2)
    (0.3333333333333333, 0.5)
    """
    grams = Counter(
        tuple(words[i : i + n]) for words in map(str.split, texts) for i in range(len(words) - n + 1)
    )
    return len(grams) / max(1, sum(grams.values()))


def sequence_logprobs(lm: Any, ids: torch.Tensor, mask: torch.Tensor, n_new: int) -> torch.Tensor:
    """Log-probs (B, n_new) of the last ``n_new`` tokens of left-padded (B, T) sequences, one forward."""
    positions = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)  # (B, T-1): left padding gets position 0
    logits = lm(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions).logits[:, -n_new:]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -n_new:, None]).squeeze(-1)


@torch.no_grad()
def perplexity(
    lm: Any, tokenizer: Any, texts: list[str], max_tokens: int = 128, batch_size: int = 8
) -> float:
    """exp(mean token NLL) of ``texts`` under ``lm`` (each truncated to ``max_tokens``, no special tokens)."""
    nll, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        rows = [
            tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]
            for t in texts[start : start + batch_size]
        ]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])  # (B, T)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (B, T)
        logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        nll += float((token_nll * mask[:, 1:]).sum())
        count += int(mask[:, 1:].sum())
    return float(np.exp(nll / max(1, count)))


# ---- rewards --------------------------------------------------------------------------------------------
PREFERENCE_EPOCHS = 2


def _train_preference_model(out: Path) -> None:
    from rewards import TrainConfig, train_preference

    config = TrainConfig(epochs=PREFERENCE_EPOCHS, batch_size=16, seed=0, logdir="")
    train_preference(preference_pairs("train"), preference_pairs("test"), config).save(out)


def preference_reward_model(path: str | Path | None = None) -> Any:
    """The Bradley-Terry reward model of the preference benchmark, loaded from ``path`` (a directory written
    by ``PreferenceRewardModel.save`` or ``python -m rewards.train preference``). Without ``path``: the cached
    model ``<TEXTENV_CACHE>/rewards/drugs-preference-e2-seed0``, trained there on first use (all-MiniLM-L6-v2,
    ``PREFERENCE_EPOCHS`` epochs on ``preference_pairs("train")``, pairwise accuracy held out on
    ``preference_pairs("test")``; a few minutes on 2 CPU cores).
    """
    from rewards import PreferenceRewardModel
    from textenv.cache import cached_dir

    if path is None:
        path = cached_dir(f"rewards/drugs-preference-e{PREFERENCE_EPOCHS}-seed0", _train_preference_model)
    return PreferenceRewardModel.load(path)


def build_reward(name: str, reward_model: str | Path | None = None) -> Any:
    """A reward callable by benchmark name: ``classifier``, ``vader``, ``wer``, ``cer``, ``minilm``, ``chrf``,
    ``preference`` (``reward_model``: a saved PreferenceRewardModel directory; default the cached one).

    >>> build_reward("wer")(["p"], ["the cat"], ["the cat"]).tolist()
    [0.0]
    """
    import rewards

    if name == "classifier":
        return rewards.drugs_sentiment_model()
    if name == "vader":
        return rewards.VaderSentiment()
    if name in ("wer", "cer"):
        return rewards.ErrorRate(unit="word" if name == "wer" else "char")
    if name == "minilm":
        return rewards.EmbeddingSimilarity()
    if name == "chrf":
        return rewards.ChrF()
    if name == "preference":
        return preference_reward_model(reward_model)
    raise ValueError(
        f"Unknown reward {name!r}; use one of classifier, vader, wer, cer, minilm, chrf, preference, "
        "or pass reward_fn= (a callable) instead."
    )


# ---- benchmarks and env factories ------------------------------------------------------------------------
@dataclass(frozen=True)
class Benchmark:
    """How one benchmark is set up."""

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


BENCHMARKS: dict[str, Benchmark] = {
    "sentiment": Benchmark(
        "TextGen-Sentiment-v0", "drugs-sentiment", "classifier", ("vader",), heldout_text=True
    ),
    "error-rate": Benchmark("TextGen-ErrorRate-v0", "error-correction", "wer", ("cer",), max_new_tokens=40),
    "similarity": Benchmark("TextGen-Similarity-v0", "shakespeare", "minilm", ("chrf",), max_new_tokens=24),
    "preference": Benchmark(
        "TextGen-Preference-v0", "drugs-sentiment", "preference", ("classifier", "vader"), heldout_text=True
    ),
}


def env_kwargs(
    benchmark: str, reward: str | None = None, reward_model: str | Path | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Keyword arguments of ``TextGenEnv`` for ``benchmark``; explicit ``kwargs`` (``dataset``, ``reward_fn``,
    ``max_new_tokens``, ``split``, ``model``...) override the benchmark's defaults."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}.")
    spec = BENCHMARKS[benchmark]
    split = kwargs.pop("split", "train")
    if kwargs.get("task") is None and kwargs.get("dataset") is None:
        kwargs["dataset"] = benchmark_dataset(spec.task, split)
    elif kwargs.get("task") is not None:
        kwargs["split"] = split
    if kwargs.get("reward_fn") is None:
        kwargs["reward_fn"] = build_reward(reward or spec.reward, reward_model)
    kwargs.setdefault("max_new_tokens", spec.max_new_tokens)
    kwargs.setdefault("max_prompt_tokens", spec.max_prompt_tokens)
    return kwargs


def make_env(benchmark: str = "sentiment", **kwargs: Any) -> Any:
    """Entry point of the benchmark env ids: a ``TextGenEnv`` set up by :func:`env_kwargs`."""
    from textenv.envs import TextGenEnv

    return TextGenEnv(**env_kwargs(benchmark, **kwargs))


def make_vector_env(num_envs: int = 1, benchmark: str = "sentiment", **kwargs: Any) -> Any:
    """Vector entry point of the benchmark env ids: a ``TextGenVectorEnv`` set up by :func:`env_kwargs`."""
    from textenv.envs import TextGenVectorEnv

    return TextGenVectorEnv(num_envs, **env_kwargs(benchmark, **kwargs))
