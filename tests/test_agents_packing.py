"""Prepacked bf16 linears for gradient-free CPU forwards (agents/packing.py): bitwise the same outputs as the
layers' own path, only while the context is open, and the same training run with or without them."""

from __future__ import annotations

import pytest
import torch
from test_agents_sampling import first_rollout, make_env

import textenv
from agents import PPO, REINFORCE, packing
from agents.packing import packed_linears

pytestmark = pytest.mark.skipif(not packing.cpu_bf16(), reason="this CPU has no oneDNN bf16 kernels")


def tiny_lm(dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    torch.manual_seed(0)
    return textenv.load_model("tiny-sp").to(dtype)


def test_packed_forwards_are_bitwise_the_same_and_only_while_open() -> None:
    lm = tiny_lm()
    ids = torch.randint(4, 500, (4, 20), generator=torch.Generator().manual_seed(0))
    n_linears = sum(isinstance(m, torch.nn.Linear) for m in lm.modules())
    with torch.no_grad():
        plain = lm(input_ids=ids).logits
        with packed_linears(lm, rows=4) as packed:
            assert packed == n_linears  # the tied LM head too
            inside = lm(input_ids=ids).logits
            last = lm(input_ids=ids, logits_to_keep=1).logits  # a strided slice into the head
            with packed_linears(lm) as nested:
                assert nested == 0  # already packed: left as it is
        assert not any("forward" in vars(m) for m in lm.modules())  # closed: the layers' own forwards
    assert torch.equal(inside, plain)
    assert torch.equal(last, plain[:, -1:])


def test_a_forward_that_trains_takes_the_layers_own_path() -> None:
    lm = tiny_lm()
    ids = torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(1))

    def grads() -> list[torch.Tensor]:
        lm.zero_grad()
        lm(input_ids=ids).logits.float().square().mean().backward()
        return [p.grad.clone() for p in lm.parameters() if p.grad is not None]

    expected = grads()
    with packed_linears(lm):
        inside = grads()
    assert len(inside) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(inside, expected, strict=True))


def test_nothing_is_packed_in_fp32_or_when_disabled() -> None:
    with packed_linears(tiny_lm(torch.float32)) as packed:
        assert packed == 0
    lm = tiny_lm()
    with packed_linears(lm, enabled=False) as packed:
        assert packed == 0 and not any("forward" in vars(m) for m in lm.modules())


@pytest.mark.parametrize("algo", [PPO, REINFORCE])
def test_agents_roll_out_and_learn_the_same_with_packed_weights(algo, monkeypatch) -> None:  # noqa: ANN001
    """bf16 agents roll out on packed weights by default (counted), with the same rollout, scores and
    trained weights as with ``pack_cpu_weights=False``."""
    calls = {"n": 0}
    original = packing._packed_forward

    def counted(*args):  # noqa: ANN002, ANN202
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(packing, "_packed_forward", counted)
    results = []
    for pack in (True, False):
        torch.manual_seed(0)
        agent = algo(
            make_env(),
            model="tiny-sp",
            seed=0,
            precision="bf16",
            episodes_per_rollout=8,
            minibatch_size=4,
            learning_rate=1e-3,
            pack_cpu_weights=pack,
        )
        before = calls["n"]
        batch, scored = first_rollout(agent)
        used = calls["n"] - before
        agent.train()
        batch2, _ = first_rollout(agent)  # acting after an update: the packs are rebuilt, not stale
        weights = [p.detach().clone() for p in agent.policy.parameters()]
        results.append((used, batch, scored, batch2, weights))
    (used, batch, scored, batch2, weights), (unused, batch_off, scored_off, batch2_off, weights_off) = results
    assert used > 0 and unused == 0
    assert torch.equal(batch.input_ids, batch_off.input_ids) and torch.equal(
        batch2.input_ids, batch2_off.input_ids
    )
    assert torch.equal(scored.ref_logprobs, scored_off.ref_logprobs)
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_off, strict=True))


def test_pack_cpu_weights_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="pack_cpu_weights must be True or False"):
        PPO(make_env(), model="tiny-sp", pack_cpu_weights="yes")
