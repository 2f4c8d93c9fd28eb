"""The rollout collector: what an agent keeps of each env step, and the one batch an iteration trains on.

The environment already knows each finished episode: a token-level env hands its final observation over in
``infos[i]["terminal_observation"]`` (prompt left-padded to P, completion right-padded to N: exactly a
training row), and textenv's envs name the prompt in ``infos[i]["prompt_index"]``. The collector stores those
as they come, plus the per-token statistics the policy recorded while acting (behaviour log-prob and value,
in two (B, N) arrays indexed by env row and token position). At the end of a rollout :meth:`build` stacks
the finished episodes once into a :class:`RolloutBatch`.

- Token level (``Discrete`` actions): one call of :meth:`record` per env step. A row is tracked from the
  first step of its episode (no token generated yet); a row that joined mid-episode (after ``load``, or
  when the caller stepped the env itself) is skipped until its episode ends.
- Sequence level (``MultiDiscrete`` actions): each step finishes one episode per row; the row is the prompt
  observation followed by the action's tokens up to and including the first EOS.

Episodes with the same ``prompt_index`` share a group id (RLOO's leave-one-out groups). Envs that do not
report ``prompt_index`` are grouped by their prompt tokens.

Multi-turn envs (``TextChat-v0``) add ``agent_mask`` to the observation: the N slots then hold the other
party's turns too, and only the agent's tokens are trained (``gen_mask`` is ``attention_mask * agent_mask``
there). Rewards are kept on the agent token they followed (``token_rewards``: per turn or at the end), and an
episode's ``reward`` is their sum. When such an env drops old turns (``info["dropped_tokens"]``) the row's
statistics move left with its tokens. A sequence-level env whose episodes last several steps (one message
each, ``TextChatSeq-v0``) gives one training row per message, rewarded with the return from that message on.

>>> collector = RolloutCollector(num_envs=1, prompt_len=2, max_new_tokens=3, pad_token_id=0,
...                              stop_token_ids=9, token_level=True)
>>> ids, mask = np.array([[0, 7, 0, 0, 0]]), np.array([[0, 1, 0, 0, 0]])
>>> final = {"input_ids": np.array([0, 7, 9, 0, 0]), "attention_mask": np.array([0, 1, 1, 0, 0])}
>>> info = {"terminal_observation": final, "prompt_index": 4, "completion": ""}
>>> collector.record(ids, mask, np.array([9]), (np.array([-0.5]), np.array([0.1])), np.array([2.0]),
...                  np.array([True]), [info])
>>> batch = collector.build()
>>> batch.input_ids.tolist(), batch.gen_mask.tolist(), batch.old_logprobs.tolist(), batch.rewards.tolist()
([[0, 7, 9, 0, 0]], [[1.0, 0.0, 0.0]], [[-0.5, 0.0, 0.0]], [2.0])
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import numpy as np
import torch

MAX_SAMPLES = 4
"""(prompt, completion) pairs kept per rollout for TensorBoard's text tab: a uniform sample of its finished
episodes (reservoir sampling, on an RNG of its own so that logging does not change training). The first
episodes to finish are the short ones, so keeping those would show mostly short or empty completions."""


class RolloutBatch(NamedTuple):
    """E finished episodes in the observation layout, built once per rollout."""

    input_ids: torch.Tensor  # (E, P+N) int64
    attention_mask: torch.Tensor  # (E, P+N) int64
    gen_mask: torch.Tensor  # (E, N) float32, 1 on generated tokens
    old_logprobs: torch.Tensor | None  # (E, N) float32, behaviour log-probs (None: not recorded)
    old_values: torch.Tensor | None  # (E, N) float32
    rewards: torch.Tensor  # (E,) float32 task reward
    group_ids: torch.Tensor  # (E,) int64, equal for episodes with the same prompt
    token_rewards: torch.Tensor  # (E, N) float32, each reward on the agent token it followed


class Episode(NamedTuple):
    """One finished episode as stored: a training row and what the policy recorded for it."""

    input_ids: np.ndarray  # (P+N,) int64
    attention_mask: np.ndarray  # (P+N,) int64
    logprobs: np.ndarray | None  # (N,) float32
    values: np.ndarray | None  # (N,) float32
    reward: float
    group: Any  # hashable: the env's prompt_index, or the prompt's tokens
    agent_mask: np.ndarray | None = None  # (N,) 1 on agent tokens (multi-turn envs); None: all generated
    token_rewards: np.ndarray | None = None  # (N,) rewards by token; None: ``reward`` on the last token


class RolloutCollector:
    """Keeps finished episodes (and per-row statistics of running ones) across env steps."""

    def __init__(
        self,
        num_envs: int,
        prompt_len: int,
        max_new_tokens: int,
        pad_token_id: int,
        stop_token_ids: int | list[int] | None,
        token_level: bool,
    ) -> None:
        self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
        self.pad_token_id = pad_token_id
        # the ids that end a sequence-level completion: EOS, or the env's stop tokens (a list)
        self.stop_ids = np.asarray([] if stop_token_ids is None else stop_token_ids, dtype=np.int64).reshape(
            -1
        )
        self.token_level = token_level
        self.step_logprobs = np.zeros((num_envs, max_new_tokens), np.float32)  # (B, N) running episodes
        self.step_values = np.zeros((num_envs, max_new_tokens), np.float32)  # (B, N)
        self.step_rewards = np.zeros((num_envs, max_new_tokens), np.float32)  # (B, N) by token position
        self.pending: list[list[tuple]] = [[] for _ in range(num_envs)]  # multi-step sequence episodes
        self.tracked = np.zeros(num_envs, dtype=bool)  # (B,) the row's episode was seen from its start
        self.has_stats = True
        self.episodes: list[Episode] = []
        self.samples: list[tuple[str, str]] = []
        self._finished = 0  # episodes finished in this rollout (the reservoir's count)
        self._sample_rng = random.Random(0)
        self.tokens = 0  # tokens generated in this rollout (all rows, tracked or not)

    def __len__(self) -> int:
        return len(self.episodes)

    def clear(self) -> None:
        """Start a new rollout: drop finished episodes; running ones carry over."""
        self.episodes, self.samples, self.tokens, self._finished = [], [], 0, 0

    def untrack(self) -> None:
        """Forget the running episodes (e.g. after the env was reset): rows rejoin at their next episode."""
        self.tracked[:] = False

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The running episodes' statistics, for a checkpoint (see ``TextAlgorithm._resume_files``)."""
        return {
            "tracked": self.tracked,
            "step_logprobs": self.step_logprobs,
            "step_values": self.step_values,
            "step_rewards": self.step_rewards,
            "has_stats": np.array(self.has_stats),
        }

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays["tracked"].shape != self.tracked.shape:
            raise ValueError(
                f"the saved rollout has {len(arrays['tracked'])} env rows, this agent {len(self.tracked)}"
            )
        self.tracked = arrays["tracked"].astype(bool)
        self.step_logprobs = arrays["step_logprobs"].astype(np.float32)
        self.step_values = arrays["step_values"].astype(np.float32)
        if "step_rewards" in arrays:  # absent in checkpoints from before multi-turn envs
            self.step_rewards = arrays["step_rewards"].astype(np.float32)
        self.has_stats = bool(arrays["has_stats"])

    # ---- one env step -------------------------------------------------------------------------------------
    def record(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        actions: np.ndarray,
        stats: tuple[np.ndarray, np.ndarray] | None,
        rewards: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
        tokenizer: Any = None,
    ) -> None:
        """Store one step: the (B, T) observation that was acted on, the (B,) or (B, N) actions, the policy's
        per-token ``(logprobs, values)`` (each (B,); None if it records none) and what ``env.step`` returned.
        ``tokenizer`` decodes sample texts when the env's info has no ``completion``."""
        if stats is None:
            self.has_stats = False
        step = {
            "actions": actions,
            "rewards": rewards,
            "dones": dones,
            "infos": infos,
            "tokenizer": tokenizer,
        }
        if self.token_level:
            self._record_tokens(input_ids, attention_mask, stats=stats, **step)
        else:
            self._record_sequences(input_ids, attention_mask, **step)

    def _record_tokens(self, ids, mask, *, actions, stats, rewards, dones, infos, tokenizer) -> None:  # noqa: ANN001
        gen_len = mask[:, self.prompt_len :].sum(-1)  # (B,) tokens before this step's action
        starting = gen_len == 0  # a new episode starts at this step
        self.tracked[starting] = True
        self.step_rewards[starting] = 0.0
        self.tokens += len(actions)
        rows = np.flatnonzero(self.tracked)
        if stats is not None:
            self.step_logprobs[rows, gen_len[rows]] = stats[0][rows]
            self.step_values[rows, gen_len[rows]] = stats[1][rows]
        self.step_rewards[rows, gen_len[rows]] += rewards[rows]
        for row in rows:  # a multi-turn env dropped its oldest turns: the statistics move with the tokens
            shift = 0 if dones[row] else int(infos[row].get("dropped_tokens", 0))
            for array in (self.step_logprobs, self.step_values, self.step_rewards) if shift else ():
                array[row, :-shift], array[row, -shift:] = array[row, shift:].copy(), 0.0
        for row in np.flatnonzero(dones):
            if self.tracked[row]:
                final = infos[row].get("terminal_observation")
                if final is None:
                    raise ValueError(
                        "the env reported a finished episode without infos[i]['terminal_observation']; "
                        "step it through an SB3 VecEnv (DummyVecEnv, or agents.vec_env.wrap_vector_env)"
                    )
                final_ids = np.asarray(final["input_ids"], dtype=np.int64)
                final_mask = np.asarray(final["attention_mask"], dtype=np.int64)
                length = int(final_mask[self.prompt_len :].sum())
                logprobs = values = None
                if stats is not None:
                    logprobs = self._row_stats(self.step_logprobs[row], length)
                    values = self._row_stats(self.step_values[row], length)
                token_rewards = self._row_stats(self.step_rewards[row], length)
                agent = final.get("agent_mask")
                agent = None if agent is None else np.asarray(agent, dtype=np.int64)[self.prompt_len :]
                episode = Episode(
                    input_ids=final_ids,
                    attention_mask=final_mask,
                    logprobs=logprobs,
                    values=values,
                    reward=float(token_rewards.sum()),
                    group=self._group(final_ids, final_mask, infos[row]),
                    agent_mask=agent,
                    token_rewards=token_rewards,
                )
                self._finish(episode, infos[row], tokenizer)
            self.tracked[row] = False

    def _row_stats(self, values: np.ndarray, length: int) -> np.ndarray:
        row = np.zeros(self.max_new_tokens, np.float32)
        row[:length] = values[:length]
        return row

    def _record_sequences(self, ids, mask, *, actions, rewards, dones, infos, tokenizer) -> None:  # noqa: ANN001
        prompt_len, n_new = self.prompt_len, self.max_new_tokens
        for row in range(len(actions)):
            tokens = np.asarray(actions[row], dtype=np.int64)
            ends = np.flatnonzero(np.isin(tokens, self.stop_ids))
            tokens = tokens[: ends[0] + 1] if ends.size else tokens
            row_ids = np.full(prompt_len + n_new, self.pad_token_id, dtype=np.int64)
            row_mask = np.zeros(prompt_len + n_new, dtype=np.int64)
            row_ids[:prompt_len], row_mask[:prompt_len] = ids[row, :prompt_len], mask[row, :prompt_len]
            (
                row_ids[prompt_len : prompt_len + len(tokens)],
                row_mask[prompt_len : prompt_len + len(tokens)],
            ) = (
                tokens,
                1,
            )
            self.tokens += len(tokens)
            self.pending[row].append((row_ids, row_mask, float(rewards[row]), infos[row]))
            if dones[row]:  # each message is trained with the return from it to the episode's end
                steps, self.pending[row] = self.pending[row], []
                future = 0.0
                for step_ids, step_mask, reward, info in reversed(steps):
                    future += reward
                    if len(steps) > 1:  # each message has its own context: group by its tokens
                        info = {key: value for key, value in info.items() if key != "prompt_index"}
                    group = self._group(step_ids, step_mask, info)
                    self._finish(Episode(step_ids, step_mask, None, None, future, group), info, tokenizer)

    def _group(self, ids: np.ndarray, mask: np.ndarray, info: dict[str, Any]) -> Any:
        """An episode's prompt group: the env's ``prompt_index``, or the prompt's tokens."""
        group = info.get("prompt_index")
        if group is None:
            group = tuple(ids[: self.prompt_len][mask[: self.prompt_len] == 1].tolist())
        return group

    def _finish(self, episode: Episode, info: dict[str, Any], tokenizer: Any) -> None:
        """Keep a finished episode, and maybe its text among the rollout's samples."""
        prompt_len, ids, mask = self.prompt_len, episode.input_ids, episode.attention_mask
        self.episodes.append(episode)
        self._finished += 1
        slot = len(self.samples)
        if slot >= MAX_SAMPLES:
            slot = self._sample_rng.randrange(self._finished)
        if slot < MAX_SAMPLES:  # reservoir sampling: each finished episode is kept with equal probability
            completion = info.get("completion")
            if completion is None:
                tokens = ids[prompt_len:][mask[prompt_len:] == 1].tolist()
                completion = tokenizer.decode(tokens) if tokenizer is not None else str(tokens)
            sample = (str(info.get("prompt", "")), str(completion))
            if slot == len(self.samples):
                self.samples.append(sample)
            else:
                self.samples[slot] = sample

    # ---- the batch ----------------------------------------------------------------------------------------
    def build(self, device: torch.device | str = "cpu") -> RolloutBatch:
        """Stack the finished episodes into one :class:`RolloutBatch` (call once per rollout)."""
        episodes, width = self.episodes, self.prompt_len + self.max_new_tokens
        ids = np.stack([e.input_ids for e in episodes]) if episodes else np.zeros((0, width), np.int64)
        mask = np.stack([e.attention_mask for e in episodes]) if episodes else np.zeros((0, width), np.int64)
        with_stats = self.has_stats and all(e.logprobs is not None for e in episodes)
        groups: dict[Any, int] = {}
        group_ids = np.array([groups.setdefault(e.group, len(groups)) for e in episodes], dtype=np.int64)
        gen_mask = mask[:, self.prompt_len :].astype(np.float32)  # (E, N)
        token_rewards = np.zeros_like(gen_mask)  # (E, N)
        for row, episode in enumerate(episodes):
            if episode.agent_mask is not None:
                gen_mask[row] *= episode.agent_mask
            if episode.token_rewards is not None:
                token_rewards[row] = episode.token_rewards
            else:
                token_rewards[row, max(int(gen_mask[row].sum()) - 1, 0)] = episode.reward

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, device=device)

        return RolloutBatch(
            input_ids=tensor(ids),
            attention_mask=tensor(mask),
            gen_mask=tensor(gen_mask),
            old_logprobs=tensor(np.stack([e.logprobs for e in episodes])) if with_stats else None,  # type: ignore[misc]
            old_values=tensor(np.stack([e.values for e in episodes])) if with_stats else None,  # type: ignore[misc]
            rewards=tensor(np.array([e.reward for e in episodes], dtype=np.float32)),
            group_ids=tensor(group_ids),
            token_rewards=tensor(token_rewards),
        )


def minibatches(
    count: int, minibatch_size: int, group_ids: torch.Tensor | None = None, shuffle: bool = True
) -> list[torch.Tensor]:
    """Index tensors of the minibatches of one pass over a batch: whole prompt groups, packed up to
    ``minibatch_size`` episodes (a larger group is a minibatch of its own), so that every group's prompt can
    be computed once (:func:`agents.policy.shared_prompt_logits`). Without groups of two or more this is a
    ``randperm`` (or ``arange``) of the ``count`` episodes cut into chunks.

    >>> [m.tolist() for m in minibatches(5, 4, torch.tensor([0, 0, 1, 1, 2]), shuffle=False)]
    [[0, 1, 2, 3], [4]]
    """
    if group_ids is None or len(torch.unique(group_ids)) == count:
        order = torch.randperm(count) if shuffle else torch.arange(count)
        return [order[start : start + minibatch_size] for start in range(0, count, minibatch_size)]
    device = group_ids.device
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    group_order = torch.randperm(len(groups), device=device) if shuffle else torch.arange(len(groups))
    result: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    size = 0
    for group in group_order.tolist():
        members = (inverse == group).nonzero().squeeze(-1)
        if current and size + len(members) > minibatch_size:
            result.append(torch.cat(current))
            current, size = [], 0
        current.append(members)
        size += len(members)
    if current:
        result.append(torch.cat(current))
    return result
