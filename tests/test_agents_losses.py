"""The policy-gradient math of agents.losses against hand-computed values (more cases are its doctests)."""

from __future__ import annotations

import pytest
import torch

from agents.losses import entropy_from_logits, kl_penalty


def test_kl_penalty_kinds() -> None:
    logits, ref_logits = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    logprobs, ref_logprobs = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    full = kl_penalty(logprobs, ref_logprobs, kind="full")
    manual = (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1)
    torch.testing.assert_close(full, manual)
    assert full.shape == (2, 3) and bool((full >= 0).all())
    tokens = torch.zeros(2, 3, 1, dtype=torch.long)
    sampled, ref_sampled = (
        logprobs.gather(-1, tokens).squeeze(-1),
        ref_logprobs.gather(-1, tokens).squeeze(-1),
    )
    torch.testing.assert_close(kl_penalty(sampled, ref_sampled, "kl"), sampled - ref_sampled)
    assert bool((kl_penalty(sampled, ref_sampled, "mse") >= 0).all())
    with pytest.raises(ValueError, match="kind="):
        kl_penalty(sampled, ref_sampled, "k9")
    with pytest.raises(ValueError, match="shape"):
        kl_penalty(sampled, ref_logprobs)


def test_entropy_ignores_masked_tokens() -> None:
    logits = torch.tensor([[1.0, 2.0, -torch.inf], [0.0, 0.0, 0.0]])
    expected = entropy_from_logits(torch.tensor([[1.0, 2.0]]))[0]
    result = entropy_from_logits(logits)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result[0], expected)
    torch.testing.assert_close(result[1], torch.log(torch.tensor(3.0)))
