"""Actor-critic around a transformers causal LM, frozen LM copies, completion scoring and KV-cached stepping.

Observation layout (the textenv contract, shared by any compatible env): ``input_ids`` and ``attention_mask``
of length ``P + N``; the prompt is left-padded into the first ``P`` slots and the generated tokens are
right-padded into the last ``N``. Position ids are always ``attention_mask.cumsum(-1) - 1`` clipped at 0
(as ``generate`` does for left padding), in rollouts and in training alike, so the log-probs a rollout
records equal the ones the update recomputes.

Every agent and the pre-update scoring read a batch of episodes through two functions, SB3's
``evaluate_actions`` for text: :func:`completion_logits` (one forward over whole episodes: the logits of the
N completion slots, restricted to the action space by :func:`action_logits`, and the values) and
:func:`evaluate_completions` (plus the log-probs and entropy of the tokens taken).

Why a value head on the shared trunk rather than a separate critic: it costs one ``Linear(hidden, 1)``
instead of a second copy of the model and its optimizer state (a 135M model plus AdamW is ~2.2 GB per copy
in fp32), and a rollout step gets the value from the same forward that produces the logits, so stepping
stays one forward per token. The price is that value-loss gradients reach the shared trunk; ``vf_coef``
keeps them small, as in Ziegler et al. (2019) and TRL's ``AutoModelForCausalLMWithValueHead``.

Dropout is switched off (``eval()`` mode) for good: with dropout, the log-probs of a rollout and of the update
would differ even at identical weights, which breaks PPO's ratio.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from agents.losses import entropy_from_logits, logprobs_from_logits
from agents.rollout import extend_cache
from agents.sampling import PLAIN_SAMPLING, Sampling, process_logits  # re-exported: the public names
from textenv.models import cache_argument


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of every slot: the number of real tokens before it (left padding gets position 0).

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]]))
    tensor([[0, 0, 0, 1, 2]])
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ActorCritic(nn.Module):
    """A causal LM (the actor) with a scalar value head on its last hidden state."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm.eval()
        hidden_size = lm.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden_size, 1, dtype=lm.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def train(self, mode: bool = True) -> ActorCritic:  # dropout stays off; see the module docstring
        return super().train(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K, V) and values (B, K) of the last ``logits_to_keep`` positions (all if 0)."""
        out = lm_forward(
            self.lm, input_ids, attention_mask, position_ids, past_key_values, logits_to_keep, hidden=True
        )
        hidden = out.hidden_states[-1]  # (B, T, H)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, K, H)
        values = self.value_head(hidden).squeeze(-1).float()  # (B, K)
        return out.logits, values


class FrozenLM(nn.Module):
    """A copy of a causal LM that takes no gradient step: the KL penalty's reference, DQN's target network.

    Its ``forward`` has :class:`ActorCritic`'s signature and returns ``(logits, None)`` (no value head), so
    :func:`completion_logits` and :func:`cached_step` take either.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = copy.deepcopy(lm).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenLM:
        return super().train(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, None]:
        """Logits (B, K, V) of the last ``logits_to_keep`` positions (all if 0), and no values."""
        out = lm_forward(self.lm, input_ids, attention_mask, position_ids, past_key_values, logits_to_keep)
        return out.logits, None


def lm_forward(
    lm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    past_key_values: DynamicCache | None = None,
    logits_to_keep: int = 0,
    hidden: bool = False,
) -> Any:
    """One forward of a causal LM with the layout's position ids (see the module docstring); the KV cache is
    used and extended only when one is passed, the hidden states returned only when ``hidden``."""
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    return lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **{cache_argument(lm): past_key_values},
        use_cache=past_key_values is not None,
        output_hidden_states=hidden,
        logits_to_keep=logits_to_keep,
    )


def action_logits(logits: torch.Tensor, n_actions: int) -> torch.Tensor:
    """The logits of the env's ``n_actions`` token ids (the first ones): (..., V) -> (..., n_actions).

    The one vocabulary mask of the agents: vocabulary rows past the action space (padding rows of the
    embedding) are never chosen, scored or trained. ``generate`` gets the same rule as ``suppress_tokens``.

    >>> action_logits(torch.zeros(2, 5), 3).shape
    torch.Size([2, 3])
    """
    return logits if logits.shape[-1] == n_actions else logits[..., :n_actions]


class CompletionEval(NamedTuple):
    """What one forward over whole episodes gives for their N completion slots."""

    logprobs: torch.Tensor  # (E, N) float32, log pi(token taken)
    entropy: torch.Tensor | None  # (E, N) float32, entropy of pi at each slot (when asked for)
    values: torch.Tensor | None  # (E, N) float32, value head (None for a FrozenLM)
    logits: torch.Tensor  # (E, N, n_actions)


def trim_left_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, n_new: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, T) episodes without the leading slots that are padding in every row: positions come from the
    mask, so a forward gives the same outputs on fewer tokens (sentiment prompts fill 35 of their 64 slots
    on average; a minibatch's longest one, about 57). The last prompt slot and the ``n_new`` completion slots
    always stay (the prompt's last slot predicts the first completion token).

    >>> ids = torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 6, 7]])
    >>> trim_left_padding(ids, (ids > 0).long(), n_new=2)[0]
    tensor([[5, 6, 7],
            [0, 6, 7]])
    """
    prompt_slots = attention_mask.shape[1] - n_new
    real = attention_mask[:, :prompt_slots].any(0)  # (P,)
    start = min(int(real.long().argmax()) if bool(real.any()) else prompt_slots, prompt_slots - 1)
    return (input_ids[:, start:], attention_mask[:, start:]) if start > 0 else (input_ids, attention_mask)


def completion_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_new: int,
    n_actions: int,
    group_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (E, N, n_actions) before each of the last ``n_new`` tokens of (E, P+N) episodes, and the values
    (E, N) or None, from one forward pass of ``model`` (an :class:`ActorCritic`, a :class:`FrozenLM`, the
    DeepSpeed engine around one, or a plain causal LM). The last token is never fed: nothing is predicted
    after it. With ``group_ids`` (E,), episodes of a group that share their prompt compute it once (see
    :func:`shared_prompt_logits`). Leading slots that are padding in every episode are dropped first
    (:func:`trim_left_padding`)."""
    input_ids, attention_mask = trim_left_padding(input_ids, attention_mask, n_new)
    if group_ids is not None and not isinstance(model, PreTrainedModel):
        shared = shared_prompt_logits(model, input_ids, attention_mask, n_new, group_ids)
        if shared is not None:
            return action_logits(shared[0], n_actions), shared[1]
    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]
    if isinstance(model, PreTrainedModel):
        logits, values = lm_forward(model, ids, mask, logits_to_keep=n_new).logits, None
    else:
        logits, values = model(ids, mask, logits_to_keep=n_new)  # (E, N, V)
    return action_logits(logits, n_actions), values


def evaluate_completions(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_new: int,
    n_actions: int,
    with_entropy: bool = False,
    sampling: Sampling = PLAIN_SAMPLING,
    group_ids: torch.Tensor | None = None,
) -> CompletionEval:
    """Log-probs (and entropy) of the completion tokens of (E, P+N) episodes from one forward pass, under
    the ``sampling`` distribution the rollout drew them from; see :func:`completion_logits`. Log-softmax and
    entropy are computed in float32."""
    logits, values = completion_logits(model, input_ids, attention_mask, n_new, n_actions, group_ids)
    tokens = input_ids[:, -n_new:]  # (E, N)
    if not sampling.unchanged:
        logits = process_logits(logits, sampling, keep=tokens)
    logprobs = logprobs_from_logits(logits, tokens)  # (E, N)
    entropy = entropy_from_logits(logits.float()) if with_entropy else None
    return CompletionEval(logprobs, entropy, values, logits)


def shared_prompt_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_new: int, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """:func:`completion_logits` (full vocabulary) with each group's prompt computed once; None when no two
    episodes share a prompt.

    The G distinct prompts (G, P) run in one forward that also gives the logits and value before each group's
    first completion token; their KV cache is then indexed out to the E episodes (autograd sums the gradients
    of a group's k completions into its one prompt pass), and the E completions (E, N-1) attend to it in a
    second forward. With P = 64, N = 48 and groups of 4 that is 64 instead of 112 tokens per episode.
    """
    prompt_len = input_ids.shape[1] - n_new
    groups, inverse = torch.unique(group_ids, return_inverse=True)  # (G,), (E,)
    if len(groups) == len(group_ids) or n_new < 2:
        return None
    order = torch.arange(len(group_ids), device=group_ids.device)
    first = torch.full_like(groups, len(group_ids)).scatter_reduce(0, inverse, order, reduce="amin")  # (G,)
    prompt_ids, prompt_mask = input_ids[first, :prompt_len], attention_mask[first, :prompt_len]  # (G, P)
    same = (input_ids[:, :prompt_len] == prompt_ids[inverse]) & (
        attention_mask[:, :prompt_len] == prompt_mask[inverse]
    )
    if not bool(same.all()):
        return None  # a "group" whose prompts differ: nothing to share
    lm = model.module.lm if hasattr(model, "module") else model.lm
    past = DynamicCache(config=lm.config)
    first_logits, first_values = model(prompt_ids, prompt_mask, past_key_values=past, logits_to_keep=1)
    for layer in _kv_layers(past):  # (G, H, P, D) -> (E, H, P, D)
        layer.keys, layer.values = layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse)
    mask = attention_mask[:, :-1]  # (E, P+N-1)
    positions = position_ids_from_mask(mask)[:, prompt_len:]  # (E, N-1)
    logits, values = model(input_ids[:, prompt_len:-1], mask, positions, past_key_values=past)  # (E, N-1, V)
    logits = torch.cat([first_logits.index_select(0, inverse), logits], dim=1)  # (E, N, V)
    if values is not None:
        values = torch.cat([first_values.index_select(0, inverse), values], dim=1)  # (E, N)
    return logits, values


@dataclass
class StepCache:
    """Per-env KV cache for token-by-token rollouts: one batched ``DynamicCache`` for all B envs.

    ``slot_mask`` (B, L) marks which of the L cached slots of each row hold real tokens; ``fed_ids`` and
    ``fed_mask`` (B, P+N) are the observation prefix each row's cache holds (``fed_len`` (B,) tokens of it).
    Rows whose observation no longer extends what they hold (a new episode, or any other caller's obs) are
    re-prefilled, unless what they hold starts with the whole new prefix (the next episode of an RLOO group
    on the same prompt): then the tokens past it are masked out and the prompt is reused
    (``reused_tokens`` counts the tokens that were not prefilled again). This object is the opaque ``state``
    that :meth:`predict` hands back to SB3 callers.
    """

    past: DynamicCache | None = None
    slot_mask: torch.Tensor | None = None
    fed_ids: torch.Tensor | None = None
    fed_mask: torch.Tensor | None = None
    fed_len: torch.Tensor | None = None
    prefill_tokens: int = field(default=0)
    reused_tokens: int = field(default=0)
    outdated: torch.Tensor | None = None
    """(B,) rows whose keys and values were computed with earlier weights (kept across an update): each goes
    on to the end of its episode, but the next episode of its group prefills the prompt again."""

    def mark_outdated(self) -> None:
        """After an update: every row's cache is now from the previous weights."""
        if self.slot_mask is not None:
            self.outdated = self.slot_mask.new_ones(self.slot_mask.shape[0], dtype=torch.bool)


class _KVLayer(Protocol):
    """A filled full-attention cache layer: ``DynamicLayer`` with its (B, H, L, D) tensors set."""

    keys: torch.Tensor
    values: torch.Tensor


def _kv_layers(past: DynamicCache) -> list[_KVLayer]:
    """``past.layers`` typed as filled ``DynamicLayer``s (what :func:`_check_layers` and a prefill ensure)."""
    return cast("list[_KVLayer]", past.layers)


def _check_layers(past: DynamicCache) -> None:
    for layer in past.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"KV-cached stepping supports full-attention DynamicCache layers only, "
                f"got {type(layer).__name__} "
                "(sliding-window or quantized caches). Use a model without sliding-window attention, or the "
                "sequence-level env TextGenSeq-v0, which generates with model.generate."
            )


def _write_rows(cache: StepCache, rows: torch.Tensor, prefill: DynamicCache, mask: torch.Tensor) -> None:
    """Place a (k, Lp) prefill into the last Lp slots of ``rows`` of the batched cache; mask out the rest."""
    assert cache.past is not None and cache.slot_mask is not None
    _check_layers(prefill)
    length, prefill_len = cache.slot_mask.shape[1], mask.shape[1]
    if length < prefill_len:  # grow every row on the left with empty slots
        grow = prefill_len - length
        for layer in _kv_layers(cache.past):
            pad = layer.keys.new_zeros(*layer.keys.shape[:2], grow, layer.keys.shape[-1])
            layer.keys = torch.cat([pad, layer.keys], dim=-2)
            pad = layer.values.new_zeros(*layer.values.shape[:2], grow, layer.values.shape[-1])
            layer.values = torch.cat([pad, layer.values], dim=-2)
        cache.slot_mask = torch.cat(
            [cache.slot_mask.new_zeros(cache.slot_mask.shape[0], grow), cache.slot_mask], 1
        )
        length = prefill_len
    start = length - prefill_len
    for layer, new in zip(_kv_layers(cache.past), _kv_layers(prefill), strict=True):
        layer.keys[rows, :, start:] = new.keys  # (k, H, Lp, D)
        layer.values[rows, :, start:] = new.values
    cache.slot_mask[rows] = 0
    cache.slot_mask[rows, start:] = mask


def _packed(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, L) ids and mask -> (k, Lr) with each row's real tokens, in order, right-aligned (Lr: the most
    real tokens of a row, at least 1). A prefill then computes no slot for the layout's padding (the
    left-padded prompt, the gap of a shorter completion): the positions come from the mask, so the keys and
    values are the same.

    >>> _packed(torch.tensor([[0, 7, 0, 8], [5, 6, 9, 0]]), torch.tensor([[0, 1, 0, 1], [1, 1, 1, 0]]))
    (tensor([[0, 7, 8],
            [5, 6, 9]]), tensor([[0, 1, 1],
            [1, 1, 1]]))
    """
    real = mask != 0
    width = min(max(int(real.sum(-1).max()), 1), real.shape[1])  # one masked slot if no row has a token
    order = torch.sort(real.to(torch.uint8), dim=-1, stable=True).indices[:, real.shape[1] - width :]
    return ids.gather(1, order), mask.gather(1, order)


def _crop_left(cache: StepCache) -> None:
    """Drop leading slots that no row uses (keeps the cache at most P+N slots long)."""
    assert cache.past is not None and cache.slot_mask is not None
    used = cache.slot_mask.any(0)  # (L,)
    first = int(used.long().argmax()) if bool(used.any()) else cache.slot_mask.shape[1]
    if first == 0:
        return
    for layer in _kv_layers(cache.past):
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    cache.slot_mask = cache.slot_mask[:, first:]


@torch.no_grad()
def cached_step(
    model: ActorCritic | FrozenLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    cache: StepCache,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, V) and values (B,) (None for a :class:`FrozenLM`) for the next token of B observations,
    with one incremental forward.

    Each row feeds only the last real token of its observation; everything before it must already be in the
    cache. Rows where it is not (a new episode: only the prompt, or an unrelated observation) are first
    prefilled with everything but that last token, in one (k, Lp) forward. ``cache`` is updated in place.
    """
    batch, total = input_ids.shape
    gen_len = attention_mask[:, prompt_len:].sum(-1)  # (B,)
    cur_len = prompt_len + gen_len  # layout length of each observation
    need = cur_len - 1  # layout slots that must be cached before the last token is fed
    if bool((attention_mask[torch.arange(batch), need] == 0).any()):
        raise ValueError(
            "an observation has no real token to feed: the prompt (first P slots) is empty or the "
            "attention_mask does not follow the textenv layout"
        )
    fresh = cache.past is None or cache.fed_ids is None or cache.fed_ids.shape != input_ids.shape
    if fresh:
        stale = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    else:
        assert cache.fed_ids is not None and cache.fed_mask is not None and cache.fed_len is not None
        in_prefix = torch.arange(total, device=input_ids.device)[None, :] < need[:, None]  # (B, P+N)
        differs = (((cache.fed_ids != input_ids) | (cache.fed_mask != attention_mask)) & in_prefix).any(-1)
        stale = (cache.fed_len != need) | differs
        # A row whose cache holds the needed prefix and more (the next episode of a group, on the same
        # prompt) forgets the tokens past the prefix instead of prefilling the prompt again.
        reuse = stale & ~differs & (cache.fed_len > need)
        if cache.outdated is not None:
            reuse &= ~cache.outdated
        if bool(reuse.any()):
            assert cache.slot_mask is not None
            keep_real = (attention_mask * in_prefix).sum(-1, keepdim=True)  # (B, 1) real tokens to keep
            kept = cache.slot_mask * (cache.slot_mask.cumsum(-1) <= keep_real)  # (B, L)
            cache.slot_mask = torch.where(reuse[:, None], kept, cache.slot_mask)
            cache.reused_tokens += int(keep_real[reuse].sum())
            stale = stale & ~reuse
        held = torch.arange(total, device=input_ids.device)[None, :] < cache.fed_len[:, None]  # (B, P+N)
        moved = (((cache.fed_ids != input_ids) | (cache.fed_mask != attention_mask)) & held).any(-1)
        extend = stale & ~moved & (cache.fed_len < need)  # a conversation's new turn: feed only the rest
        if bool(extend.any()):
            stale = stale & ~extend_cache(model, cache, input_ids, attention_mask, extend, need)
    if bool(stale.any()):
        rows = stale.nonzero().squeeze(-1)
        prefill_len = int(need[rows].max())
        keep = torch.arange(prefill_len, device=input_ids.device)[None, :] < need[rows, None]
        mask = attention_mask[rows, :prefill_len] * keep  # the last real token is fed by the step below
        ids, mask = _packed(input_ids[rows, :prefill_len], mask)  # (k, Lr): the real tokens only
        prefill_len = mask.shape[1]
        prefill = DynamicCache(config=model.lm.config)
        if prefill_len > 0:
            model(ids, mask, past_key_values=prefill, logits_to_keep=1)
            cache.prefill_tokens += int(mask.sum())
        if fresh:
            cache.past, cache.slot_mask, cache.outdated = prefill, mask.clone(), None
            _check_layers(prefill)
        else:
            _write_rows(cache, rows, prefill, mask)
            if cache.outdated is not None:
                cache.outdated[rows] = False
    assert cache.past is not None and cache.slot_mask is not None
    rows = torch.arange(batch, device=input_ids.device)
    last_token = input_ids[rows, need][:, None]  # (B, 1)
    position = cache.slot_mask.sum(-1, keepdim=True)  # (B, 1): real tokens before it
    step_mask = torch.cat([cache.slot_mask, cache.slot_mask.new_ones(batch, 1)], dim=1)  # (B, L+1)
    logits, values = model(last_token, step_mask, position, past_key_values=cache.past, logits_to_keep=1)
    cache.slot_mask = step_mask
    cache.fed_ids, cache.fed_mask, cache.fed_len = input_ids.clone(), attention_mask.clone(), cur_len
    _crop_left(cache)
    return logits[:, -1].float(), None if values is None else values[:, -1]  # (B, V), (B,) or None


@torch.no_grad()
def generate_completions(
    lm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    n_actions: int,
    pad_token_id: int,
    eos_token_id: int | list[int] | None,
    deterministic: bool,
    sampling: Sampling = PLAIN_SAMPLING,
) -> torch.Tensor:
    """Sequence-level actions: (B, N) completions of (B, T) prompts from ``lm.generate``, right-padded.

    ``lm`` is a transformers causal LM (a ``PreTrainedModel`` with ``GenerationMixin``).

    Generation stops at ``eos_token_id`` (one id, or a list: the env's stop tokens, EOS among them).
    Sampling with ``sampling``'s temperature, top-k and top-p, or greedy when ``deterministic``; token ids
    ``>= n_actions`` (vocabulary rows outside the action space) are never generated (``suppress_tokens``,
    generation's form of :func:`action_logits`).
    """
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not deterministic,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        temperature=sampling.temperature,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    vocab = lm.get_output_embeddings().weight.shape[0]
    if vocab > n_actions:
        config.suppress_tokens = list(range(n_actions, vocab))
    out = lm.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    completion = out[:, input_ids.shape[1] :]  # (B, <=N)
    actions = torch.full((input_ids.shape[0], max_new_tokens), pad_token_id, device=input_ids.device)
    actions[:, : completion.shape[1]] = completion
    return actions
