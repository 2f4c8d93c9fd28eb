"""Per-token KL penalty between the policy and a frozen reference model (TRL / DeepSpeed-Chat estimators)."""

from __future__ import annotations

from typing import Any

KL_KINDS = ("kl", "abs", "mse", "full")


def kl_penalty(logprobs: Any, ref_logprobs: Any, kind: str = "kl") -> Any:
    """Per-token penalty from the log-ratio ``logprobs - ref_logprobs`` of policy to reference (torch).

    ``kind`` picks the estimator of ``KL(policy || reference)`` at each token:

    - ``"kl"``: ``logprobs - ref_logprobs`` (k1; unbiased, can be negative; DeepSpeed-Chat's reward term);
    - ``"abs"``: ``|logprobs - ref_logprobs|``;
    - ``"mse"``: ``0.5 * (logprobs - ref_logprobs) ** 2`` (k2);
    - ``"full"``: the exact KL over the vocabulary. Here both arguments are full log-distributions of shape
      ``(..., vocab)`` and the result has shape ``(...)``: ``sum_v p(v) * (logprobs[v] - ref_logprobs[v])``.

    For the first three kinds the arguments are the log-probs of the sampled tokens, ``(B, T)``, and the
    result has the same shape. The agent usually subtracts ``beta * kl_penalty(...)`` from the per-token
    reward; mask padding yourself.

    >>> import torch
    >>> logprobs, ref_logprobs = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    >>> kl_penalty(logprobs, ref_logprobs).tolist()
    [[0.5, -1.0]]
    >>> kl_penalty(logprobs, ref_logprobs, kind="abs").tolist()
    [[0.5, 1.0]]
    >>> kl_penalty(logprobs, ref_logprobs, kind="mse").tolist()
    [[0.125, 0.5]]
    >>> p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.25, 0.75]).log()
    >>> round(kl_penalty(p, q, kind="full").item(), 4)  # 0.5*ln 2 + 0.5*ln(2/3)
    0.1438
    """
    import torch

    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r} is not known; use one of {KL_KINDS}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs has shape {tuple(logprobs.shape)} but ref_logprobs has {tuple(ref_logprobs.shape)}; "
            "pass both for the same tokens"
        )
    log_ratio = logprobs - ref_logprobs
    if kind == "kl":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind == "mse":
        return 0.5 * log_ratio.square()
    return torch.nn.functional.kl_div(ref_logprobs, logprobs, log_target=True, reduction="none").sum(-1)
