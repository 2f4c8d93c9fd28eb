"""Numeric precision of an agent: which dtype the network trains and acts in, chosen once at set-up.

``precision="auto"`` picks bf16 where the hardware runs it natively (CUDA GPUs with bf16 support; CPUs with
AVX512-BF16 or AMX, detected at run time) and fp32 elsewhere (:func:`infra.ds_config.resolve_precision`).
bf16 is DeepSpeed's own mode
(``"bf16": {"enabled": true}``): the module computes in bf16, while the optimizer keeps fp32 master weights
and fp32 Adam state. Log-softmax, log-probs, values, advantages and losses are always computed in float32 (the
agents cast logits and values with ``.float()`` before any math).

Why DeepSpeed's mode and not ``torch.autocast``: on the 2-core AVX512-BF16 CPU, one forward + backward + AdamW
step of SmolLM2-135M on 8 x 112 tokens ran at 240 tok/s with DeepSpeed bf16, 206 tok/s with autocast over fp32
weights and 146 tok/s in fp32 (same process, one after the other). DeepSpeed's mode is also the one that
carries over to ZeRO and to GPUs unchanged, and the rollout then acts on the very weights it trains (no copy).

``rollout_precision="bf16"`` keeps a separate bf16 copy of the network for rollouts while training in fp32
(the CPU analogue of DeepSpeed-Chat's Hybrid Engine): see :class:`RolloutCopy`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from agents import distributed, lora
from infra.engine import cast_parameters

ROLLOUT_PRECISIONS = ("same", "bf16")


class RolloutCopy:
    """A copy of a network for acting (bf16 by default), re-synced from the trained weights after each update.

    :meth:`sync` casts the trained parameters into the copy's existing tensors (``copy_``, no reallocation).
    The update never uses the copy. When the copy acts in another dtype than the one trained (a bf16 copy of
    fp32 training), PPO's "old" log-probs come from the update path's own scoring pass, so the copy's rounding
    changes which tokens are sampled but not what the update optimises; a copy in the training dtype (ZeRO-3's
    whole weights, merged LoRA) acts with the same weights up to the rounding of the merge, and the log-probs
    it recorded are used as they are (:meth:`agents.on_policy.OnPolicyAlgorithm._score_rollout`).

    With ``merge_lora`` (a network whose ``lm`` is a peft model), the copy holds the plain transformers model
    with the adapters folded into its weights (``W + B A * scale``, recomputed by every :meth:`sync`): one
    matmul per linear in the rollout's forwards instead of three (the base weight's and the two adapter
    factors'), as DeepSpeed-Chat's Hybrid Engine fuses LoRA weights for generation, but into a copy, so that
    the trained weights never go through an in-place merge and unmerge that rounding would make drift in bf16.

    Under ZeRO-3 it is also the whole-weights network the rollouts act with (in the training dtype, or bf16):
    made before DeepSpeed partitions the source, and :meth:`sync` gathers the partitions once per rollout
    (:func:`agents.distributed.gather_into`; every rank must call it).
    """

    def __init__(
        self, network: nn.Module, dtype: torch.dtype = torch.bfloat16, merge_lora: bool = False
    ) -> None:
        self.source = network
        self.dtype = dtype
        self.merge_lora = merge_lora
        if merge_lora:
            source_lm: Any = getattr(network, "lm", None)
            if not lora.is_peft(source_lm):
                raise ValueError(
                    "rollout_merge_lora=True needs a LoRA agent: pass peft_config=LoraConfig(...), or drop "
                    "rollout_merge_lora"
                )
            plain = lora.plain_copy(source_lm)
            copied = copy.deepcopy(network, {id(source_lm): plain})  # the rest of the network, around it
        else:
            copied = copy.deepcopy(network)
        self.network: Any = cast_parameters(copied, dtype).requires_grad_(False)
        if merge_lora:  # what a sync refreshes, matched up once: the frozen weights were copied above
            target = dict(plain.named_parameters())
            self._merged = [(target[f"{name}.weight"], layer) for name, layer in lora.lora_layers(source_lm)]
            pairs = [(target[key], param) for key, param in lora.plain_parameters(source_lm)]
            around = dict(self.network.named_parameters())  # the value head and whatever is not the LM
            pairs += [(around[n], p) for n, p in network.named_parameters() if not n.startswith("lm.")]
            self._trained = [(whole, param) for whole, param in pairs if param.requires_grad]
            self.sync()  # the merged weights

    @torch.no_grad()
    def sync(self) -> None:
        if not self.merge_lora:
            distributed.gather_into(self.network, self.source)
            return
        for whole, layer in self._merged:  # W + B A * scale, gathered layer by layer
            with distributed.gathered(layer):
                whole.copy_(lora.merged_weight(layer))
        distributed.copy_gathered(self._trained)  # the value head (and any other trained weight)

    @property
    def nbytes(self) -> int:
        """Memory the copy holds (its parameters and buffers)."""
        tensors = [*self.network.parameters(), *self.network.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)


def acting_copy(network: nn.Module, precision: str, config: Any) -> RolloutCopy:
    """The copy an agent's rollouts act with when they do not act with the trained network: in bf16 if the
    agent trains in bf16 (``precision``) or ``config.rollout_precision == "bf16"``, with the LoRA adapters
    merged in if ``config.rollout_merge_lora``."""
    bf16 = precision == "bf16" or getattr(config, "rollout_precision", "same") == "bf16"
    merge = bool(getattr(config, "rollout_merge_lora", False))
    return RolloutCopy(network, torch.bfloat16 if bf16 else torch.float32, merge)
