"""How rollout tokens are drawn: the sampling settings, the processed distribution, and the draw itself.

:class:`Sampling` holds temperature, top-k and top-p; :func:`process_logits` turns the LM's logits into the
logits of the distribution that is sampled (the update scores taken tokens under the same one); :func:`draw`
samples one token per row from such logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class Sampling(NamedTuple):
    """How rollout tokens are drawn: the LM's distribution after temperature, top-k and top-p (in that order,
    as ``generate`` applies them). The defaults sample the distribution unchanged."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def unchanged(self) -> bool:
        return self.temperature == 1.0 and self.top_k == 0 and self.top_p >= 1.0


PLAIN_SAMPLING = Sampling()
"""The model's distribution as it is: temperature 1, no top-k or top-p filter."""


def process_logits(
    logits: torch.Tensor, sampling: Sampling, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits of the distribution rollouts sample from, in float32: (..., A) -> (..., A), with filtered
    tokens at -inf. ``keep`` (...,) are tokens that stay in (the ones actually taken: a token sampled by a
    bf16 rollout copy stays scorable even if rounding moved it just outside the update path's nucleus).

    >>> process_logits(torch.tensor([[2.0, 1.0, 0.0]]), Sampling(temperature=0.5, top_k=2))
    tensor([[4., 2., -inf]])
    """
    scores = logits.float()
    if sampling.unchanged:
        return scores
    shape = scores.shape
    flat = scores.reshape(-1, shape[-1])  # (M, A)
    if sampling.temperature != 1.0:
        flat = TemperatureLogitsWarper(sampling.temperature)(None, flat)  # type: ignore[arg-type]
    tempered = flat
    if sampling.top_k:
        flat = TopKLogitsWarper(sampling.top_k)(None, flat)  # type: ignore[arg-type]
    if sampling.top_p < 1.0:
        flat = TopPLogitsWarper(sampling.top_p)(None, flat)  # type: ignore[arg-type]
    if keep is not None and flat is not tempered:
        index = keep.reshape(-1, 1)  # (M, 1)
        flat = flat.scatter(-1, index, tempered.gather(-1, index))
    return flat.reshape(shape)


def draw(logits: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` (B, A), drawn from ``softmax(logits)``: (B,) int64.

    Inverse-CDF sampling (one uniform per row, a binary search in the cumulative probabilities), the same
    distribution as ``torch.multinomial`` but about 20x faster on a CPU for a 49k vocabulary (16 rows: 0.8 ms
    against 16 ms, where ``multinomial`` spends its time). Tokens at ``-inf`` (filtered by top-k/top-p) have
    probability 0 and are never drawn.

    >>> _ = torch.manual_seed(0)
    >>> tokens = draw(torch.tensor([[0.0, float("-inf"), 0.0]]).repeat(4000, 1))
    >>> sorted(set(tokens.tolist())), round(float((tokens == 2).float().mean()), 1)
    ([0, 2], 0.5)
    """
    probs = torch.softmax(logits.float(), dim=-1)  # (B, A)
    cumulative = probs.cumsum(-1)  # (B, A), non-decreasing
    threshold = torch.rand(probs.shape[0], 1, device=probs.device) * cumulative[:, -1:]  # (B, 1)
    # the first index whose cumulative sum exceeds the threshold: a zero-probability token never is
    index = torch.searchsorted(cumulative, threshold, right=True).clamp_(max=probs.shape[-1] - 1)  # (B, 1)
    # rounding can put the threshold at the very top, past the last nonzero token: take the mode then
    zero = probs.gather(-1, index) == 0
    index = torch.where(zero, probs.argmax(-1, keepdim=True), index)
    return index.squeeze(-1)
