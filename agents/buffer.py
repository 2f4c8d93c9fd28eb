"""Episode buffer: rollouts are stored as whole episodes (prompt, generated tokens, per-token stats, reward).

Token-level and sequence-level environments fill the same buffer, so both share one ``train()`` path:
``get()`` stacks the finished episodes into (E, P+N) tensors in the observation layout (prompt left-padded
to P, completion right-padded to N) and returns them as an :class:`EpisodeBatch`.

>>> buf = EpisodeBuffer(prompt_len=2, max_new_tokens=3, pad_token_id=0)
>>> buf.start(0, [0, 7], [0, 1])
>>> buf.append(0, token=5, logprob=-1.0, value=0.5)
>>> buf.finish(0, reward=2.0)
>>> batch = buf.get()
>>> batch.input_ids.tolist(), batch.gen_mask.tolist(), batch.rewards.tolist()
([[0, 7, 5, 0, 0]], [[1.0, 0.0, 0.0]], [2.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch


class EpisodeBatch(NamedTuple):
    """E finished episodes in the observation layout."""

    input_ids: torch.Tensor  # (E, P+N) int64
    attention_mask: torch.Tensor  # (E, P+N) int64
    gen_mask: torch.Tensor  # (E, N) float32, 1 on generated tokens
    old_logprobs: torch.Tensor | None  # (E, N) float32, behaviour log-probs (None: not recorded)
    old_values: torch.Tensor | None  # (E, N) float32
    rewards: torch.Tensor  # (E,) float32 task reward
    group_ids: torch.Tensor  # (E,) int64, equal for episodes with the same prompt


@dataclass
class _Episode:
    prompt_ids: list[int]
    prompt_mask: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    reward: float = 0.0


class EpisodeBuffer:
    """Collects episodes per env slot (``start`` / ``append`` / ``finish``) or whole (``add``)."""

    def __init__(self, prompt_len: int, max_new_tokens: int, pad_token_id: int) -> None:
        self.prompt_len, self.max_new_tokens, self.pad_token_id = prompt_len, max_new_tokens, pad_token_id
        self.running: dict[int, _Episode] = {}
        self.finished: list[_Episode] = []

    def __len__(self) -> int:
        return len(self.finished)

    def start(self, slot: int, prompt_ids: list[int], prompt_mask: list[int]) -> None:
        self.running[slot] = _Episode(list(prompt_ids), list(prompt_mask))

    def is_running(self, slot: int) -> bool:
        return slot in self.running

    def append(self, slot: int, token: int, logprob: float, value: float) -> None:
        episode = self.running[slot]
        episode.tokens.append(int(token))
        episode.logprobs.append(float(logprob))
        episode.values.append(float(value))

    def finish(self, slot: int, reward: float) -> None:
        episode = self.running.pop(slot)
        episode.reward = float(reward)
        self.finished.append(episode)

    def add(self, prompt_ids: list[int], prompt_mask: list[int], tokens: list[int], reward: float) -> None:
        """A whole episode from a sequence-level env (log-probs and values are computed in training)."""
        self.finished.append(
            _Episode(list(prompt_ids), list(prompt_mask), list(tokens), reward=float(reward))
        )

    def clear(self) -> None:
        """Drop finished episodes; running ones carry over into the next rollout."""
        self.finished = []

    def get(self, device: torch.device | str = "cpu") -> EpisodeBatch:
        episodes, prompt_len, n_new = self.finished, self.prompt_len, self.max_new_tokens
        count = len(episodes)
        ids = np.full((count, prompt_len + n_new), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((count, prompt_len + n_new), dtype=np.int64)
        logprobs = np.zeros((count, n_new), dtype=np.float32)
        values = np.zeros((count, n_new), dtype=np.float32)
        has_stats = all(len(ep.logprobs) == len(ep.tokens) for ep in episodes)
        groups: dict[tuple[int, ...], int] = {}
        group_ids = np.zeros(count, dtype=np.int64)
        for i, ep in enumerate(episodes):
            length = len(ep.tokens)
            ids[i, :prompt_len], mask[i, :prompt_len] = ep.prompt_ids, ep.prompt_mask
            ids[i, prompt_len : prompt_len + length], mask[i, prompt_len : prompt_len + length] = ep.tokens, 1
            if has_stats:
                logprobs[i, :length], values[i, :length] = ep.logprobs, ep.values
            key = tuple(t for t, m in zip(ep.prompt_ids, ep.prompt_mask, strict=True) if m)
            group_ids[i] = groups.setdefault(key, len(groups))
        rewards = np.array([ep.reward for ep in episodes], dtype=np.float32)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, device=device)

        return EpisodeBatch(
            input_ids=tensor(ids),
            attention_mask=tensor(mask),
            gen_mask=tensor(mask[:, prompt_len:].astype(np.float32)),
            old_logprobs=tensor(logprobs) if has_stats else None,
            old_values=tensor(values) if has_stats else None,
            rewards=tensor(rewards),
            group_ids=tensor(group_ids),
        )
