"""Native vectorised token-level conversations: B conversations in one (B, P+N) numpy state."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from textenv.envs.arguments import ChatArguments, check_num_envs
from textenv.envs.chat_core import ChatCore, Conversation
from textenv.envs.chat_env import ChatAttributes
from textenv.envs.core import TokenCore


class TextChatVectorEnv(ChatAttributes, VectorEnv):
    """``num_envs`` copies of :class:`~textenv.envs.TextChatEnv` sharing one tokenizer, task and state array.

    Made by ``gym.make_vec("TextChat-v0", num_envs=B, vectorization_mode="vector_entry_point", **kwargs)``
    with ``TextChatEnv``'s keyword arguments. Each row is a :class:`~textenv.envs.chat_core.Conversation`
    whose arrays are views of the (B, P+N) observation, so a step writes in place and the observation is
    one copy. Autoreset is ``AutoresetMode.SAME_STEP``: a finished row's last observation is in
    ``info["final_obs"]`` and its info (``turns``, ``success``, ...) in ``info["final_info"]``.
    ``reset(seed=s)`` seeds row i with ``s + i`` (so it equals B single envs reset with those seeds);
    ``reset(options={"indices": [...]})`` plays episode ``indices[i]`` in row i. Rows are advanced one after
    the other: a task that raises in row i leaves rows before it stepped (unlike ``TextGen-v0``'s vector env,
    whose batched reward runs before any row changes).

    >>> import gymnasium as gym, numpy as np, textenv
    >>> envs = gym.make_vec("TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point",
    ...                     model="tiny-sp", max_turn_tokens=2, max_turns=1)
    >>> obs, info = envs.reset(seed=0)
    >>> obs["agent_mask"].shape
    (2, 256)
    >>> _ = envs.step(np.array([57, 57]))
    >>> obs, reward, terminated, truncated, info = envs.step(np.array([57, 57]))
    >>> truncated.tolist(), len(info["final_info"]["turns"][0])
    ([True, True], 4)
    """

    metadata = {"render_modes": ["ansi", "human"], "autoreset_mode": AutoresetMode.SAME_STEP}
    state_fields = ("_rngs", "_samplers", "_started")

    def __init__(self, num_envs: int = 1, **kwargs: Any) -> None:
        num_envs = check_num_envs(num_envs)
        self.core = ChatCore(ChatArguments(**kwargs))  # TextChatEnv's keyword arguments, checked once
        self.render_mode = self.core.args.render_mode
        length = self.core.P + self.core.N
        self._setup_token_rows(num_envs, length, len(self.core.task))
        self._input_ids = np.full((self.num_envs, length), self.core.pad_token_id, np.int64)  # (B, P+N)
        self._attention_mask = np.zeros((self.num_envs, length), np.int64)  # (B, P+N)
        self._agent_mask = np.zeros((self.num_envs, length), np.int64)  # (B, P+N)
        self._convs = [
            Conversation(self._input_ids[row], self._attention_mask[row], self._agent_mask[row])
            for row in range(self.num_envs)
        ]
        self._started = False

    @property
    def _conversations(self) -> list[Conversation]:
        return self._convs

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "input_ids": self._input_ids.copy(),
            "attention_mask": self._attention_mask.copy(),
            "agent_mask": self._agent_mask.copy(),
        }

    def _start(self, row: int, index: int | None = None) -> dict[str, Any]:
        if index is None:
            index = self._samplers[row].next(self._rngs[row])
        return self.core.start(self._convs[row], index)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        indices = TokenCore.reset_option(options, "indices")
        if indices is not None:
            if isinstance(indices, (str, bytes)) or len(indices) != self.num_envs:
                raise ValueError(f'options["indices"] must hold one episode index per env ({self.num_envs}).')
            size = len(self.core.task)
            for row, index in enumerate(indices):
                if (
                    not isinstance(index, (int, np.integer))
                    or isinstance(index, bool)
                    or not 0 <= index < size
                ):
                    raise ValueError(f'options["indices"][{row}]={index!r} must be an int in [0, {size}).')
        seeds = TokenCore.row_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0] if seeds is not None and isinstance(seed, (int, np.integer)) else None)
        if seeds is not None:
            for row, row_seed in enumerate(seeds):
                if row_seed is not None:
                    self._rngs[row] = seeding.np_random(row_seed)[0]
                    self._samplers[row].reset()
        infos: dict[str, Any] = {}
        for row in range(self.num_envs):
            infos = self._add_info(
                infos, self._start(row, None if indices is None else int(indices[row])), row
            )
        self._started = True
        return self._obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("step() was called before reset(); call envs.reset() first.")
        tokens = self.core.check_tokens(actions, (self.num_envs,), "TextChat-v0 vector actions")  # (B,)
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: dict[str, Any] = {}
        for row, conv in enumerate(self._convs):
            reward, terminated[row], truncated[row], info = self.core.advance(conv, int(tokens[row]))
            rewards[row] = reward
            if terminated[row] or truncated[row]:
                final_obs = {
                    "input_ids": self._input_ids[row].copy(),
                    "attention_mask": self._attention_mask[row].copy(),
                    "agent_mask": self._agent_mask[row].copy(),
                }
                infos = self._add_info(infos, {"final_obs": final_obs, "final_info": info}, row)
                infos = self._add_info(infos, self._start(row), row)
            elif info:
                infos = self._add_info(infos, info, row)
        if self.render_mode == "human":
            self.render()
        return self._obs(), rewards, terminated, truncated, infos

    def render(self) -> tuple[str, ...] | None:
        """``"ansi"``: each row's conversation as text; ``"human"``: print them."""
        texts = tuple(self.core.transcript(conv) for conv in self._convs)
        if self.render_mode == "human":
            print("\n\n".join(texts))
            return None
        return texts
