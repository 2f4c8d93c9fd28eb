"""The compiled decode path (``decode="compiled"``, :mod:`agents.decode`): a rollout on the static per-row KV
cache with the compiled step samples what the eager one samples, PPO's ratio stays 1, a restarted row does
not recompile, a resumed run goes on exactly, and where torch cannot compile a one-line notice is given and
the eager step takes over.

Compiling costs time (about 10-30 s for the tiny model on a 2-core CPU the first time, well under a second
later in the same process), so one module-scoped pair of agents serves the comparisons, every compiled
agent here has the same shapes (4 envs, 12 + 8 slots), and the multi-turn bookkeeping test runs the static
path with the compiler replaced by the plain function (the same code, not compiled).

Tolerance: the compiled step and the eager one compute the same function on a different layout (the eager
cache grows and is cropped, the static one holds P + N slots per row) and with fused kernels, so their fp32
log-probs differ by float rounding (about 1e-6); with the same seed the sampled tokens agree.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch._dynamo.utils
from test_agents_chat import make_env as chat_env
from test_agents_sampling import first_epoch_ratio, first_rollout, make_env

import agents.decode
import agents.kv_cache
from agents import PPO

STOPS = [5, 6, 7, 8, 9, 10]  # episodes end early and out of step: rows restart at different times


def agent(decode: str, env: Any = None, **settings: Any) -> PPO:
    """A seeded fp32 PPO on ``env`` (default: 4 envs with stop tokens and groups of 2, so that a group's
    next episode reuses its prompt)."""
    torch.manual_seed(0)
    env = make_env(stop_token_ids=STOPS, group_size=2) if env is None else env
    config = {"episodes_per_rollout": 8, "minibatch_size": 8, "precision": "fp32", **settings}
    return PPO(env, model="tiny-sp", seed=0, decode=decode, **config)


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def rollouts() -> dict[str, Any]:
    eager = first_rollout(agent("eager"))  # each agent seeds the global RNG: one after the other
    compiled = agent("compiled")
    return {"eager": eager, "compiled": first_rollout(compiled), "agent": compiled}


def test_compiled_and_eager_rollouts_sample_the_same_tokens(rollouts: dict[str, Any]) -> None:
    (eager, _), (compiled, _) = rollouts["eager"], rollouts["compiled"]
    assert rollouts["agent"].decoder.active and rollouts["agent"].decoder.compile_seconds > 0
    assert torch.equal(eager.input_ids, compiled.input_ids)
    assert (eager.old_logprobs - compiled.old_logprobs).abs().max() < 1e-5
    assert (eager.old_values - compiled.old_values).abs().max() < 1e-5
    assert int(eager.gen_mask.sum(-1).min()) < 8, "some episodes should have stopped early"


def test_the_ratio_is_one_with_the_compiled_step(rollouts: dict[str, Any]) -> None:
    batch, scored = rollouts["compiled"]
    ratio = first_epoch_ratio(rollouts["agent"], batch, scored)
    assert ratio.numel() > 20
    assert (ratio - 1).abs().max() < 1e-4, (ratio - 1).abs().max()


def test_a_restarted_row_does_not_recompile(
    rollouts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = rollouts["agent"]
    restarts: list[int] = []  # rows prefilled at a step, when fewer than all rows restart
    real_write = agents.kv_cache._write_static_rows

    def counting(cache, decoder, rows, *args: Any, **kwargs: Any) -> None:  # noqa: ANN001
        if not kwargs["fresh"]:
            restarts.append(len(rows))
        real_write(cache, decoder, rows, *args, **kwargs)

    monkeypatch.setattr(agents.kv_cache, "_write_static_rows", counting)
    before = graphs()
    _, callback = compiled._setup_learn(total_timesteps=10**6, reset_num_timesteps=False)
    for _ in range(2):
        assert compiled.collect_rollouts(compiled.env, callback)
    assert restarts and min(restarts) < 4, restarts
    assert compiled._step_cache.reused_tokens > 0  # a group's second episode kept its prompt
    assert graphs() == before, "a row's restart or prompt reuse compiled the step again"


def test_resume_with_compiled_decoding_is_exact(tmp_path: Path) -> None:
    """N steps straight equal N/2 + save + load + N/2, with the kept static KV cache in the checkpoint."""
    settings = {"learning_rate": 1e-3, "episodes_per_rollout": 8, "minibatch_size": 4}
    straight = agent("compiled", **settings)
    straight.learn(96)
    first = agent("compiled", **settings)
    first.learn(48)
    first.save(tmp_path / "half")
    with np.load(tmp_path / "half" / "rollout_state.npz") as data:
        assert "kv_write_slot" in data.files
    resumed = PPO.load(tmp_path / "half", env=make_env(stop_token_ids=STOPS, group_size=2))
    assert resumed.decoder is not None
    resumed.learn(96 - resumed.num_timesteps, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_multi_turn_rows_on_the_static_cache_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation's new turns extend each row's static slots; the compiler is replaced by the function
    itself here (the bookkeeping under test is the same, and compiling another shape costs CI time)."""
    monkeypatch.setattr(agents.decode.torch, "compile", lambda function, **_: function)
    extended: list[int] = []
    real_extend = agents.kv_cache._extend_static

    def counting(model, cache, rows, *args: Any) -> None:  # noqa: ANN001
        extended.append(len(rows))
        real_extend(model, cache, rows, *args)

    monkeypatch.setattr(agents.kv_cache, "_extend_static", counting)
    batches = []
    for decode in ("eager", "compiled"):
        chat = agent(decode, chat_env(num_envs=4, max_turns=3))
        batches.append(first_rollout(chat)[0])
        if decode == "compiled":
            assert chat._step_cache.write_slot is not None  # it ran on the static rows
    eager, static = batches
    assert extended, "no new turn was fed on top of a row's static cache"
    assert torch.equal(eager.input_ids, static.input_ids)
    assert (eager.old_logprobs - static.old_logprobs).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["TextGen-v0", "TextGenSeq-v0"], ids=["token", "sequence"])
def test_a_one_line_notice_when_torch_cannot_compile(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compilation failing (here: torch.compile raising at the first step) gives one RuntimeWarning and the
    eager path's very tokens."""

    def broken(function: Any, **_: Any) -> Any:
        def fails(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no C++ compiler found\nmore detail")

        return fails

    def rollout(decode: str) -> torch.Tensor:
        return first_rollout(agent(decode, make_env(kind)))[0].input_ids

    monkeypatch.setattr(agents.decode.torch, "compile", broken)
    import transformers.generation.utils as generation

    monkeypatch.setattr(generation.torch, "compile", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallen_back = rollout("compiled")
    notices = [w for w in caught if "compiled decoding is unavailable" in str(w.message)]
    assert len(notices) == 1 and "no C++ compiler found" in str(notices[0].message)
    assert "\n" not in str(notices[0].message)
    assert torch.equal(fallen_back, rollout("eager"))


def test_bad_decode_setting_says_how_to_fix() -> None:
    with pytest.raises(
        ValueError, match=r"decode='fast' is not known; use one of \('eager', 'compiled', 'auto'\)"
    ):
        PPO(make_env(), model="tiny-sp", decode="fast")
