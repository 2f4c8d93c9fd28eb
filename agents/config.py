"""Agent settings: :class:`AlgorithmConfig`, what every agent's config holds (the DeepSpeed engine reads it),
and :class:`PolicyGradientConfig`, the rollout and KL settings that PPO and REINFORCE share.

``agents.dqn_config.DQNConfig`` extends :class:`AlgorithmConfig` directly: DQN has no rollout size and no KL
penalty.

>>> PolicyGradientConfig(minibatch_size=8).episodes_per_rollout
64
>>> PolicyGradientConfig(minibatch_size=8).micro_batch_size
8
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from agents.decode import DECODE_MODES
from agents.precision import ROLLOUT_PRECISIONS
from agents.turn_credit import TURN_BASELINES
from infra.engine import PRECISIONS
from textenv.envs.arguments import MAX_SEQUENCE_TOKENS


def check_number(name: str, value: object, example: str) -> None:
    """Raise a TypeError naming ``name`` when ``value`` is not a real number (bools and strings included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number, got {value!r} ({type(value).__name__}); e.g. {name}={example}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}; e.g. {name}={example}")


@dataclass
class AlgorithmConfig:
    """Settings every agent has: the optimizer step, gradient clipping and the completion length."""

    learning_rate: float = 1e-5
    """AdamW step size (DeepSpeed's ``optimizer.params.lr`` wins if the DeepSpeed config sets it)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (DeepSpeed ``gradient_clipping``); None disables it."""
    max_new_tokens: int | None = None
    """N, the completion slots of the observation; None reads the env attribute ``max_new_tokens``."""
    precision: str = "auto"
    """``"auto"`` (bf16 where the hardware runs it natively, else fp32), ``"bf16"`` or ``"fp32"``; the
    optimizer keeps fp32 master weights either way (see :mod:`agents.precision`)."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer in the backward pass instead of storing its activations (less memory,
    about a third more compute per update; see :func:`agents.distributed.enable_activation_checkpointing`)."""

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward: DeepSpeed's ``train_micro_batch_size_per_gpu``."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        for setting in dataclasses.fields(self):  # numbers of the declared type: ints for counts and sizes
            value, kind = getattr(self, setting.name), str(setting.type)
            if value is None and kind in ("int | None", "float | None"):
                continue
            if kind in ("float", "float | None"):
                check_number(setting.name, value, str(setting.default))
            elif kind in ("int", "int | None") and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer))
            ):
                raise TypeError(
                    f"{setting.name} must be a whole number (int), got {value!r} ({type(value).__name__}); "
                    f"e.g. {setting.name}={setting.default}"
                )
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_SEQUENCE_TOKENS:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} must be in 1..{MAX_SEQUENCE_TOKENS}, or None (the "
                "env's)"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise TypeError(
                f"gradient_checkpointing must be True or False, got {self.gradient_checkpointing!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not known; use one of {PRECISIONS}")
        check_number("learning_rate", self.learning_rate, "1e-5")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}; try 1e-5")
        if self.max_grad_norm is not None:
            check_number("max_grad_norm", self.max_grad_norm, "1.0")
            if self.max_grad_norm < 0:
                raise ValueError(
                    f"max_grad_norm must be >= 0 or None (no clipping), got {self.max_grad_norm}"
                )


@dataclass
class PolicyGradientConfig(AlgorithmConfig):
    """Settings shared by the policy-gradient agents (PPO, REINFORCE)."""

    episodes_per_rollout: int = 64
    """Finished episodes collected before each update."""
    minibatch_size: int = 16
    """Episodes per gradient step (DeepSpeed's micro batch)."""
    init_kl_coef: float = 0.05
    """Initial coefficient of the per-token KL penalty against the reference model."""
    target_kl_ref: float | None = 6.0
    """Per-episode KL to the reference the adaptive controller aims at; None keeps ``init_kl_coef`` fixed."""
    kl_horizon: int = 10_000
    """Horizon (episodes) of the adaptive KL controller."""
    temperature: float = 1.0
    """Sampling temperature of rollouts; the update scores tokens under the same processed distribution."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0: no top-k filter)."""
    top_p: float = 1.0
    """Sample only from the smallest token set whose probability reaches top_p (1.0: no nucleus filter)."""
    rollout_precision: str = "same"
    """``"same"`` (act with the trained network) or ``"bf16"`` (act with a bf16 copy, re-synced after every
    update, while training in fp32; see :class:`agents.precision.RolloutCopy`)."""
    rollout_merge_lora: bool = False
    """LoRA agents: act with a copy of the network whose adapters are merged into its weights
    (``W + B A * scale``, recomputed after every update), in bf16 if the agent trains in bf16 or
    ``rollout_precision="bf16"``: plain linears in the rollout instead of a base matmul plus two adapter ones,
    for one more copy of the weights in memory (none more under ZeRO-3, whose rollouts act on a whole-weights
    copy anyway). See :class:`agents.precision.RolloutCopy`."""
    keep_kv_cache: bool = True
    """Rows that are mid-episode when an update ends keep the KV cache of what they have generated so far
    (computed with the weights before the update), as SB3-contrib's RecurrentPPO keeps its LSTM states
    across updates; a row's next episode starts from a fresh prefill (an RLOO group does not reuse the
    outdated prompt: a REINFORCE gradient has no ratio to correct for it). False recomputes every such row's
    prompt and partial completion with the new weights at the start of the next rollout: up to one prefill
    of every env's whole context per iteration, about a quarter of the rollout's time once the envs'
    episodes are out of step. PPO's "old" log-probs are the ones each token was drawn with (a row's tokens
    before an update already come from the previous weights, and the ratio corrects for both), or, with a
    rollout copy, the update path's own scoring pass (``train/rollout_logprob_gap`` then reports how far the
    acting log-probs were)."""
    pack_cpu_weights: bool = True
    """bf16 on a CPU: rollouts run their forwards on linear weights reordered once per rollout into oneDNN's
    blocked layout (bitwise the same outputs; decoding about 1.1x faster for SmolLM2-135M), a packed copy of
    those weights that lives only during the rollout; False saves that memory. No effect elsewhere, nor on
    unmerged LoRA adapters (``rollout_merge_lora=True`` acts on a plain copy, which is packed). See
    :mod:`agents.packing`."""
    decode: str = "eager"
    """How rollouts decode: ``"eager"`` (one eager forward per token on a growing ``DynamicCache``),
    ``"compiled"`` (a preallocated per-row KV cache of P + N slots and one ``torch.compile``d step reused for
    every token: inductor on a CPU, CUDA graphs on a GPU; sequence-level envs generate with transformers'
    static cache, compiled) or ``"auto"`` (compiled on a GPU, eager on a CPU). The first compiled step
    compiles (logged as ``time/decode_compile_s``; torch's compile caches shorten it in later runs); where
    torch cannot compile, a one-line ``RuntimeWarning`` says so and the eager step is used. With
    ``"compiled"`` the rollout's linears are not packed (``pack_cpu_weights``: the compiler owns the
    kernels) and ``predict`` stays eager. See :mod:`agents.decode`."""
    ema_decay: float | None = None
    """Keep an fp32 exponential moving average of the actor's weights with this decay (e.g. 0.992), updated
    after every optimizer step, saved with checkpoints, exported by ``export(path, ema=True)``; None: no EMA
    (and no copy). See :mod:`agents.ema`."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of the language-modelling loss on a minibatch of ``ptx_dataset`` added to every
    gradient step (0: off). See :mod:`agents.ptx`."""
    ptx_dataset: str | list[str] | None = None
    """The ptx text: a ``.jsonl`` file (``"text"`` per line), a text file (one text per line) or a list of
    strings; needed when ``ptx_coef > 0``."""
    turn_level_credit: bool = False
    """Multi-turn envs: one advantage per agent turn (the discounted return from the turn on, minus a
    baseline per turn index), given to every agent token of the turn, instead of token-level GAE (PPO) or
    one advantage per episode (REINFORCE, GRPO). See :mod:`agents.turn_credit`."""
    turn_gamma: float = 1.0
    """Discount per agent turn of ``turn_level_credit``'s returns."""
    turn_baseline: str = "leave_one_out"
    """``turn_level_credit``'s baseline per turn index: ``leave_one_out`` (the mean return at that turn of
    the other episodes of the prompt's group, or of the batch without prompt groups; unbiased) or
    ``batch_norm`` (GEM's return batch normalisation per turn index)."""

    @property
    def micro_batch_size(self) -> int:
        return self.minibatch_size

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.episodes_per_rollout < 1 or self.minibatch_size < 1:
            raise ValueError("episodes_per_rollout and minibatch_size must be >= 1")
        if self.minibatch_size > self.episodes_per_rollout:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) exceeds "
                f"episodes_per_rollout ({self.episodes_per_rollout}); "
                "lower minibatch_size or raise episodes_per_rollout"
            )
        if self.init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if self.target_kl_ref is not None and self.target_kl_ref <= 0:
            raise ValueError(
                f"target_kl_ref must be > 0 or None (fixed coefficient), got {self.target_kl_ref}"
            )
        if self.rollout_precision not in ROLLOUT_PRECISIONS:
            raise ValueError(
                f"rollout_precision={self.rollout_precision!r} is not known; use one of {ROLLOUT_PRECISIONS}"
            )
        for flag in ("rollout_merge_lora", "keep_kv_cache", "pack_cpu_weights"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode={self.decode!r} is not known; use one of {DECODE_MODES}")
        check_number("temperature", self.temperature, "0.7")
        check_number("top_p", self.top_p, "0.9")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; 1.0 samples the model as is")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 turns the filter off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1.0 turns the filter off), got {self.top_p}")
        if self.ema_decay is not None:
            check_number("ema_decay", self.ema_decay, "0.992")
            if not 0 <= self.ema_decay < 1:
                raise ValueError(
                    f"ema_decay must be in [0, 1) or None (no EMA), got {self.ema_decay}; e.g. 0.992"
                )
        check_number("ptx_coef", self.ptx_coef, "1.0")
        if self.ptx_coef < 0:
            raise ValueError(f"ptx_coef must be >= 0 (0 turns the pretraining mix off), got {self.ptx_coef}")
        if (self.ptx_coef > 0) != (self.ptx_dataset is not None):
            raise ValueError(
                f"ptx_coef={self.ptx_coef} with ptx_dataset={self.ptx_dataset!r}: the pretraining mix needs "
                "both, ptx_coef > 0 and ptx_dataset (a .jsonl/.txt file or a list of texts); or neither"
            )
        if not isinstance(self.turn_level_credit, bool):
            raise TypeError(f"turn_level_credit must be True or False, got {self.turn_level_credit!r}")
        if not 0 < self.turn_gamma <= 1:
            raise ValueError(f"turn_gamma must be in (0, 1], got {self.turn_gamma}; 1.0 does not discount")
        if self.turn_baseline not in TURN_BASELINES:
            raise ValueError(
                f"turn_baseline={self.turn_baseline!r} is not known; use one of {TURN_BASELINES}"
            )
        if isinstance(self.ptx_dataset, str) and not self.ptx_dataset.strip():
            raise ValueError("ptx_dataset is an empty string; pass a .jsonl/.txt file or a list of texts")
