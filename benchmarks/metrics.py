"""Evaluation metrics of the benchmark scripts: diversity and perplexity of held-out text, and the paired
change of a score with its intervals.

Two intervals go with every paired change (after - before, same prompts and sampling seed) in the report:

- over seeds (:func:`mean_interval`): the Student's t interval of the per-seed mean changes. It treats the
  test prompts as fixed: every seed is scored on the same prompts, so their variation never enters it.
- over seeds and prompts (:func:`seeds_and_prompts_interval`): a two-way bootstrap that treats both the
  training seeds and the test prompts as random draws. It is the one the report's significance rule reads
  (:data:`SIGNIFICANCE`).

:func:`benchmarks.evaluation.evaluate` reports them beside each task's reward before and after training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import stats

from textenv import data


def heldout_reviews(count: int = 64) -> list[str]:
    """The first ``count`` reviews of the drugs.com test split: human text whose perplexity tracks drift."""
    return [row["review"] for row in data.drug_review_rows("test")[:count]]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all n-grams of all texts (0 when there are none).

    >>> distinct_n(["a b a b", "a b"], 1), distinct_n(["a b a b", "a b"], 2)
    (0.3333333333333333, 0.5)
    """
    grams = Counter(
        tuple(words[i : i + n]) for words in map(str.split, texts) for i in range(len(words) - n + 1)
    )
    return len(grams) / max(1, sum(grams.values()))


@torch.no_grad()
def perplexity(
    lm: Any, tokenizer: Any, texts: list[str], max_tokens: int = 128, batch_size: int = 8
) -> float:
    """exp(mean token NLL) of ``texts`` under ``lm`` (each truncated to ``max_tokens``, no special tokens)."""
    nll, count = 0.0, 0
    device = next(lm.parameters()).device
    for start in range(0, len(texts), batch_size):
        rows = [
            tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]
            for t in texts[start : start + batch_size]
        ]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)  # (B, T)
        logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        nll += float((token_nll * mask[:, 1:]).sum())
        count += int(mask[:, 1:].sum())
    return float(np.exp(nll / max(1, count)))


class PairedChange(NamedTuple):
    """Mean of ``after - before`` over paired samples, with its two-sided Student's t interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} ({self.level:.0%} CI {self.low:+.3f} to {self.high:+.3f}, n={self.n})"


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided Student's t interval of the mean of ``values`` (None for fewer than 2 values: one value
    has no spread to estimate).

    >>> mean_interval([1.0]) is None, [round(x, 3) for x in mean_interval([0.2, 0.3, 0.1, 0.2])]
    (True, [0.07, 0.33])
    """
    if len(values) < 2:
        return None
    array = np.asarray(values, np.float64)
    mean, sem = float(array.mean()), float(stats.sem(array))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(level, len(array) - 1, loc=mean, scale=sem)
    return float(low), float(high)


BOOTSTRAP_RESAMPLES = 10_000
"""Resamples of :func:`seeds_and_prompts_interval`."""
BOOTSTRAP_SEED = 0
"""Its fixed RNG seed: the report is byte-reproducible."""
SIGNIFICANCE = (
    "* : significant, i.e. the 95 % seeds-and-prompts bootstrap interval of the paired change excludes 0"
)
"""The report's one significance rule, in its one wording."""


def seeds_and_prompts_interval(
    changes: Any, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float] | None:
    """Two-way bootstrap interval of the mean paired change, seeds and prompts both random.

    ``changes[s][p]`` is the paired change (after - before) of training seed ``s`` on test prompt ``p``; every
    seed is scored on the same prompts. Each resample draws ``S`` seeds with replacement and, independently,
    ``P`` prompts with replacement, and takes the mean change over the drawn seeds x drawn prompts (a seed
    or prompt drawn twice counts twice). The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    percentiles of ``resamples`` such means, drawn with ``np.random.default_rng(seed)`` (fixed: the same
    data give the same interval, byte for byte). None for fewer than 2 seeds or 2 prompts: the seeds'
    spread cannot be estimated from one seed.

    A known case: with 2 seeds x 2 prompts, each draw picks each seed (prompt) 0, 1 or 2 times with
    probability 1/4, 1/2, 1/4, so the resampled mean of ``[[0, 0], [0, 4]]`` is 4 x (share of seed 1) x
    (share of prompt 1): 0 with probability 7/16, 1 with 1/4, 2 with 1/4, 4 with 1/16. Its 2.5th
    percentile is 0 and its 97.5th is 4; its 50 % interval (25th and 75th percentiles) is 0 to 2.

    >>> seeds_and_prompts_interval([[0.0, 0.0], [0.0, 4.0]])
    (0.0, 4.0)
    >>> seeds_and_prompts_interval([[0.0, 0.0], [0.0, 4.0]], level=0.5)
    (0.0, 2.0)
    >>> seeds_and_prompts_interval([[1.0, 2.0]]) is None
    True
    """
    array = np.asarray(changes, np.float64)  # (S, P)
    if array.ndim != 2:
        raise ValueError(f"changes must be a seeds x prompts table, got shape {array.shape}")
    n_seeds, n_prompts = array.shape
    if n_seeds < 2 or n_prompts < 2:
        return None
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples)  # (B, S)
    prompt_counts = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=resamples)  # (B, P)
    means = np.einsum("bs,sp,bp->b", seed_counts, array, prompt_counts) / (n_seeds * n_prompts)  # (B,)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def paired_change(before: Sequence[float], after: Sequence[float], level: float = 0.95) -> PairedChange:
    """The paired change ``after - before`` (same prompts, same sampling seeds) and its t interval.

    >>> str(paired_change([0.0, 0.1, 0.2, 0.1], [0.2, 0.4, 0.3, 0.3]))
    '+0.200 (95% CI +0.070 to +0.330, n=4)'
    """
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(
            f"paired_change needs two equally long lists of at least 2 paired scores, got {len(before)} "
            f"and {len(after)}"
        )
    diff = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    interval = mean_interval(diff.tolist(), level)
    assert interval is not None
    return PairedChange(float(diff.mean()), *interval, len(diff), level)
