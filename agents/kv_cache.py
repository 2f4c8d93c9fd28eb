"""The per-env KV cache of token-level acting: one incremental forward per token, and its checkpoint form.

:class:`StepCache` holds one batched ``DynamicCache`` for the B env rows plus the bookkeeping of which
observation prefix each row holds. :func:`cached_step` gives the next token's logits (and values) of B
observations in one forward: rows whose observation extends what they hold feed their last token; a
conversation's new turn is fed on top of what is cached (:func:`extend_cache`); an RLOO group's next episode
reuses its cached prompt; any other row is prefilled again (packed to its real tokens, :func:`_packed`).
:func:`cache_arrays` / :func:`restore_cache` turn a cache into the arrays of a checkpoint's
``rollout_state.npz`` and back.

The models stepped here are :class:`agents.policy.ActorCritic`, :class:`agents.policy.FrozenLM` or
:class:`agents.lora.AdapterDisabledLM`: anything with their ``forward`` signature and an ``lm``
(:class:`StepModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class StepModel(Protocol):
    """What :func:`cached_step` steps: ``model(ids, mask, positions, past_key_values=..., logits_to_keep=..)``
    returns ``(logits, values or None)``; the causal LM is ``model.lm`` (its config sizes a cache)."""

    lm: Any

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


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


class KVLayer(Protocol):
    """A filled full-attention cache layer: ``DynamicLayer`` with its (B, H, L, D) tensors set."""

    keys: torch.Tensor
    values: torch.Tensor


def kv_layers(past: DynamicCache) -> list[KVLayer]:
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, V) and values (B,) (None for a :class:`~agents.policy.FrozenLM`) for the next token of B
    observations, with one incremental forward.

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


KV_BOOKKEEPING = ("slot_mask", "fed_ids", "fed_mask", "fed_len")
"""The :class:`StepCache` fields a checkpoint keeps beside the keys and values."""


def cache_arrays(cache: StepCache) -> dict[str, np.ndarray]:
    """A token-level agent's KV cache (:class:`StepCache`) as arrays for a checkpoint's
    ``rollout_state.npz``: the bookkeeping and every layer's keys and values (in float32, which holds bf16
    exactly). Kept across updates (``keep_kv_cache``), the cache was computed with earlier weights, so a
    resumed run needs it to go on exactly as the saved one would. ``{}`` when it holds nothing."""
    if cache.past is None or cache.slot_mask is None or cache.fed_ids is None:
        return {}
    arrays = {f"kv_{name}": getattr(cache, name).cpu().numpy() for name in KV_BOOKKEEPING}
    if cache.outdated is not None:
        arrays["kv_outdated"] = cache.outdated.cpu().numpy()
    for index, layer in enumerate(kv_layers(cache.past)):
        arrays[f"kv_keys_{index}"] = layer.keys.float().cpu().numpy()
        arrays[f"kv_values_{index}"] = layer.values.float().cpu().numpy()
    return arrays


def restore_cache(
    arrays: dict[str, np.ndarray], cache: StepCache, config: Any, dtype: torch.dtype, device: torch.device
) -> None:
    """Fill an empty ``cache`` from :func:`cache_arrays`' arrays (nothing when they hold no cache); a cache
    that does not fit the model (``config``) raises ValueError saying what is off."""
    if "kv_slot_mask" not in arrays:
        return
    slot_mask = torch.as_tensor(arrays["kv_slot_mask"])
    layers = config.num_hidden_layers
    if sum(key.startswith("kv_keys_") for key in arrays) != layers or slot_mask.dim() != 2:
        raise ValueError(f"the saved KV cache does not fit the model ({layers} layers); load it with its own")
    past = DynamicCache(config=config)
    for index in range(layers):
        keys, values = (torch.as_tensor(arrays[f"kv_{kind}_{index}"]) for kind in ("keys", "values"))
        if keys.dim() != 4 or keys.shape != values.shape or keys.shape[::2] != slot_mask.shape:
            raise ValueError(
                f"layer {index} of the saved KV cache has shape {tuple(keys.shape)}, which does not match "
                f"its slot mask {tuple(slot_mask.shape)}"
            )
        past.update(keys.to(device, dtype), values.to(device, dtype), index)
    cache.past = past
    for name in KV_BOOKKEEPING:
        setattr(cache, name, torch.as_tensor(arrays[f"kv_{name}"]).to(device))
    if "kv_outdated" in arrays:
        cache.outdated = torch.as_tensor(arrays["kv_outdated"]).to(device, torch.bool)


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
