"""Replay buffer of token transitions for :class:`~agents.dqn.DQN`, stored as episodes plus positions.

A token-level transition is ``(s_t, a_t, r_t, s_{t+1})`` where ``s_t`` is the prompt plus the first ``t``
generated tokens. Storing the padded (P+N) observation per transition would cost ``2 * (P+N) * 8`` bytes each;
instead every episode's token ids are kept once (the real prompt tokens, then the completion, in the
smallest unsigned integer type that holds the vocabulary), with its per-token rewards and agent flags, and a
transition is two small integers: its episode id and its position ``t``. A sampled transition's states are
rebuilt from its episode in the observation layout.

Multi-turn episodes (``TextChat-v0``) hold the other party's tokens between the agent's: ``agent_mask``
marks the agent's. Only those are transitions (actions); the others are part of the next agent state.

Capacity counts transitions (SB3's ``buffer_size``) in a ring: a new episode overwrites the oldest
transitions, and an episode's token ids are dropped once none of its transitions is left.

>>> buf = ReplayBuffer(buffer_size=4, prompt_len=2, max_new_tokens=3, pad_token_id=0, vocab_size=512)
>>> buf.add(prompt_ids=[7], tokens=[5, 6], reward=1.0)   # the reward follows the last token
>>> buf.add(prompt_ids=[8, 9], tokens=[4, 4, 4], reward=0.5)   # overwrites the first episode's 1st transition
>>> len(buf), buf.n_episodes
(4, 2)
>>> batch = buf.sample(2, np.random.default_rng(0))   # 2 transitions of 1 episode: U=1 row
>>> batch.input_ids.tolist(), batch.positions.tolist(), batch.rows.tolist()
([[8, 9, 4, 4, 4]], [1, 0], [0, 0])
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from agents.rollout import Episode


class ReplaySamples(NamedTuple):
    """``batch_size`` transitions: their U distinct episodes in the observation layout plus where they are."""

    input_ids: torch.Tensor  # (U, P+N) int64, prompt left-padded to P, completion right-padded to N
    attention_mask: torch.Tensor  # (U, P+N) int64
    gen_mask: torch.Tensor  # (U, N) float32, 1 on the agent's tokens (the actions)
    rewards: torch.Tensor  # (U, N) float32, each reward on the agent token it followed
    rows: torch.Tensor  # (B,) int64, episode row of each sampled transition
    positions: torch.Tensor  # (B,) int64, index t of the sampled token within the completion
    stamps: torch.Tensor | None = None  # (U,) int64, each episode's ``stamp`` (the updates done when added)


class ReplayBuffer:
    """Ring buffer of ``buffer_size`` token transitions; see the module docstring for the storage scheme."""

    def __init__(
        self, buffer_size: int, prompt_len: int, max_new_tokens: int, pad_token_id: int, vocab_size: int
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1 transition, got {buffer_size}")
        if max_new_tokens >= 2**15:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too large for int16 positions")
        self.buffer_size, self.prompt_len, self.max_new_tokens = buffer_size, prompt_len, max_new_tokens
        self.pad_token_id = pad_token_id
        self.token_dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)
        self.episode_of = np.zeros(buffer_size, dtype=np.int64)  # episode id of each transition slot
        self.position_of = np.zeros(buffer_size, dtype=np.int16)  # its t
        # id -> (token ids, prompt length, (n,) float32 rewards, (n,) uint8 agent flags), n completion tokens
        self.episodes: dict[int, tuple[np.ndarray, int, np.ndarray, np.ndarray]] = {}
        self.live: dict[int, int] = {}  # id -> transitions of it still stored
        self.stamps: dict[int, int] = {}  # id -> the caller's stamp when it was added (e.g. the update count)
        self.next_slot, self.size, self.next_episode = 0, 0, 0

    def __len__(self) -> int:
        return self.size

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    def add_episode(self, episode: Episode, stamp: int = 0) -> None:
        """One finished episode as the rollout collector keeps it (in the observation layout): its real
        prompt and generated tokens, its rewards by token (or its one reward) and, in a conversation, the
        agent's tokens among them (``agent_mask``); ``stamp`` as in :meth:`add`."""
        prompt_len = self.prompt_len
        ids, mask = episode.input_ids, episode.attention_mask.astype(bool)  # (P+N,)
        generated = mask[prompt_len:]  # (N,)
        prompt, completion = ids[:prompt_len][mask[:prompt_len]], ids[prompt_len:][generated]
        rewards = episode.reward if episode.token_rewards is None else episode.token_rewards[generated]
        agent = None if episode.agent_mask is None else episode.agent_mask[generated]
        self.add(prompt, completion, rewards, agent, stamp=stamp)

    def add(
        self,
        prompt_ids: list[int] | np.ndarray,
        tokens: list[int] | np.ndarray,
        reward: float | list[float] | np.ndarray,
        agent_mask: list[int] | np.ndarray | None = None,
        stamp: int = 0,
    ) -> None:
        """One finished episode: its real (unpadded) prompt tokens and generated tokens; ``agent_mask``
        (default: all 1) marks the tokens the agent wrote (only those become transitions), and ``reward``
        is one reward per token (each after its agent token) or a float (after the last agent token).
        ``stamp`` is kept with it and comes back in :attr:`ReplaySamples.stamps` (DQN: its update count,
        for the replay's age)."""
        tokens = np.asarray(tokens).reshape(-1)
        count = len(tokens)
        if count > self.max_new_tokens:
            raise ValueError(f"episode has {count} tokens, more than max_new_tokens={self.max_new_tokens}")
        agent = (
            np.ones(count, np.uint8) if agent_mask is None else np.asarray(agent_mask, np.uint8).reshape(-1)
        )
        actions = np.flatnonzero(agent)
        rewards = np.zeros(count, np.float32)
        if np.ndim(reward) > 0:
            rewards = np.asarray(reward, np.float32).reshape(-1)
        elif len(actions):
            rewards[actions[-1]] = float(reward)  # type: ignore[arg-type]
        if len(agent) != count or len(rewards) != count:
            raise ValueError(
                f"agent_mask ({len(agent)}) and a per-token reward ({len(rewards)}) need one value per token "
                f"({count}); or pass a float reward, which follows the last agent token"
            )
        if len(actions) == 0:
            return
        episode = self.next_episode
        self.next_episode += 1
        prompt = np.asarray(prompt_ids).reshape(-1)[-self.prompt_len :]
        stored = np.concatenate([prompt, tokens]).astype(self.token_dtype)
        self.episodes[episode] = (stored, len(prompt), rewards, agent)
        self.live[episode], self.stamps[episode] = 0, int(stamp)
        for t in actions[: self.buffer_size]:
            slot = self.next_slot
            if self.size == self.buffer_size:
                self._release(int(self.episode_of[slot]))
            self.episode_of[slot], self.position_of[slot] = episode, t
            self.live[episode] += 1
            self.next_slot = (slot + 1) % self.buffer_size
            self.size = min(self.size + 1, self.buffer_size)

    def mean_return(self) -> float:
        """The mean over the stored episodes of their summed rewards (0.0 when empty)."""
        returns = [rewards[agent > 0].sum() for _, _, rewards, agent in self.episodes.values()]
        return float(np.mean(returns)) if returns else 0.0

    def _release(self, episode: int) -> None:
        self.live[episode] -= 1
        if self.live[episode] == 0:
            del self.live[episode], self.episodes[episode], self.stamps[episode]

    def sample(
        self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu"
    ) -> ReplaySamples:
        """``batch_size`` transitions drawn uniformly (with replacement), grouped by episode."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer; collect episodes first")
        slots = rng.integers(0, self.size, size=batch_size)
        episode_ids, rows = np.unique(self.episode_of[slots], return_inverse=True)
        count, prompt_len = len(episode_ids), self.prompt_len
        ids = np.full((count, prompt_len + self.max_new_tokens), self.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        agent = np.zeros((count, self.max_new_tokens), dtype=np.float32)  # (U, N)
        rewards = np.zeros_like(agent)  # (U, N)
        for row, episode in enumerate(episode_ids):
            stored, n_prompt, token_rewards, flags = self.episodes[int(episode)]
            end = prompt_len + len(stored) - n_prompt
            ids[row, prompt_len - n_prompt : end] = stored
            mask[row, prompt_len - n_prompt : end] = 1
            agent[row, : len(flags)], rewards[row, : len(flags)] = flags, token_rewards
        return ReplaySamples(
            input_ids=torch.as_tensor(ids, device=device),
            attention_mask=torch.as_tensor(mask, device=device),
            gen_mask=torch.as_tensor(agent, device=device),
            rewards=torch.as_tensor(rewards, device=device),
            rows=torch.as_tensor(rows.reshape(-1), device=device),
            positions=torch.as_tensor(self.position_of[slots].astype(np.int64), device=device),
            stamps=torch.as_tensor(
                [self.stamps[int(e)] for e in episode_ids], dtype=torch.int64, device=device
            ),
        )

    @property
    def nbytes(self) -> int:
        """Bytes held: transition arrays, per-episode arrays (with their object headers) and the tables."""
        # sys.getsizeof of an ndarray that owns its data includes the data buffer
        tokens = sum(
            sys.getsizeof(entry) + sum(sys.getsizeof(part) for part in entry)
            for entry in self.episodes.values()
        )
        counters = sum(sys.getsizeof(table) + 64 * len(table) for table in (self.live, self.stamps))
        tables = sys.getsizeof(self.episodes) + counters
        return int(self.episode_of.nbytes + self.position_of.nbytes + tokens + tables)

    # ---- persistence (optional part of a checkpoint) ----------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the buffer to ``path`` (an ``.npz``): flat token, reward and agent-flag arenas plus
        per-episode offsets."""
        ids = np.array(list(self.episodes), dtype=np.int64)
        entries = [self.episodes[int(i)] for i in ids]
        lengths = np.array([len(e[0]) for e in entries], dtype=np.int64)
        arena = np.concatenate([e[0] for e in entries]) if entries else np.zeros(0, self.token_dtype)
        reward_arena = np.concatenate([e[2] for e in entries]) if entries else np.zeros(0, np.float32)
        agent_arena = np.concatenate([e[3] for e in entries]) if entries else np.zeros(0, np.uint8)
        np.savez(
            path,
            ids=ids,
            lengths=lengths,
            prompt_lengths=np.array([e[1] for e in entries], dtype=np.int64),
            reward_arena=reward_arena,
            agent_arena=agent_arena,
            live=np.array([self.live[int(i)] for i in ids], dtype=np.int64),
            stamps=np.array([self.stamps[int(i)] for i in ids], dtype=np.int64),
            arena=arena,
            episode_of=self.episode_of,
            position_of=self.position_of,
            counters=np.array([self.next_slot, self.size, self.next_episode], dtype=np.int64),
        )

    def load(self, path: Path) -> None:
        """Restore what :meth:`save` wrote (same ``buffer_size``); files from before multi-turn support
        (one final reward per episode, every token the agent's) load too."""
        data = np.load(path, allow_pickle=False)
        if len(data["episode_of"]) != self.buffer_size:
            raise ValueError(
                f"saved replay buffer holds {len(data['episode_of'])} slots, this agent's buffer_size is "
                f"{self.buffer_size}; load with the same buffer_size"
            )
        self.episode_of, self.position_of = data["episode_of"].copy(), data["position_of"].copy()
        self.next_slot, self.size, self.next_episode = (int(x) for x in data["counters"])
        starts = np.concatenate([[0], np.cumsum(data["lengths"])])
        n_prompt = data["prompt_lengths"]
        completion_starts = np.concatenate([[0], np.cumsum(data["lengths"] - n_prompt)])
        self.episodes, self.live, self.stamps = {}, {}, {}
        stamps = data["stamps"] if "stamps" in data else np.zeros(len(data["ids"]), np.int64)  # older files
        for k, episode in enumerate(data["ids"].tolist()):
            stored = data["arena"][starts[k] : starts[k + 1]].astype(self.token_dtype)
            part = slice(completion_starts[k], completion_starts[k + 1])
            if "reward_arena" in data:
                rewards, agent = data["reward_arena"][part].copy(), data["agent_arena"][part].copy()
            else:  # an older file: the episode's reward after its last token
                agent = np.ones(part.stop - part.start, np.uint8)
                rewards = np.zeros(len(agent), np.float32)
                rewards[-1] = data["rewards"][k]
            self.episodes[episode] = (stored, int(n_prompt[k]), rewards, agent)
            self.live[episode], self.stamps[episode] = int(data["live"][k]), int(stamps[k])
