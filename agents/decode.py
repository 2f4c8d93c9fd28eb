"""The compiled decode step of token-level rollouts: a preallocated KV cache, one compiled forward per token.

An eager decode step of a small model is bound by its op dispatches, not by its matrix products (SmolLM2-135M
at batch 16 on the 2-core CPU: 69 ms per step, of which its linear layers take about 26 ms; on a GPU it is
kernel launches). transformers' own answer is a static cache and a compiled forward (``generate`` with
``cache_implementation="static"``); this module gives the token-level rollouts the same, with the row
bookkeeping of :func:`agents.kv_cache.cached_step` kept:

- :class:`StaticRows` holds every layer's keys and values in (B, H, L, D) tensors allocated once (L = P + N,
  the observation's slots), written in place. Each row fills its own slots from slot 0 on and writes its next
  token at its own slot (``write_slot``), so rows that restart at different times, a group's next episode
  that keeps its prompt and a conversation's new turn all stay within the row's L slots; what a row no
  longer holds is masked out (a (B, 1, 1, L) additive mask), never moved.
- :class:`Decoder` compiles one step function (``torch.compile``: inductor on a CPU, CUDA graphs through
  ``mode="reduce-overhead"`` on a GPU) the first time it steps and reuses it for every token of the run:
  every input has a fixed shape and the cache tensors a fixed address, so neither a restarted row nor a new
  rollout compiles again. torch's own compile caches (inductor's FX-graph cache, on by default, under
  ``TORCHINDUCTOR_CACHE_DIR``) make a later run's compile faster. Where torch cannot compile (no dynamo for
  this Python, no C++ compiler for inductor, any error while compiling), it says so once
  (``RuntimeWarning``) and the agent goes on with the eager path.

The prefill of a restarted row and a conversation's new turn still run eagerly (once per episode or turn);
only the per-token step is compiled. The log-probs recorded are those of the compiled step, which computes
the same function as the eager one (in fp32 the sampled tokens and log-probs agree to about 1e-6; the
ratio-1 tests hold with the same tolerance).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from transformers.cache_utils import Cache, StaticLayer

DECODE_MODES = ("eager", "compiled", "auto")
Result = TypeVar("Result")


def resolve_decode(mode: str, device: torch.device) -> str:
    """``"eager"`` or ``"compiled"`` for an agent's ``decode`` setting on ``device``: ``"auto"`` compiles on
    a GPU (where an eager decode step is bound by kernel launches) and stays eager on a CPU.

    >>> resolve_decode("auto", torch.device("cpu")), resolve_decode("compiled", torch.device("cpu"))
    ('eager', 'compiled')
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"decode={mode!r} is not known; use one of {DECODE_MODES}")
    if mode == "auto":
        return "compiled" if device.type == "cuda" else "eager"
    return mode


class RowSlotLayer(StaticLayer):
    """A ``StaticLayer`` whose one new token per row is written at that row's own slot (``write_slot`` (B,),
    shared by all layers and set before each step) instead of one position for the whole batch."""

    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_slot: torch.Tensor) -> None:
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values, self.write_slot = keys, values, write_slot
        self.rows = torch.arange(keys.shape[0], device=keys.device)
        self.device, self.is_initialized = keys.device, True
        for tensor in (self.keys, self.values, self.write_slot, self.rows):
            torch._dynamo.mark_static_address(tensor)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[self.rows, :, self.write_slot] = key_states[:, :, -1]  # (B, H, D) into slot write_slot[b]
        self.values[self.rows, :, self.write_slot] = value_states[:, :, -1]
        return self.keys, self.values  # (B, H, L, D)


class StaticRows:
    """Keys and values of B rows of L slots for every layer, allocated once and written in place."""

    def __init__(
        self, layers: int, shape: tuple[int, int, int, int], dtype: torch.dtype, device: Any
    ) -> None:
        self.write_slot = torch.zeros(shape[0], dtype=torch.long, device=device)
        self.layers = [
            RowSlotLayer(
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
                self.write_slot,
            )
            for _ in range(layers)
        ]
        self.cache = Cache(layers=list(self.layers))
        self.shape, self.dtype = shape, dtype


def write_slots(
    layers: list[Any],
    rows: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
    new: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write each layer's (k, H, m, D) new keys and values of ``rows`` (k,) into the (B, H, L, D) ``layers``
    at slots ``start + j`` for ``j < count`` (both (k,)); returns the (row, slot) pairs written.

    >>> layer = type("Layer", (), {"keys": torch.zeros(2, 1, 4, 1), "values": torch.zeros(2, 1, 4, 1)})()
    >>> new = torch.tensor([[[[1.0], [2.0]]]])  # (1, 1, 2, 1)
    >>> _ = write_slots([layer], torch.tensor([1]), torch.tensor([2]), torch.tensor([2]), [(new, new)])
    >>> layer.keys[1, 0, :, 0].tolist()
    [0.0, 0.0, 1.0, 2.0]
    """
    width = new[0][0].shape[2]
    offsets = torch.arange(width, device=start.device)[None, :]  # (1, m)
    valid = offsets < count[:, None]  # (k, m)
    row_index = rows[:, None].expand(-1, width)[valid]  # (n,)
    slot_index = (start[:, None] + offsets)[valid]  # (n,)
    for layer, (keys, values) in zip(layers, new, strict=True):
        layer.keys[row_index, :, slot_index] = keys.transpose(1, 2)[valid]  # (n, H, D)
        layer.values[row_index, :, slot_index] = values.transpose(1, 2)[valid]
    return row_index, slot_index


def _decode_step(
    model: Any, token: torch.Tensor, bias: torch.Tensor, position: torch.Tensor, cache: Cache
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row: logits (B, V) and values (B,) (or None) in float32."""
    logits, values = model(token, bias, position, past_key_values=cache, logits_to_keep=1)
    return logits[:, -1].float(), None if values is None else values[:, -1].float()


class Decoder:
    """An agent's compiled decode step and the :class:`StaticRows` it writes; see the module docstring.

    ``compile_seconds`` is the time of the first step (tracing and compiling included), ``None`` before it;
    ``active`` turns False for good after the fallback notice."""

    def __init__(self) -> None:
        self.rows: StaticRows | None = None
        self.compile_seconds: float | None = None
        self.active = True
        self._step: Any = None

    def storage(
        self, layers: int, shape: tuple[int, int, int, int], dtype: torch.dtype, device: Any
    ) -> StaticRows:
        """The static rows of this shape: the ones already allocated if they fit (a fresh cache of the same
        rollout reuses them, so the compiled step sees the same tensors), else new ones."""
        rows = self.rows
        if rows is None or rows.shape != shape or rows.dtype != dtype or len(rows.layers) != layers:
            self.rows = rows = StaticRows(layers, shape, dtype, device)
        return rows

    def give_up(self, reason: str) -> None:
        """Stop compiling, with a one-line notice (once per agent)."""
        if self.active:
            warnings.warn(
                f"compiled decoding is unavailable ({reason}); the rollouts use the eager decode step",
                RuntimeWarning,
                stacklevel=3,
            )
        self.active = False

    def step(
        self, model: Any, token: torch.Tensor, bias: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The compiled step on ``self.rows`` (its ``write_slot`` set by the caller); None (and the notice)
        when it cannot compile."""
        assert self.rows is not None
        if self._step is None:
            if not torch._dynamo.is_dynamo_supported():
                self.give_up("torch.compile does not support this Python or platform")
                return None
            mode = "reduce-overhead" if token.device.type == "cuda" else None  # CUDA graphs on a GPU
            self._step = torch.compile(_decode_step, dynamic=False, mode=mode)
        first = self.compile_seconds is None
        start = time.perf_counter()
        try:
            logits, values = self._step(model, token, bias, position, self.rows.cache)
        except Exception as error:  # noqa: BLE001  (whatever stops the compiler: the eager path goes on)
            self.give_up(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            return None
        if first:
            self.compile_seconds = time.perf_counter() - start
        if token.device.type == "cuda":  # CUDA graphs reuse their output memory at the next replay
            logits, values = logits.clone(), None if values is None else values.clone()
        return logits, values

    def attempt(self, run: Callable[[bool], Result]) -> Result:
        """``run(True)`` (compiled: sequence-level ``generate`` with its static cache) while this decoder is
        active, else, or when that fails (with the notice), ``run(False)``."""
        if self.active and not torch._dynamo.is_dynamo_supported():
            self.give_up("torch.compile does not support this Python or platform")
        if self.active:
            start, rng = time.perf_counter(), torch.random.get_rng_state()
            cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            try:
                result = run(True)
            except Exception as error:  # noqa: BLE001  (whatever stops the compiler: the eager path goes on)
                torch.random.set_rng_state(rng)  # the eager run draws what it would have drawn
                if cuda_rng is not None:
                    torch.cuda.set_rng_state_all(cuda_rng)
                self.give_up(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            else:
                if self.compile_seconds is None:
                    self.compile_seconds = time.perf_counter() - start
                return result
        return run(False)
