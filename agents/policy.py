"""Actor-critic around a transformers causal LM, frozen LM copies, completion scoring and generation.

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
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import CompileConfig, DynamicCache, GenerationConfig, PreTrainedModel
from transformers.cache_utils import Cache

from agents.kv_cache import kv_layers
from agents.losses import entropy_from_logits, logprobs_from_logits
from agents.sampling import PLAIN_SAMPLING, Sampling, process_logits  # re-exported: the public names
from textenv.models import cache_argument


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of every slot: the number of real tokens before it (left padding gets position 0).

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]]))
    tensor([[0, 0, 0, 1, 2]])
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class StepNetwork(nn.Module):
    """What :class:`ActorCritic` and :class:`FrozenLM` share: a causal LM ``self.lm`` that stays in
    ``eval()`` mode, and one ``forward`` (the signature :func:`agents.kv_cache.cached_step` and
    :func:`completion_logits` call) that returns ``(logits, values or None)``."""

    lm: Any

    def train(self, mode: bool = True) -> StepNetwork:  # dropout stays off; see the module docstring
        return super().train(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, K, V) and values (B, K) or None of the last ``logits_to_keep`` positions (all if 0)."""
        out = lm_forward(
            self.lm, input_ids, attention_mask, position_ids, past_key_values, logits_to_keep, self.has_values
        )
        if not self.has_values:
            return out.logits, None
        hidden = out.hidden_states[-1]  # (B, T, H)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, K, H)
        return out.logits, self.values(hidden)

    has_values = False
    """Whether :meth:`values` reads the last hidden states (a value head)."""

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, K, H) last hidden states -> (B, K) float32 values."""
        raise NotImplementedError


class ActorCritic(StepNetwork):
    """A causal LM (the actor) with a scalar value head on its last hidden state."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm.eval()
        hidden_size = lm.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden_size, 1, dtype=lm.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    has_values = True

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden).squeeze(-1).float()  # (B, K)


class FrozenLM(StepNetwork):
    """A copy of a causal LM that takes no gradient step: the KL penalty's reference, DQN's target network.

    Its ``forward`` returns ``(logits, None)`` (no value head), so :func:`completion_logits` and
    :func:`agents.kv_cache.cached_step` take either.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = copy.deepcopy(lm).eval().requires_grad_(False)


def lm_forward(
    lm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    past_key_values: Cache | None = None,
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
    for layer in kv_layers(past):  # (G, H, P, D) -> (E, H, P, D)
        layer.keys, layer.values = layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse)
    mask = attention_mask[:, :-1]  # (E, P+N-1)
    positions = position_ids_from_mask(mask)[:, prompt_len:]  # (E, N-1)
    logits, values = model(input_ids[:, prompt_len:-1], mask, positions, past_key_values=past)  # (E, N-1, V)
    logits = torch.cat([first_logits.index_select(0, inverse), logits], dim=1)  # (E, N, V)
    if values is not None:
        values = torch.cat([first_values.index_select(0, inverse), values], dim=1)  # (E, N)
    return logits, values


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
    compiled: bool = False,
) -> torch.Tensor:
    """Sequence-level actions: (B, N) completions of (B, T) prompts from ``lm.generate``, right-padded.

    ``lm`` is a transformers causal LM (a ``PreTrainedModel`` with ``GenerationMixin``).

    Generation stops at ``eos_token_id`` (one id, or a list: the env's stop tokens, EOS among them).
    Sampling with ``sampling``'s temperature, top-k and top-p, or greedy when ``deterministic``; token ids
    ``>= n_actions`` (vocabulary rows outside the action space) are never generated (``suppress_tokens``,
    generation's form of :func:`action_logits`). ``compiled``: transformers' static cache (P + N slots) and
    its compiled forward (CUDA graphs on a GPU, inductor elsewhere), compiled at the first call.
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
    if compiled:
        config.cache_implementation = "static"
        mode = "reduce-overhead" if input_ids.device.type == "cuda" else "default"
        config.compile_config = CompileConfig(dynamic=False, mode=mode)
        config.compile_config._compile_all_devices = True  # transformers compiles on GPUs only by default
    out = lm.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    completion = out[:, input_ids.shape[1] :]  # (B, <=N)
    actions = torch.full((input_ids.shape[0], max_new_tokens), pad_token_id, device=input_ids.device)
    actions[:, : completion.shape[1]] = completion
    return actions
