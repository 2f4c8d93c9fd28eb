"""SFT data (:mod:`agents.sft`): JSON-lines records of ``{"prompt", "completion"}`` or chat ``{"messages"}``,
tokenized into ids and a loss mask that marks the completion / assistant tokens.

A chat is rendered with the tokenizer's chat template; a tokenizer without one gets the plain format
``"<role>: <content>\n"`` per message, EOS closing each assistant message (:func:`render_chat`).

>>> import textenv
>>> tok = textenv.load_tokenizer("tiny-sp")
>>> example = encode_record({"prompt": "to be", "completion": " or not"}, tok, "line 1")
>>> example.input_ids[-1] == tok.eos_token_id, example.loss_mask[0], example.loss_mask[-1]
(True, 0, 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infra.storage import jsonl_objects

ROLES = ("system", "user", "assistant")
EXAMPLE_LINE = '{"prompt": "Question: ...", "completion": " Answer ..."}'


@dataclass(frozen=True)
class SFTExample:
    """One tokenized example: its ids and which of them the loss counts (1) or only conditions on (0)."""

    input_ids: list[int]
    loss_mask: list[int]


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """``messages`` as text: the tokenizer's chat template, or ``"<role>: <content>\\n"`` per message (EOS
    after each assistant message, ``"assistant: "`` as the generation prompt) for a tokenizer without one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)
    eos = tokenizer.eos_token or ""
    lines = [f"{m['role']}: {m['content']}{eos if m['role'] == 'assistant' else ''}\n" for m in messages]
    return "".join(lines) + ("assistant: " if add_generation_prompt else "")


def chat_segments(tokenizer: Any, messages: list[dict[str, str]], where: str) -> list[tuple[str, bool]]:
    """``(text, trained)`` pieces of a rendered conversation: each assistant reply with its end-of-turn markup
    is trained, the rest (template, system and user turns, generation prompts) is context."""
    segments, done = [], ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render_chat(tokenizer, messages[:index], add_generation_prompt=True)
        full = render_chat(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (head.startswith(done) and full.startswith(head)):
            raise ValueError(
                f"{where}: the tokenizer's chat template does not render this conversation turn by turn (an "
                "earlier rendering is not a prefix of a later one), so the assistant tokens cannot be told "
                'apart; use {"prompt", "completion"} lines instead'
            )
        segments += [(head[len(done) :], False), (full[len(head) :], True)]
        done = full
    rest = render_chat(tokenizer, messages, add_generation_prompt=False)[len(done) :]
    return segments + ([(rest, False)] if rest else [])


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    for number, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f'{where}: messages[{number}] is {message!r}; each needs "role" (one of {ROLES}) and a '
                'string "content"'
            )
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError(f'{where}: no "assistant" message, so nothing to learn; add the reply to train on')
    return messages


def tokenize_segments(
    tokenizer: Any, segments: list[tuple[str, bool]], add_special_tokens: bool
) -> tuple[list[int], list[int]]:
    """Ids and loss mask of the joined ``(text, trained)`` segments. A fast tokenizer encodes the whole text
    once and a token is trained when it overlaps a trained segment (so that sentencepiece and BPE merge
    across the seams as they do at inference); a slow one encodes segment by segment."""
    if not getattr(tokenizer, "is_fast", False):
        ids: list[int] = []
        mask: list[int] = []
        for index, (text, trained) in enumerate(segments):
            piece = tokenizer(text, add_special_tokens=add_special_tokens and index == 0)["input_ids"]
            ids, mask = ids + piece, mask + [int(trained)] * len(piece)
        return ids, mask
    spans, position = [], 0
    for text, trained in segments:
        if trained:
            spans.append((position, position + len(text)))
        position += len(text)
    text = "".join(text for text, _ in segments)
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    mask = [
        int(start < end and any(start < high and end > low for low, high in spans))  # added specials: (0, 0)
        for start, end in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), mask


def encode_record(record: dict[str, Any], tokenizer: Any, where: str) -> SFTExample:
    """Tokenize one data record (see the module docstring) into ids and a loss mask."""
    if "messages" in record:
        messages = _check_messages(record["messages"], where)
        segments = chat_segments(tokenizer, messages, where)
        return SFTExample(*tokenize_segments(tokenizer, segments, add_special_tokens=False))
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
        raise ValueError(
            f'{where}: expected a string "prompt" and a non-empty string "completion" (or "messages"), got '
            f"keys {sorted(record)}; e.g. {EXAMPLE_LINE}"
        )
    ids, mask = tokenize_segments(tokenizer, [(prompt, False), (completion, True)], add_special_tokens=True)
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids, mask = [*ids, tokenizer.eos_token_id], [*mask, 1]
    return SFTExample(ids, mask)


def truncate(ids: list[int], mask: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut an example to ``max_length`` tokens: context before the first trained token goes first (from the
    left, keeping the context nearest the reply), then the end.

    >>> truncate([1, 2, 3, 4, 5], [0, 0, 0, 1, 1], 3)
    ([3, 4, 5], [0, 1, 1])
    >>> truncate([1, 2, 3, 4, 5], [0, 1, 1, 1, 1], 3)
    ([1, 2, 3], [0, 1, 1])
    """
    over = len(ids) - max_length
    if over <= 0:
        return ids, mask
    first = mask.index(1) if 1 in mask else 0
    cut = min(over, max(0, first - 1))  # keep one context token before the reply: its first token is a target
    return ids[cut:][:max_length], mask[cut:][:max_length]


def load_examples(
    data: str | os.PathLike | Sequence[dict[str, Any]], tokenizer: Any, max_length: int
) -> list[SFTExample]:
    """Tokenized examples of a JSON-lines file or a list of records, each cut to ``max_length`` tokens."""
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).is_file():
            raise FileNotFoundError(f"SFT data {str(data)!r} is not a file; pass a JSON-lines file")
        records = list(jsonl_objects(data, EXAMPLE_LINE))
    else:
        records = [(f"data[{index}]", record) for index, record in enumerate(data)]
        for where, record in records:
            if not isinstance(record, dict):
                raise ValueError(f"{where} is {type(record).__name__}; each example must be a dict")
    examples, dropped = [], 0
    for where, record in records:
        example = encode_record(record, tokenizer, where)
        ids, mask = truncate(example.input_ids, example.loss_mask, max_length)
        if sum(mask[1:]) == 0:
            dropped += 1
            continue
        examples.append(SFTExample(ids, mask))
    if dropped:
        warnings.warn(
            f"{dropped} of {len(records)} examples kept no completion token within max_length={max_length} "
            "and were dropped; raise max_length",
            stacklevel=2,
        )
    if not examples:
        raise ValueError(
            f"no trainable examples in {data if isinstance(data, (str, os.PathLike)) else 'data'}"
        )
    return examples


def collate(
    examples: Sequence[SFTExample], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Right-padded (B, T) ids, attention mask and loss mask."""
    width = max(len(e.input_ids) for e in examples)
    pad = [width - len(e.input_ids) for e in examples]
    ids = [e.input_ids + [pad_token_id] * n for e, n in zip(examples, pad, strict=True)]
    attention = [[1] * len(e.input_ids) + [0] * n for e, n in zip(examples, pad, strict=True)]
    loss = [e.loss_mask + [0] * n for e, n in zip(examples, pad, strict=True)]
    return tuple(torch.tensor(rows, device=device) for rows in (ids, attention, loss))


def fingerprint(examples: Sequence[SFTExample]) -> str:
    """A short hash of the tokenized examples: a resumed run must train on the same data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.loss_mask]).encode())
    return digest.hexdigest()[:16]
