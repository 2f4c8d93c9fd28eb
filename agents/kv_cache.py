"""The per-env KV cache of token-level acting: one incremental forward per token, and its checkpoint form.

:class:`StepCache` holds one batched ``DynamicCache`` for the B env rows plus the bookkeeping of which
observation prefix each row holds. :func:`cached_step` gives the next token's logits (and values) of B
observations in one forward: rows whose observation extends what they hold feed their last token; a
conversation's new turn is fed on top of what is cached (:func:`extend_cache`); an RLOO group's next episode
reuses its cached prompt; any other row is prefilled again (packed to its real tokens, :func:`_packed`).
:func:`agents.saving.cache_arrays` / :func:`agents.saving.restore_cache` turn a cache into the arrays of a
checkpoint's ``rollout_state.npz`` and back.

The models stepped here are :class:`agents.policy.ActorCritic`, :class:`agents.policy.FrozenLM` or
:class:`agents.lora.AdapterDisabledLM`: anything with their ``forward`` signature and an ``lm``
(:class:`StepModel`).

With a :class:`agents.decode.Decoder` (an agent's ``decode="compiled"``) the same bookkeeping runs on
preallocated per-row slots (:class:`agents.decode.StaticRows`) and the one-token step is compiled: a row's
prefill, reuse and new turn write its own slots from slot 0 on (no cropping, no growing), and
``StepCache.write_slot`` says where each row writes next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from agents.decode import Decoder, write_slots


class StepModel(Protocol):
    """What :func:`cached_step` steps: ``model(input_ids, attention_mask, position_ids, past_key_values=...,
    logits_to_keep=...)`` (the signature of :meth:`agents.policy.StepNetwork.forward`) returns ``(logits,
    values or None)``; the causal LM is ``model.lm`` (its config sizes a cache)."""

    lm: Any

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]: ...


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

    past: Cache | None = None
    """A ``DynamicCache`` (eager), or the decoder's static cache (compiled decode)."""
    slot_mask: torch.Tensor | None = None
    fed_ids: torch.Tensor | None = None
    fed_mask: torch.Tensor | None = None
    fed_len: torch.Tensor | None = None
    prefill_tokens: int = field(default=0)
    reused_tokens: int = field(default=0)
    outdated: torch.Tensor | None = None
    """(B,) rows whose keys and values were computed with earlier weights (kept across an update): each goes
    on to the end of its episode, but the next episode of its group prefills the prompt again."""

    write_slot: torch.Tensor | None = None
    """(B,) compiled decode: the slot each row writes its next token at (None: eager layout)."""

    def mark_outdated(self) -> None:
        """After an update: every row's cache is now from the previous weights."""
        if self.slot_mask is not None:
            self.outdated = self.slot_mask.new_ones(self.slot_mask.shape[0], dtype=torch.bool)


class KVLayer(Protocol):
    """A filled full-attention cache layer: ``DynamicLayer`` with its (B, H, L, D) tensors set."""

    keys: torch.Tensor
    values: torch.Tensor


def kv_layers(past: Cache) -> list[KVLayer]:
    """``past.layers`` typed as a list of filled ``DynamicLayer`` objects (what :func:`_check_layers` and a
    prefill ensure)."""
    return cast("list[KVLayer]", past.layers)


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
        for layer in kv_layers(cache.past):
            pad = layer.keys.new_zeros(*layer.keys.shape[:2], grow, layer.keys.shape[-1])
            layer.keys = torch.cat([pad, layer.keys], dim=-2)
            pad = layer.values.new_zeros(*layer.values.shape[:2], grow, layer.values.shape[-1])
            layer.values = torch.cat([pad, layer.values], dim=-2)
        cache.slot_mask = torch.cat(
            [cache.slot_mask.new_zeros(cache.slot_mask.shape[0], grow), cache.slot_mask], 1
        )
        length = prefill_len
    start = length - prefill_len
    for layer, new in zip(kv_layers(cache.past), kv_layers(prefill), strict=True):
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
    for layer in kv_layers(cache.past):
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    cache.slot_mask = cache.slot_mask[:, first:]


@torch.no_grad()
def cached_step(
    model: StepModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    cache: StepCache,
    decoder: Decoder | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, V) and values (B,) (None for a :class:`~agents.policy.FrozenLM`) for the next token of B
    observations, with one incremental forward.

    Each row feeds only the last real token of its observation; everything before it must already be in the
    cache. Rows where it is not (a new episode: only the prompt, or an unrelated observation) are first
    prefilled with everything but that last token, in one (k, Lp) forward. ``cache`` is updated in place.
    With an active ``decoder`` the cache lives in its static rows and the step is compiled (see the module
    docstring); a decoder that cannot compile gives its notice and the step runs eagerly.
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
    static = decoder is not None and decoder.active
    fresh = cache.past is None or cache.fed_ids is None or cache.fed_ids.shape != input_ids.shape
    if static and not fresh:
        assert decoder is not None
        _adopt(cache, decoder, model)
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
            if cache.write_slot is not None:  # static rows: the next token goes after the last kept slot
                slots = torch.arange(1, kept.shape[1] + 1, device=kept.device)
                cache.write_slot = torch.where(reuse, (kept * slots).amax(-1), cache.write_slot)
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
        static = static and (prefill_len > 0 or not fresh)  # nothing to size the static rows: adopt later
        if static:
            assert decoder is not None
            _write_static_rows(cache, decoder, rows, prefill, mask, fresh=fresh, total=total)
        elif fresh:
            cache.past, cache.slot_mask, cache.outdated = prefill, mask.clone(), None
            _check_layers(prefill)
        else:
            _write_rows(cache, rows, prefill, mask)
        if not fresh and cache.outdated is not None:
            cache.outdated[rows] = False
    assert cache.past is not None and cache.slot_mask is not None
    rows = torch.arange(batch, device=input_ids.device)
    last_token = input_ids[rows, need][:, None]  # (B, 1)
    position = cache.slot_mask.sum(-1, keepdim=True)  # (B, 1): real tokens before it
    out = _static_step(model, cache, decoder, last_token, position) if static else None
    if out is None:
        if cache.write_slot is not None:  # the decoder gave up: its rows become an eager cache
            _to_dynamic(cache)
        step_mask = torch.cat([cache.slot_mask, cache.slot_mask.new_ones(batch, 1)], dim=1)  # (B, L+1)
        logits, values = model(last_token, step_mask, position, past_key_values=cache.past, logits_to_keep=1)
        cache.slot_mask = step_mask
        out = logits[:, -1].float(), None if values is None else values[:, -1]  # (B, V), (B,) or None
    cache.fed_ids, cache.fed_mask, cache.fed_len = input_ids.clone(), attention_mask.clone(), cur_len
    if cache.write_slot is None:
        _crop_left(cache)
    return out


def _static_step(
    model: StepModel, cache: StepCache, decoder: Any, token: torch.Tensor, position: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The compiled one-token step on the decoder's static rows; None when the decoder gave up."""
    assert cache.slot_mask is not None and cache.write_slot is not None and decoder.rows is not None
    slot = cache.write_slot  # (B,)
    length = cache.slot_mask.shape[1]
    if bool((slot >= length).any()):
        raise RuntimeError(f"a row of the compiled decode cache is full ({length} slots); use decode='eager'")
    step_mask = cache.slot_mask.clone()
    step_mask[torch.arange(len(slot), device=slot.device), slot] = 1
    bias = torch.zeros(step_mask.shape, dtype=decoder.rows.dtype, device=slot.device)
    bias = bias.masked_fill(step_mask == 0, torch.finfo(bias.dtype).min)[:, None, None, :]  # (B, 1, 1, L)
    decoder.rows.write_slot.copy_(slot)
    out = decoder.step(model, token, bias, position)
    if out is not None:
        cache.slot_mask, cache.write_slot = step_mask, slot + 1
    return out


def _write_static_rows(
    cache: StepCache,
    decoder: Decoder,
    rows: torch.Tensor,
    prefill: DynamicCache,
    mask: torch.Tensor,
    fresh: bool,
    total: int,
) -> None:
    """Static rows: each of ``rows``' (k, Lr) right-aligned prefill goes to its slots 0.. (its real tokens
    first, in order); a ``fresh`` cache takes the decoder's static rows of (B, P+N) slots."""
    _check_layers(prefill)
    filled = kv_layers(prefill) if prefill.layers else []
    if fresh:
        layers, heads, size, dtype = cache_config(filled)
        batch = len(rows)
        fresh_rows = decoder.storage(layers, (batch, heads, total, size), dtype, rows.device)
        cache.past, cache.outdated = fresh_rows.cache, None
        cache.slot_mask = mask.new_zeros(batch, total)
        cache.write_slot = torch.zeros(batch, dtype=torch.long, device=rows.device)
    storage = decoder.rows
    assert storage is not None and cache.slot_mask is not None and cache.write_slot is not None
    real = mask.sum(-1)  # (k,)
    width = mask.shape[1]
    if filled and width > 0:
        lead = width - real  # (k,) masked slots before each row's real tokens
        order = (torch.arange(width, device=rows.device)[None, :] + lead[:, None]).clamp(
            max=width - 1
        )  # (k, Lr)

        def first(tensor: torch.Tensor) -> torch.Tensor:  # (k, H, Lr, D) with the real slots first
            return tensor.gather(2, order[:, None, :, None].expand_as(tensor))

        new = [(first(layer.keys), first(layer.values)) for layer in filled]
        write_slots(storage.layers, rows, torch.zeros_like(real), real, new)
    cache.slot_mask[rows] = 0
    cache.slot_mask[rows, :width] = (torch.arange(width, device=rows.device)[None, :] < real[:, None]).to(
        cache.slot_mask.dtype
    )
    cache.write_slot[rows] = real


def cache_config(filled: list[KVLayer]) -> tuple[int, int, int, torch.dtype]:
    """(layers, KV heads, head size, dtype) of a filled prefill cache's layers."""
    if not filled:
        raise RuntimeError("the compiled decode cache is sized by a first prefill, which computed nothing")
    keys = filled[0].keys
    return len(filled), keys.shape[1], keys.shape[3], keys.dtype


def _adopt(cache: StepCache, decoder: Decoder, model: StepModel) -> None:
    """Move an eager cache (restored from a checkpoint, or from before compiled decoding) into the decoder's
    static rows: a saved static layout as it is, any other with each row's real slots first."""
    if decoder.rows is not None and cache.past is decoder.rows.cache:
        return
    assert cache.past is not None and cache.slot_mask is not None and cache.fed_ids is not None
    layers = kv_layers(cache.past)
    batch, total = cache.fed_ids.shape
    keys = layers[0].keys
    storage = decoder.storage(
        len(layers), (batch, keys.shape[1], total, keys.shape[3]), keys.dtype, keys.device
    )
    order = None
    if cache.write_slot is not None and keys.shape[2] == total:  # saved from static rows: as it is
        slot_mask, write_slot = cache.slot_mask, cache.write_slot
    else:
        real = cache.slot_mask != 0
        order = torch.sort((~real).to(torch.uint8), dim=-1, stable=True).indices[:, :total]  # (B, <=P+N)
        write_slot = real.sum(-1)
        width = order.shape[1]
        slot_mask = (torch.arange(total, device=keys.device)[None, :] < write_slot[:, None]).to(
            cache.slot_mask.dtype
        )
    for target, layer in zip(storage.layers, layers, strict=True):
        for mine, theirs in ((target.keys, layer.keys), (target.values, layer.values)):
            if order is None:
                mine.copy_(theirs)
            else:
                mine.zero_()
                mine[:, :, :width] = theirs.gather(
                    2, order[:, None, :, None].expand(-1, mine.shape[1], -1, mine.shape[3])
                )
    cache.past, cache.slot_mask, cache.write_slot = storage.cache, slot_mask.clone(), write_slot.clone()


def _to_dynamic(cache: StepCache) -> None:
    """The static rows as an eager cache (same slots and mask): the fallback when compiling fails."""
    assert cache.past is not None
    past = DynamicCache()
    for index, layer in enumerate(kv_layers(cache.past)):
        past.update(layer.keys.clone(), layer.values.clone(), index)
    cache.past, cache.write_slot = past, None


def extend_cache(
    model: StepModel,
    cache: StepCache,
    ids: torch.Tensor,
    mask: torch.Tensor,
    extend: torch.Tensor,
    need: torch.Tensor,
) -> torch.Tensor:
    """Multi-turn acting (used by :func:`cached_step`): feed the slots of (B, P+N) ``ids`` from
    ``cache.fed_len`` up to ``need`` (B,) into the cache of the ``extend`` (B,) rows, so that a conversation's
    earlier turns are never run again. Only those k rows run, in one (k, m) forward over their part of the
    cache; every row's cache then grows by m slots (masked outside the k rows). Counts the fed tokens in
    ``cache.prefill_tokens``; returns ``extend``."""
    assert cache.past is not None and cache.slot_mask is not None and cache.fed_len is not None
    rows = extend.nonzero().squeeze(-1)  # (k,)
    start = cache.fed_len[rows]  # (k,) first slot not yet cached
    count = need[rows] - start  # (k,) slots to feed
    offsets = torch.arange(int(count.max()), device=ids.device)[None, :]  # (1, m)
    index = (start[:, None] + offsets).clamp(max=ids.shape[1] - 1)  # (k, m)
    new_mask = (mask[rows].gather(1, index) * (offsets < count[:, None])).to(cache.slot_mask.dtype)  # (k, m)
    held = cache.slot_mask[rows]  # (k, L)
    positions = held.sum(-1, keepdim=True) + (new_mask.cumsum(-1) - 1).clamp(min=0)  # (k, m)
    if cache.write_slot is not None:
        _extend_static(model, cache, rows, ids[rows].gather(1, index), new_mask, positions, count)
        return extend
    layers = kv_layers(cache.past)  # filled full-attention layers with (B, H, L, D) keys and values
    full = [(layer.keys, layer.values) for layer in layers]
    for layer in layers:  # the k rows' cache alone: the forward appends their m new slots
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    step_mask = torch.cat([held, new_mask], 1)  # (k, L+m)
    model(ids[rows].gather(1, index), step_mask, positions, past_key_values=cache.past, logits_to_keep=1)
    width = offsets.shape[1]

    def grown(tensor: torch.Tensor, new: torch.Tensor) -> torch.Tensor:  # (B, H, L, D), (k, H, m, D)
        out = torch.cat([tensor, tensor.new_zeros(*tensor.shape[:2], width, tensor.shape[-1])], dim=2)
        out[rows, :, -width:] = new
        return out  # (B, H, L+m, D)

    for layer, (keys, values) in zip(layers, full, strict=True):  # back to B rows, each m slots longer
        new_keys, new_values = layer.keys[:, :, -width:], layer.values[:, :, -width:]  # (k, H, m, D)
        layer.keys, layer.values = grown(keys, new_keys), grown(values, new_values)
    cache.slot_mask = torch.cat([cache.slot_mask, cache.slot_mask.new_zeros(len(extend), width)], dim=1)
    cache.slot_mask[rows, -width:] = new_mask
    cache.prefill_tokens += int(new_mask.sum())
    return extend


def _extend_static(
    model: StepModel,
    cache: StepCache,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    new_mask: torch.Tensor,
    positions: torch.Tensor,
    count: torch.Tensor,
) -> None:
    """:func:`extend_cache` on static rows: the k rows' (k, m) new slots run over a copy of their cache, and
    each row's first ``count`` (k,) of them go to its slots from its ``write_slot`` on."""
    assert cache.past is not None and cache.slot_mask is not None and cache.write_slot is not None
    layers = kv_layers(cache.past)
    rows_cache = DynamicCache()
    for index, layer in enumerate(layers):
        rows_cache.update(layer.keys[rows], layer.values[rows], index)  # (k, H, L, D)
    step_mask = torch.cat([cache.slot_mask[rows], new_mask], 1)  # (k, L+m)
    model(tokens, step_mask, positions, past_key_values=rows_cache, logits_to_keep=1)
    width, start = tokens.shape[1], cache.write_slot[rows]
    if bool((start + count > cache.slot_mask.shape[1]).any()):
        raise RuntimeError("a row of the compiled decode cache is full; use decode='eager'")
    new = [(layer.keys[:, :, -width:], layer.values[:, :, -width:]) for layer in kv_layers(rows_cache)]
    row_index, slot_index = write_slots(layers, rows, start, count, new)
    written = torch.arange(width, device=rows.device)[None, :] < count[:, None]  # (k, m)
    cache.slot_mask[row_index, slot_index] = new_mask[written]
    cache.write_slot[rows] = start + count
    cache.prefill_tokens += int(new_mask.sum())
