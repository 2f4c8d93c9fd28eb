"""The pretraining mix of PPO-ptx (Ouyang et al. 2022; DeepSpeed-Chat's ``unsupervised`` data): the language
modelling loss on a minibatch of plain text, added to every policy-gradient step, so that the policy keeps
modelling that text while it chases the reward.

``ptx_dataset`` is a list of strings or a file: ``.jsonl`` with one object per line holding ``"text"`` (or
``"prompt"`` and ``"completion"``, joined), any other file one text per non-empty line. Texts are tokenized
once (each cut to ``max_length`` tokens); every step draws ``batch_size`` of them with torch's global RNG
(which checkpoints save and restore, so a resumed run draws the same texts).

The token-level loss helpers here are shared with supervised fine-tuning (:mod:`agents.sft`).

>>> import torch
>>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
>>> nll = token_nll(logits, torch.tensor([[0, 1, 2]]))
>>> nll.shape, round(float(nll[0, 0]), 4)
(torch.Size([1, 2]), 1.3863)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from infra.storage import jsonl_objects


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits and (B, T) ids -> (B, T-1) negative log-likelihood of each next token (fp32)."""
    shifted = logits[:, :-1].float()  # (B, T-1, V)
    return torch.nn.functional.cross_entropy(shifted.transpose(1, 2), input_ids[:, 1:], reduction="none")


def masked_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over the positions whose token has ``loss_mask`` 1 ((B, T) each; the first token
    of a row is never a target).

    >>> ids = torch.tensor([[0, 1, 2]])
    >>> round(float(masked_lm_loss(torch.zeros(1, 3, 4), ids, torch.tensor([[0, 0, 1]]))), 4)
    1.3863
    """
    weights = loss_mask[:, 1:].float()  # (B, T-1)
    return (token_nll(logits, input_ids) * weights).sum() / weights.sum().clamp(min=1.0)


def read_texts(source: str | os.PathLike | Sequence[str], what: str = "ptx_dataset") -> list[str]:
    """The texts of ``source`` (see the module docstring); errors name the file and line."""
    if not isinstance(source, (str, os.PathLike)):
        texts = list(source)
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
        if bad or not texts:
            raise ValueError(
                f"{what} must be a file or a non-empty list of non-empty strings; items {bad[:5]} are not"
            )
        return texts
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}={str(path)!r} is not a file; pass a .jsonl/.txt file or a list of texts"
        )
    if path.suffix != ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for where, record in jsonl_objects(path, '{"text": "..."}'):
            if isinstance(record.get("text"), str):
                texts.append(record["text"])
            elif all(isinstance(record.get(key), str) for key in ("prompt", "completion")):
                texts.append(record["prompt"] + record["completion"])
            else:
                raise ValueError(
                    f'{where}: expected an object with a string "text" (or "prompt" and "completion"), '
                    f"got the keys {sorted(record)}"
                )
    if not texts:
        raise ValueError(f"{what}={str(path)!r} holds no text; add one text per line")
    return texts


class PretrainingMix:
    """Tokenized ``ptx_dataset`` texts and the LM loss on a random minibatch of them."""

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str],
        tokenizer: Any,
        batch_size: int,
        max_length: int = 128,
        pad_token_id: int = 0,
    ) -> None:
        texts = read_texts(source)
        self.rows = [ids[:max_length] for ids in tokenizer(texts)["input_ids"] if len(ids) >= 2]
        if not self.rows:
            raise ValueError("ptx_dataset: every text is shorter than 2 tokens; pass longer texts")
        self.batch_size, self.pad_token_id = batch_size, pad_token_id

    def sample(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) right-padded ids and attention mask of ``batch_size`` texts drawn with replacement."""
        picks = torch.randint(len(self.rows), (self.batch_size,)).tolist()
        rows = [self.rows[i] for i in picks]
        width = max(map(len, rows))
        ids = torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        return ids, mask

    def loss(self, network: Any, device: torch.device) -> torch.Tensor:
        """Mean next-token NLL of a fresh minibatch under ``network``: an engine or module whose forward
        takes ``(input_ids, attention_mask)`` and returns the logits first, as
        :class:`agents.policy.ActorCritic` does."""
        ids, mask = self.sample(device)
        logits = network(ids, mask)[0]  # (B, T, V)
        return masked_lm_loss(logits, ids, mask)
