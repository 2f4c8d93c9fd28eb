"""Native vectorised token-level text generation: B sequences stepped at once with numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from textenv.envs.arguments import TextGenArguments, check_num_envs
from textenv.envs.core import CoreAttributes
from textenv.envs.state import check_indices, check_layout


class TextGenVectorEnv(CoreAttributes, VectorEnv):
    """``num_envs`` copies of :class:`~textenv.envs.TextGenEnv` in one numpy state (same contract per row).

    Made by ``gym.make_vec("TextGen-v0", num_envs=B, vectorization_mode="vector_entry_point", **kwargs)``
    with the same keyword arguments as ``TextGenEnv``. A step writes B tokens with array indexing; only rows
    that finish are decoded (one ``batch_decode``) and scored (one ``reward_fn`` call).

    Autoreset is ``AutoresetMode.SAME_STEP``, as ``SyncVectorEnv`` does it: a row that ends is reset within
    the same step, so the returned observation already shows the next prompt. The finished row's last
    observation is in ``info["final_obs"][i]`` (object array, ``info["_final_obs"]`` marks the rows) and its
    info (``prompt``, ``completion``, ``reference``) in ``info["final_info"]`` (arrays with ``_``-masks). The
    new episodes' ``prompt``/``reference`` appear at the top level of ``info`` for the reset rows.
    ``reset(seed=s)`` seeds row i with ``s + i``, so results match B single envs reset with those seeds.
    ``reset(options={"indices": [...]})`` starts row i on dataset example ``indices[i]`` (one index per row,
    each in ``[0, len(dataset))``). Finished rows are scored before any row changes, so a ``reward_fn`` that
    raises leaves every row as it was before the step, and the step can be taken again.

    >>> import gymnasium as gym, textenv
    >>> envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point",
    ...                     model="tiny-sp", dataset=["Hello", "Good day"], max_new_tokens=2)
    >>> obs, info = envs.reset(seed=0)
    >>> obs["input_ids"].shape
    (2, 66)
    >>> _ = envs.step(np.array([5, 6]))
    >>> obs, reward, terminated, truncated, info = envs.step(np.array([7, envs.unwrapped.eos_token_id]))
    >>> terminated.tolist(), truncated.tolist(), info["_final_obs"].tolist()
    ([False, True], [True, False], [True, True])
    """

    metadata = {"render_modes": ["ansi", "human"], "autoreset_mode": AutoresetMode.SAME_STEP}

    state_fields = ("_rngs", "_samplers", "_input_ids", "_attention_mask", "_indices", "_lengths", "_started")

    def __init__(self, num_envs: int = 1, **kwargs: Any) -> None:
        num_envs = check_num_envs(num_envs)
        self._setup_core(TextGenArguments(**kwargs))  # TextGenEnv's keyword arguments, checked once
        P, N = self.max_prompt_tokens, self.max_new_tokens
        self._setup_token_rows(num_envs, P + N, len(self.dataset))
        self._input_ids = np.full((num_envs, P + N), self.pad_token_id, np.int64)  # (B, P+N)
        self._attention_mask = np.zeros((num_envs, P + N), np.int64)  # (B, P+N)
        self._indices = np.zeros(num_envs, np.int64)  # dataset index per row
        self._lengths = np.zeros(num_envs, np.int64)  # tokens generated per row
        self._rows = np.arange(num_envs)
        self._started = False

    def _check_state(self) -> None:
        names = ("_input_ids", "_attention_mask", "_lengths")
        check_layout(
            self._input_ids,
            self._attention_mask,
            self._lengths,
            self.max_prompt_tokens,
            self.vocab_size,
            names,
        )
        check_indices("_indices", self._indices, len(self.dataset))
        if (self._lengths >= self.max_new_tokens).any():  # a finished row restarts in the same step
            raise ValueError(
                "saved env state '_lengths' holds max_new_tokens: no row is that far in a vector env"
            )

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._input_ids.copy(), "attention_mask": self._attention_mask.copy()}

    def _start_episode(self, row: int, index: int | None = None) -> dict[str, Any]:
        self._indices[row] = self._samplers[row].next(self._rngs[row]) if index is None else index
        prompt_ids, prompt_mask = self.core.encode_prompt(int(self._indices[row]))
        P = self.max_prompt_tokens
        self._input_ids[row, :P], self._input_ids[row, P:] = prompt_ids, self.pad_token_id
        self._attention_mask[row, :P], self._attention_mask[row, P:] = prompt_mask, 0
        self._lengths[row] = 0
        return self.core.prompt_info(int(self._indices[row]))

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every row. ``seed`` is an int (row i gets ``seed + i``) or one seed per row.
        ``options={"indices": [...]}`` starts row i on dataset example ``indices[i]``."""
        indices = self.core.check_indices(self.core.reset_option(options, "indices"), self.num_envs)
        seeds = self.core.row_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0] if seeds is not None and isinstance(seed, (int, np.integer)) else None)
        if seeds is not None:
            for row, row_seed in enumerate(seeds):
                if row_seed is not None:
                    self._rngs[row] = seeding.np_random(row_seed)[0]
                    self._samplers[row].reset()
        infos: dict[str, Any] = {}
        for row in range(self.num_envs):
            index = None if indices is None else indices[row]
            infos = self._add_info(infos, self._start_episode(row, index), row)
        self._started = True
        return self._obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("step() was called before reset(); call envs.reset() first.")
        tokens = self.core.check_tokens(actions, (self.num_envs,), "TextGen-v0 vector actions")  # (B,)
        P = self.max_prompt_tokens
        positions = P + self._lengths  # (B,)
        terminated = self.core.is_stop(tokens)  # (B,): EOS or a stop token
        truncated = ~terminated & (self._lengths + 1 >= self.max_new_tokens)  # (B,)
        rewards = np.zeros(self.num_envs, np.float32)
        done_rows = np.flatnonzero(terminated | truncated)
        completions: list[str] = []
        indices = [int(self._indices[row]) for row in done_rows]
        if done_rows.size:  # score before writing anything: if reward_fn raises, no row has changed
            completions = self.core.decode(
                [
                    self.core.completion_ids(np.append(self._input_ids[row, P : positions[row]], tokens[row]))
                    for row in done_rows
                ]
            )
            rewards[done_rows] = self.core.score(indices, completions)
        self._input_ids[self._rows, positions] = tokens
        self._attention_mask[self._rows, positions] = 1
        self._lengths += 1
        infos: dict[str, Any] = {}
        for row, index, completion in zip(done_rows.tolist(), indices, completions, strict=True):
            final_obs = {
                "input_ids": self._input_ids[row].copy(),
                "attention_mask": self._attention_mask[row].copy(),
            }
            infos = self._add_info(
                infos,
                {"final_obs": final_obs, "final_info": self.core.final_info(index, completion)},
                row,
            )
            infos = self._add_info(infos, self._start_episode(row), row)
        if self.render_mode == "human":
            self.render()
        return self._obs(), rewards, terminated, truncated, infos

    def render(self) -> tuple[str, ...] | None:
        """``"ansi"``: one text (prompt + completion so far) per row; ``"human"``: print them."""
        P = self.max_prompt_tokens
        texts = self.core.decode(
            [
                self.core.completion_ids(self._input_ids[r, P : P + self._lengths[r]])
                for r in range(self.num_envs)
            ]
        )
        rendered = tuple(self.core.render_text(int(i), t) for i, t in zip(self._indices, texts, strict=False))
        if self.render_mode == "human":
            print("\n".join(rendered))
            return None
        return rendered
