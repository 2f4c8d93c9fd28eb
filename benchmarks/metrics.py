"""Evaluation metrics of the benchmark scripts: diversity and perplexity of held-out text.

:func:`benchmarks.evaluation.evaluate` reports them beside each task's reward before and after training.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

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
