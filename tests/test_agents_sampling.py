"""Sampling controls and precision: the update scores tokens under the distribution that drew them.

PPO's ratio at identical weights must be 1: the "old" log-probs (recorded while acting, or recomputed on the
update path when a bf16 rollout copy acted) and the update's log-probs must agree. A token outside the top-p
nucleus is never sampled.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest
import torch

import textenv  # noqa: F401  (registers the envs)
from agents import PPO, REINFORCE
from agents.policy import completion_logits, evaluate_completions, process_logits
from agents.sampling import draw


def make_env(kind: str = "TextGen-v0", **kwargs: Any) -> gym.vector.VectorEnv:
    return gym.make_vec(
        kind,
        num_envs=4,
        model="tiny-sp",
        max_new_tokens=8,
        max_prompt_tokens=12,
        vectorization_mode="vector_entry_point",
        **kwargs,
    )


def first_rollout(agent):  # noqa: ANN001, ANN201
    """One rollout and its pre-update scoring, exactly as ``train()`` starts."""
    _, callback = agent._setup_learn(total_timesteps=10**6)
    assert agent.collect_rollouts(agent.env, callback)
    batch, scored, _ = agent._score_rollout()
    return batch, scored


def first_epoch_ratio(agent, batch, scored) -> torch.Tensor:  # noqa: ANN001
    """exp(update-path log-prob - old log-prob) on every generated token, before any optimizer step."""
    with torch.no_grad():
        ev = evaluate_completions(
            agent.engine,
            batch.input_ids,
            batch.attention_mask,
            agent.max_new_tokens,
            agent.n_actions,
            sampling=agent.sampling,
        )
    return torch.exp(ev.logprobs - scored.old_logprobs)[batch.gen_mask.bool()]


@pytest.mark.parametrize("kind", ["TextGen-v0", "TextGenSeq-v0"], ids=["token", "sequence"])
def test_temperature_and_top_p_keep_the_ratio_at_one(kind: str) -> None:
    torch.manual_seed(0)
    agent = PPO(
        make_env(kind),
        model="tiny-sp",
        seed=0,
        precision="fp32",
        temperature=0.7,
        top_p=0.9,
        episodes_per_rollout=16,
        minibatch_size=8,
    )
    batch, scored = first_rollout(agent)
    ratio = first_epoch_ratio(agent, batch, scored)
    assert ratio.numel() > 50
    assert (ratio - 1).abs().max() < 1e-4, (ratio - 1).abs().max()

    # every sampled token lies inside the nucleus of the distribution it was drawn from
    with torch.no_grad():
        logits, _ = completion_logits(
            agent.policy, batch.input_ids, batch.attention_mask, agent.max_new_tokens, agent.n_actions
        )
    processed = process_logits(logits, agent.sampling)  # no token forced back in
    taken = processed.gather(-1, batch.input_ids[:, -agent.max_new_tokens :, None]).squeeze(-1)
    real = batch.gen_mask.bool()
    assert torch.isfinite(taken[real]).all()
    filtered = torch.isinf(processed[real]).float().mean()
    assert filtered > 0.1, "top_p=0.9 should exclude part of the vocabulary at most positions"


def test_plain_sampling_is_unchanged() -> None:
    torch.manual_seed(0)
    agent = REINFORCE(
        make_env(), model="tiny-sp", seed=0, precision="fp32", episodes_per_rollout=8, minibatch_size=8
    )
    assert agent.sampling.unchanged
    batch, scored = first_rollout(agent)
    assert scored.rollout_gap is None  # the recorded log-probs are the update path's own
    assert (first_epoch_ratio(agent, batch, scored) - 1).abs().max() < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rollout_copy_leaves_the_update_path_alone(precision: str) -> None:
    """With a bf16 copy acting, the old log-probs come from the update path: the ratio is 1 at identical
    weights, and the gap between copy and update path is reported (0 when no copy acts)."""
    torch.manual_seed(0)
    agent = PPO(
        make_env(),
        model="tiny-sp",
        seed=0,
        precision=precision,
        rollout_precision="bf16",
        episodes_per_rollout=16,
        minibatch_size=8,
    )
    trained_dtype = next(agent.policy.parameters()).dtype
    batch, scored = first_rollout(agent)
    ratio = first_epoch_ratio(agent, batch, scored)
    if precision == "fp32":
        assert trained_dtype == torch.float32 and agent.rollout_copy is not None
        assert next(agent.actor.parameters()).dtype == torch.bfloat16
        assert agent.rollout_copy.nbytes < sum(p.numel() * 4 for p in agent.policy.parameters()) * 0.6
        assert (ratio - 1).abs().max() < 1e-5
        assert scored.rollout_gap is not None and 0 < scored.rollout_gap < 0.05, scored.rollout_gap
        print(f"\nmean |rollout - update log-prob|, bf16 copy vs fp32 update: {scored.rollout_gap:.5f}")
    else:  # training in bf16 already: no copy, the network acts on its own weights
        assert trained_dtype == torch.bfloat16 and agent.rollout_copy is None and agent.actor is agent.policy
        assert (ratio - 1).abs().max() < 0.05, (ratio - 1).abs().max()
        print(f"\nbf16, no copy: max |ratio - 1| at identical weights {float((ratio - 1).abs().max()):.5f}")


def test_rollout_copy_follows_the_updates() -> None:
    agent = PPO(
        make_env(),
        model="tiny-sp",
        seed=0,
        precision="fp32",
        rollout_precision="bf16",
        episodes_per_rollout=8,
        minibatch_size=8,
        learning_rate=1e-2,
    )
    agent.learn(total_timesteps=64)
    assert agent.rollout_copy is not None
    agent.rollout_copy.sync()
    for copied, trained in zip(agent.actor.parameters(), agent.policy.parameters(), strict=True):
        assert torch.equal(copied, trained.detach().to(torch.bfloat16))


def test_bad_sampling_settings_say_how_to_fix() -> None:
    env = make_env()
    for kwargs, message in [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an int >= 0"),
        ({"precision": "fp16"}, "precision='fp16' is not known"),
        ({"rollout_precision": "int8"}, "rollout_precision='int8' is not known"),
    ]:
        with pytest.raises(ValueError, match=message):
            PPO(env, model="tiny-sp", **kwargs)
    if not torch.cuda.is_available():  # DeepSpeed's fp16 mode runs on a GPU only
        with pytest.raises(ValueError, match="'fp16.enabled' is true in the DeepSpeed config, but fp16"):
            PPO(env, model="tiny-sp", deepspeed_config={"fp16": {"enabled": True}})
    with pytest.raises(ValueError, match="sets 'bf16.enabled' to True but the agent's precision is 'fp32'"):
        PPO(env, model="tiny-sp", precision="fp32", deepspeed_config={"bf16": {"enabled": True}})


def test_draw_samples_the_distribution_and_never_a_filtered_token() -> None:
    """``agents.sampling.draw`` (inverse CDF) against the exact probabilities: 20,000 draws per row of a
    skewed distribution with a filtered (-inf) token in the middle and one at each end."""
    torch.manual_seed(0)
    logits = torch.tensor([float("-inf"), 2.0, 0.5, float("-inf"), -1.0, 1.0, float("-inf")])
    probs = torch.softmax(logits, -1)
    rows = 20_000
    tokens = draw(logits.repeat(rows, 1))
    assert tokens.shape == (rows,) and tokens.dtype == torch.int64
    counts = torch.bincount(tokens, minlength=len(logits)).float()
    assert counts[torch.isinf(logits)].sum() == 0
    # binomial standard error of each frequency is at most sqrt(0.25 / rows) = 0.0035: allow 4 of them
    assert (counts / rows - probs).abs().max() < 0.014, counts / rows
    # the same distribution as torch.multinomial, which it replaces (a two-sample check on the frequencies)
    reference = torch.multinomial(probs.repeat(rows, 1), 1).squeeze(-1)
    expected = torch.bincount(reference, minlength=len(logits)).float()
    assert (counts - expected).abs().max() / rows < 0.02
    # one-hot rows, and a row whose only finite logit is the last token
    certain = torch.full((3, 5), float("-inf"))
    certain[0, 0] = certain[1, 2] = certain[2, 4] = 0.0
    assert draw(certain).tolist() == [0, 2, 4]


def test_sequence_rollouts_end_at_the_env_stop_tokens() -> None:
    """On ``TextGenSeq-v0`` with stop tokens, generation stops at any of them and the rollout batch ends each
    completion at its first stop token (so the update never trains on what the env threw away)."""
    torch.manual_seed(0)
    probe = gym.make("TextGenSeq-v0", model="tiny-sp", max_new_tokens=8, max_prompt_tokens=12)
    eos = probe.unwrapped.eos_token_id
    stops = [5, 6, 7, 8, 9, 10, 11, 12]  # frequent enough ids of the tiny vocabulary
    env = make_env("TextGenSeq-v0", stop_token_ids=stops)
    agent = REINFORCE(env, model="tiny-sp", seed=0, episodes_per_rollout=16, minibatch_size=8)
    assert sorted(agent.stop_token_ids) == sorted({*stops, eos})
    batch, _ = first_rollout(agent)
    completions = batch.input_ids[:, -8:]
    lengths = batch.gen_mask.sum(-1)
    ended = 0
    for row, length in zip(completions, lengths.long().tolist(), strict=True):
        is_stop = torch.isin(row[:length], torch.tensor([*stops, eos], device=row.device))
        assert not is_stop[:-1].any()  # no stop token before the last kept one
        ended += int(is_stop[-1])
    assert ended >= 4, "some completions should have ended at a stop token"


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "refresh"])
def test_kept_kv_cache_spares_in_flight_rows_a_second_prefill(keep: bool, monkeypatch) -> None:  # noqa: ANN001
    """With ``keep_kv_cache`` (the default) a row that is mid-episode when an update ends goes on from the
    cache it holds; without it, the first step after each update prefills such rows again (the test would
    count none there if the episodes never crossed an update). Stop tokens end episodes early, so the four
    envs fall out of step and some are always mid-episode at the end of a rollout."""
    import agents.on_policy as on_policy

    cold: list[int] = []  # per step: mid-episode rows whose cache does not hold their observation's prefix
    real_step = on_policy.cached_step

    def counting(model, ids, mask, prompt_len, cache, **kwargs):  # noqa: ANN001, ANN003, ANN202
        generated = mask[:, prompt_len:].sum(-1)
        held = cache.fed_len if cache.fed_len is not None else torch.zeros_like(generated)
        cold.append(int(((generated > 0) & (held != prompt_len + generated - 1)).sum()))
        return real_step(model, ids, mask, prompt_len, cache, **kwargs)

    monkeypatch.setattr(on_policy, "cached_step", counting)
    env = make_env(stop_token_ids=[5, 6, 7, 8, 9, 10])
    agent = PPO(
        env,
        model="tiny-sp",
        seed=0,
        precision="fp32",
        keep_kv_cache=keep,
        episodes_per_rollout=6,
        minibatch_size=6,
        learning_rate=1e-2,
    )
    agent.learn(total_timesteps=4 * 8 * 6)
    assert len(cold) > 40  # several rollouts and updates ran
    if keep:
        assert sum(cold) == 0, cold
    else:
        assert sum(cold) >= 3, cold  # in-flight rows recomputed after the updates
