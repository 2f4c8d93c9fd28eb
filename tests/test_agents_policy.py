"""KV-cached stepping gives the same log-probs and values as one full forward of the whole episode."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from agents.kv_cache import StepCache, cached_step
from agents.policy import ActorCritic, position_ids_from_mask

P, N, V = 6, 5, 50


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=V,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=V, bos_token_id=1, eos_token_id=2)
    )


def make_obs(prompt_lens: list[int], gen: list[list[int]], prompts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    ids = torch.zeros(len(prompt_lens), P + N, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (plen, tokens) in enumerate(zip(prompt_lens, gen, strict=True)):
        ids[i, P - plen : P], mask[i, P - plen : P] = prompts[i, :plen], 1
        ids[i, P : P + len(tokens)], mask[i, P : P + len(tokens)] = torch.tensor(tokens, dtype=torch.long), 1
    return ids, mask


@pytest.mark.parametrize("make_lm", [tiny_llama, tiny_gpt2])
def test_cached_step_matches_full_forward(make_lm) -> None:
    model = ActorCritic(make_lm())
    torch.nn.init.normal_(model.value_head.weight, std=0.1)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, V, (3, P), generator=gen)
    prompt_lens = [6, 3, 1]
    # row 1 resets after 2 tokens (new prompt, new length), like SB3's same-step autoreset
    lengths = [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    tokens = torch.randint(3, V, (3, N), generator=gen)
    cache = StepCache()
    for step in range(5):
        if step == 3:
            prompts[1] = torch.randint(3, V, (P,), generator=gen)
            prompt_lens[1] = 4
        gens = [tokens[i, : lengths[i][step]].tolist() for i in range(3)]
        ids, mask = make_obs(prompt_lens, gens, prompts)
        logits, values = cached_step(model, ids, mask, P, cache)
        with torch.no_grad():
            full_logits, full_values = model(ids, mask, position_ids_from_mask(mask))
        last = P + torch.tensor([len(g) for g in gens]) - 1
        rows = torch.arange(3)
        torch.testing.assert_close(logits, full_logits[rows, last], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(values, full_values[rows, last], atol=1e-4, rtol=1e-4)
        assert cache.slot_mask is not None and cache.slot_mask.shape[1] <= P + N


@pytest.mark.parametrize("make_lm", [tiny_llama, tiny_gpt2])
def test_group_episodes_reuse_the_cached_prompt(make_lm) -> None:
    """The next episode of an RLOO group (same prompt, same row) costs no prefill, and its logits and values
    still equal a full forward of the observation."""
    model = ActorCritic(make_lm())
    torch.nn.init.normal_(model.value_head.weight, std=0.1)
    gen = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, V, (2, P), generator=gen)
    prompt_lens = [5, 3]
    cache = StepCache()
    prefills = []
    for episode in range(3):  # three episodes of one group on each row, of different lengths
        tokens = torch.randint(3, V, (2, N), generator=gen)
        for step in range(N - episode):
            gens = [tokens[i, :step].tolist() for i in range(2)]
            ids, mask = make_obs(prompt_lens, gens, prompts)
            logits, values = cached_step(model, ids, mask, P, cache)
            with torch.no_grad():
                full_logits, full_values = model(ids, mask, position_ids_from_mask(mask))
            torch.testing.assert_close(logits, full_logits[:, P + step - 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(values, full_values[:, P + step - 1], atol=1e-4, rtol=1e-4)
        prefills.append(cache.prefill_tokens)
    assert prefills[0] == (5 - 1) + (3 - 1)  # the prompts (all but their last token) were prefilled once
    assert prefills[2] == prefills[0]  # ... and never again
    assert cache.reused_tokens == 2 * prefills[0]


def test_an_outdated_cache_finishes_its_episode_but_lends_no_prompt() -> None:
    """After an update (``mark_outdated``) a row goes on from the cache it holds, without a prefill; the next
    episode of its group then prefills its prompt again instead of reusing the outdated one."""
    model = ActorCritic(tiny_llama())
    gen = torch.Generator().manual_seed(4)
    prompts = torch.randint(3, V, (2, P), generator=gen)
    prompt_lens = [5, 3]
    tokens = torch.randint(3, V, (2, N), generator=gen)
    cache = StepCache()
    prefills = []
    for episode in range(2):  # two episodes of one group on each row
        for step in range(N):
            if episode == 0 and step == 2:
                cache.mark_outdated()  # an update ends mid-episode
            before = cache.prefill_tokens
            ids, mask = make_obs(prompt_lens, [tokens[i, :step].tolist() for i in range(2)], prompts)
            logits, _ = cached_step(model, ids, mask, P, cache)
            with torch.no_grad():
                full_logits, _ = model(ids, mask, position_ids_from_mask(mask))
            torch.testing.assert_close(logits, full_logits[:, P + step - 1], atol=1e-4, rtol=1e-4)
            prefills.append(cache.prefill_tokens - before)
    assert prefills[:N] == [(5 - 1) + (3 - 1)] + [0] * (N - 1)  # no prefill after mark_outdated
    assert prefills[N] == (5 - 1) + (3 - 1) and cache.reused_tokens == 0  # the prompt is computed again
    assert cache.outdated is not None and not cache.outdated.any()


@pytest.mark.parametrize("make_lm", [tiny_llama, tiny_gpt2])
def test_shared_prompt_gives_the_same_values_and_gradients(make_lm) -> None:
    """Computing a group's prompt once (and attending its k completions to it) equals the unshared forward,
    in the log-probs, the values and the gradients through the shared prompt."""
    from agents.policy import evaluate_completions

    model = ActorCritic(make_lm())
    torch.nn.init.normal_(model.value_head.weight, std=0.1)
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(3, V, (2, P), generator=gen)
    group_ids = torch.tensor([5, 5, 5, 9, 9, 9, 5])  # two groups, not contiguous
    prompt_lens = [4 if g == 5 else 6 for g in group_ids.tolist()]
    lengths = [5, 2, 4, 5, 1, 3, 5]
    gens = [torch.randint(3, V, (n,), generator=gen).tolist() for n in lengths]
    ids, mask = make_obs(prompt_lens, gens, prompts[(group_ids == 9).long()])
    gen_mask = mask[:, P:].float()

    def loss_and_grads(groups):  # noqa: ANN001, ANN202
        model.zero_grad()
        ev = evaluate_completions(model, ids, mask, N, V, with_entropy=True, group_ids=groups)
        loss = (ev.logprobs * gen_mask).sum() + (ev.values * gen_mask).sum() + (ev.entropy * gen_mask).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return ev, grads

    from agents.policy import shared_prompt_logits

    assert shared_prompt_logits(model, ids, mask, N, group_ids) is not None  # the shared path is taken
    unshared, unshared_grads = loss_and_grads(None)
    shared, shared_grads = loss_and_grads(group_ids)
    real = gen_mask.bool()
    torch.testing.assert_close(shared.logprobs[real], unshared.logprobs[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.values[real], unshared.values[real], atol=1e-5, rtol=1e-5)
    assert len(shared_grads) == len(unshared_grads) > 0
    for a, b in zip(shared_grads, unshared_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shared", [False, True], ids=["per-episode", "shared-prompt"])
def test_padding_columns_of_every_episode_are_not_computed(shared: bool) -> None:
    """Leading slots that are padding in every episode are dropped before the forward: the same log-probs and
    values as the episodes without them, from fewer tokens."""
    from agents.policy import evaluate_completions

    model = ActorCritic(tiny_llama())
    torch.nn.init.normal_(model.value_head.weight, std=0.1)
    gen = torch.Generator().manual_seed(4)
    prompts = torch.randint(3, V, (3, P), generator=gen)
    gens = [torch.randint(3, V, (n,), generator=gen).tolist() for n in (5, 3, 4)]
    ids, mask = make_obs([4, 2, 3], gens, prompts)  # the first 2 of P slots are padding everywhere
    extra = 5  # and 5 more all-padding slots in front
    wide_ids = torch.cat([torch.zeros(3, extra, dtype=torch.long), ids], dim=1)
    wide_mask = torch.cat([torch.zeros(3, extra, dtype=torch.long), mask], dim=1)
    groups = torch.tensor([0, 1, 1]) if shared else None
    if shared:  # a group shares its prompt
        for tensor in (ids, mask, wide_ids, wide_mask):
            tensor[2, : tensor.shape[1] - N] = tensor[1, : tensor.shape[1] - N]
    widths: list[int] = []
    model.lm.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    narrow = evaluate_completions(model, ids[:, 2:], mask[:, 2:], N, V, group_ids=groups)
    wide = evaluate_completions(model, wide_ids, wide_mask, N, V, group_ids=groups)
    real = mask[:, P:].bool()
    torch.testing.assert_close(wide.logprobs[real], narrow.logprobs[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wide.values[real], narrow.values[real], atol=1e-5, rtol=1e-5)
    half = len(widths) // 2
    assert widths[half:] == widths[:half], widths  # the wide episodes' forwards saw no padding column more
