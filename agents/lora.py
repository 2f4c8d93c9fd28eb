"""LoRA through peft: ``peft_config=LoraConfig(...)`` on every agent (the argument name TRL uses).

- **What trains**: the LM is wrapped by ``peft.get_peft_model``; its base weights are frozen, the adapters and
  the value head (which sits outside the LM, in :class:`~agents.policy.ActorCritic`) train, and only they get
  optimizer state.
- **The reference** (KL penalty, DQN exploration) is the same network with its adapters switched off
  (:class:`AdapterDisabledLM`): since the base weights never change, that *is* the initial model, and no
  second copy of the weights is kept (on SmolLM2-135M: 0.27 GB in bf16, 0.54 GB in fp32), and the optimizer
  state shrinks from two fp32 copies of the model to two of the adapters.
- **Checkpoints** hold the base weights once (``base/``, a plain HF directory), the adapters in peft's format
  (``adapter/``: ``adapter_config.json`` + ``adapter_model.safetensors``), the value head, and DeepSpeed's
  state of the trainable parameters (adapters + head) with their optimizer state; no ``reference/``.
- **Export** (:func:`merged_state_dict`) folds the adapters into the base weights (``W + B A * scale``) and
  writes a plain transformers directory that ``AutoModelForCausalLM`` loads without peft; the training network
  is left as it was (no in-place merge and unmerge, so bf16 weights do not drift). Modules trained whole
  (``modules_to_save``) are exported as trained, and the base holds their original weights.
- **Settings** that would break one of these (the reference being the untouched base, or the merged weight
  being ``W + B A * scale``) are refused by :func:`wrap`, naming the setting: DoRA, LoRA biases, trained base
  biases, trainable tokens, initialisations that rewrite the base weights (PiSSA, OLoRA, LoftQ, CorDA), ...

>>> import textenv
>>> from peft import LoraConfig
>>> lm = wrap(textenv.load_model("tiny-sp"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
>>> is_peft(lm), sum(p.numel() for p in lm.parameters() if p.requires_grad)
(True, 1792)
>>> sorted(merged_state_dict(lm)) == sorted(textenv.load_model("tiny-sp").state_dict())
True
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from agents.policy import lm_forward

T = TypeVar("T")
ADAPTER_DIR = "adapter"
BASE_DIR = "base"


def _peft() -> Any:
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is a dependency of textenv
        raise ImportError("peft_config=... needs peft: pip install peft") from error
    return peft


#: LoraConfig settings the agents cannot honour, with why; each must keep LoraConfig's default
UNSUPPORTED = {
    "use_dora": "DoRA's weight is not W + B A * scale, which export and merged rollouts fold in",
    "lora_bias": "the adapters' bias is not part of the merged weight W + B A * scale",
    "bias": "trained base biases would change the reference (the base with adapters off)",
    "trainable_token_indices": "trainable token embeddings are not exported or merged",
    "target_parameters": "LoRA on bare parameters is not exported or merged",
    "layer_replication": "replicated layers share base weights that export cannot write back",
    "use_qalora": "QALoRA's pooled adapters are not W + B A * scale",
    "use_bdlora": "block-diagonal LoRA is not exported or merged",
    "alora_invocation_tokens": "activated LoRA switches adapters per token; export cannot",
    "loftq_config": "LoftQ rewrites the base weights, which must stay the reference",
    "eva_config": "EVA needs its data-driven initialisation, which the agents do not run",
    "corda_config": "CorDA rewrites the base weights, which must stay the reference",
    "lora_ga_config": "LoRA-GA rewrites the base weights, which must stay the reference",
    "velora_config": "VeLoRA is not exported or merged",
    "monteclora_config": "MonteCLoRA's sampled adapters are not W + B A * scale",
    "arrow_config": "Arrow routing between adapters is not exported or merged",
    "kasa_config": "KaSA rewrites the base weights, which must stay the reference",
    "megatron_config": "Megatron-parallel layers are not supported",
}
#: ``init_lora_weights`` values that leave the base weights as they are
PLAIN_INITS = (True, False, "gaussian")


def check_config(peft_config: Any) -> None:
    """Refuse a ``LoraConfig`` setting the agents cannot honour (:data:`UNSUPPORTED`), naming it."""
    peft = _peft()
    if not isinstance(peft_config, peft.LoraConfig):
        raise TypeError(
            f"peft_config must be a peft.LoraConfig, got {type(peft_config).__name__}; e.g. "
            "peft_config=LoraConfig(r=16, lora_alpha=32, target_modules='all-linear')"
        )
    defaults = peft.LoraConfig()
    for name, why in UNSUPPORTED.items():
        value, default = getattr(peft_config, name, None), getattr(defaults, name, None)
        if value != default and not (value is None and default in ({}, False)):
            raise ValueError(
                f"peft_config.{name}={value!r} is not supported: {why}. Leave it at its default ({default!r})"
            )
    init = peft_config.init_lora_weights
    if not any(init is plain or (isinstance(plain, str) and init == plain) for plain in PLAIN_INITS):
        raise ValueError(
            f"peft_config.init_lora_weights={init!r} is not supported: it rewrites the base weights (or "
            "needs data), and the base with adapters off must stay the reference. Use True, False"
            " or 'gaussian'"
        )


def wrap(lm: Any, peft_config: Any) -> Any:
    """``lm`` with LoRA adapters (``peft.get_peft_model``): base weights frozen, adapters trainable."""
    peft = _peft()
    check_config(peft_config)
    if is_peft(lm):
        raise ValueError(
            "the model already carries peft adapters; pass the plain transformers model with peft_config, "
            "or merge the adapters first (model.merge_and_unload())"
        )
    with warnings.catch_warnings():  # peft asks transformers a question transformers 5 renamed
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return peft.get_peft_model(lm, peft_config)


def is_peft(lm: Any) -> bool:
    """Whether ``lm`` is a peft model (adapters that can be switched off)."""
    return hasattr(lm, "disable_adapter") and hasattr(lm, "peft_config")


class AdapterDisabledLM(nn.Module):
    """The reference of a LoRA agent: the trained LM with its adapters switched off, no weights of its own.

    Its ``forward`` has :class:`~agents.policy.FrozenLM`'s signature and returns ``(logits, None)``, so
    scoring, :func:`~agents.policy.completion_logits` and :func:`~agents.kv_cache.cached_step` take it. The LM
    is held outside the module tree, so ``.to()``, ``parameters()`` and ``state_dict()`` see nothing (the
    weights belong to the policy)."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        if not is_peft(lm):
            raise TypeError(f"AdapterDisabledLM needs a peft model, got {type(lm).__name__}")
        self._network = (lm,)  # a tuple, not an attribute nn.Module would register

    @property
    def lm(self) -> Any:
        return self._network[0]

    def train(self, mode: bool = True) -> AdapterDisabledLM:
        return super().train(False)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, None]:
        """Logits (B, K, V) of the base model (adapters off) at the last ``logits_to_keep`` positions."""
        with self.lm.disable_adapter():
            out = lm_forward(
                self.lm, input_ids, attention_mask, position_ids, past_key_values, logits_to_keep
            )
        return out.logits, None


def _plain_key(name: str, merge: bool, active: Container[str]) -> str | None:
    """The plain transformers name of a peft state-dict key, or None where the key is not part of the plain
    model: an adapter tensor, and of a module trained whole (``modules_to_save``) the trained copies of the
    adapters in ``active`` when ``merge`` (the exported model), else its original (the base)."""
    if ".lora_" in name:
        return None
    if ".original_module." in name:
        return None if merge else name.replace(".original_module.", ".")
    if ".modules_to_save." in name:
        module, _, rest = name.partition(".modules_to_save.")
        adapter, _, tail = rest.partition(".")
        return f"{module}.{tail}" if merge and adapter in active else None
    return name.replace(".base_layer.", ".")


def _plain_items(lm: Any, items: Iterable[tuple[str, T]], merge: bool) -> list[tuple[str, T]]:
    """(plain name, item) for the peft-named ``items`` of ``lm``'s base model (:func:`_plain_key`)."""
    active = set(lm.active_adapters)
    pairs = [(key, item) for name, item in items if (key := _plain_key(name, merge, active)) is not None]
    twice = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
    if twice:  # a module trained whole by two active adapters: which copy is the model is undefined
        raise ValueError(f"peft model has more than one active copy of {twice[:3]}; activate one adapter")
    return pairs


def lora_layers(lm: Any) -> list[tuple[str, Any]]:
    """The LoRA linears of a peft model: (name in the plain model, layer) pairs."""
    from peft.tuners.lora import LoraLayer

    modules = lm.get_base_model().named_modules()
    return [(name, m) for name, m in modules if isinstance(m, LoraLayer) and hasattr(m, "base_layer")]


def merged_weight(layer: Any) -> torch.Tensor:
    """A LoRA linear's weight with its active adapters folded in, ``W + B A * scale``, summed in float32 and
    returned in the base weight's dtype."""
    weight = layer.base_layer.weight
    merged = weight.float()
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            merged = merged + layer.get_delta_weight(adapter).float()  # B A * scale
    return merged.to(weight.dtype)


def merged_state_dict(lm: Any, merge: bool = True) -> dict[str, torch.Tensor]:
    """The plain transformers state dict of a peft model: adapters merged into their base weights (``merge``),
    or the base weights alone (``merge=False``, what a checkpoint stores)."""
    state = dict(_plain_items(lm, lm.get_base_model().state_dict().items(), merge))
    if merge:
        with torch.no_grad():
            for name, layer in lora_layers(lm):
                state[f"{name}.weight"] = merged_weight(layer)
    return state


def plain_copy(lm: Any) -> Any:
    """A deep copy of a peft model as the plain transformers model: each LoRA linear replaced by its base
    linear, the adapters dropped, not merged in (:class:`agents.precision.RolloutCopy` writes the merged
    weights into it), and each module trained whole (``modules_to_save``) by its active trained copy."""
    from peft.utils import ModulesToSaveWrapper

    plain = copy.deepcopy(lm).get_base_model()
    for name, _ in lora_layers(lm):
        plain.set_submodule(name, plain.get_submodule(name).base_layer)
    wrappers = [(n, m) for n, m in plain.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    for name, wrapper in wrappers:
        copies = wrapper.modules_to_save
        trained = [copies[a] for a in wrapper.active_adapters if a in copies]
        plain.set_submodule(name, trained[0] if trained else wrapper.original_module)
    return plain


def plain_parameters(lm: Any) -> list[tuple[str, nn.Parameter]]:
    """(plain name, parameter) for a peft model's parameters other than the adapters and the base weights of
    its LoRA linears (those two make the merged weight: :func:`merged_weight`)."""
    merged = {f"{name}.weight" for name, _ in lora_layers(lm)}
    pairs = _plain_items(lm, lm.get_base_model().named_parameters(), merge=True)
    return [(key, param) for key, param in pairs if key not in merged]


def save_plain(lm: Any, directory: Path, tokenizer: Any = None, merge: bool = True) -> None:
    """A plain transformers directory (safetensors) of a peft model: merged weights, or the base alone."""
    base = lm.get_base_model()
    base.save_pretrained(directory, state_dict=merged_state_dict(lm, merge), safe_serialization=True)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)


def save_adapter(lm: Any, directory: Path) -> None:
    """The adapters in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    lm.save_pretrained(directory, safe_serialization=True)


def read_config(directory: Path) -> Any:
    """The ``LoraConfig`` saved in an adapter directory by :func:`save_adapter`."""
    peft = _peft()
    config = peft.PeftConfig.from_pretrained(str(directory))
    if not isinstance(config, peft.LoraConfig):
        raise ValueError(f"{directory} holds a {type(config).__name__}, not a LoraConfig")
    config.inference_mode = False  # it trains again after load
    config.base_model_name_or_path = None  # the base is the checkpoint's base/, wherever it lies now
    return config
