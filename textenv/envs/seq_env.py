"""Sequence-level text generation: one whole completion per step (a contextual bandit)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.envs.arguments import TextGenArguments, check_num_envs
from textenv.envs.core import CoreAttributes, PromptEpisodes, PromptSampler, TextGenCore
from textenv.envs.state import check_indices


class TextGenSeqEnv(PromptEpisodes):
    """
    ## Description

    The sequence-level view of :class:`~textenv.envs.TextGenEnv`: the agent sees a prompt and answers with
    a whole completion in one step, which is scored at once. Suited to GRPO/RLOO-style and bandit methods.

    ## Action Space

    ``MultiDiscrete([vocab_size] * N)`` with ``N = max_new_tokens``: the completion's token ids. The
    completion ends at the first ``eos_token_id`` or stop token (``stop_token_ids``, left out of the text, as
    EOS is); ids after it are ignored (fill them with anything).

    ## Observation Space

    ``Dict(input_ids=Box(int64, (P,)), attention_mask=Box(int64, (P,)))``: the prompt part of TextGen-v0's
    observation, left-padded to ``P = max_prompt_tokens`` (truncated from the left if longer).

    ## Rewards

    ``reward_fn([prompt], [completion], [reference])`` for the single step.

    ## Episode End

    Always ``terminated`` after one step. ``info`` carries ``prompt``, ``completion`` and ``reference``.

    ## Arguments

    Same as :class:`~textenv.envs.TextGenEnv`: ``model`` or ``tokenizer``, ``task`` (+ ``split``) or
    ``dataset``, ``reward_fn``, ``max_prompt_tokens=64``, ``max_new_tokens=48``, ``render_mode``,
    ``group_size=1``, ``vocab_size=None``, ``stop_token_ids=None``, ``stop_strings=None``.

    >>> import gymnasium as gym, numpy as np, textenv
    >>> env = gym.make("TextGenSeq-v0", model="tiny-sp", dataset=["Once upon a time"], max_new_tokens=8)
    >>> obs, info = env.reset(seed=0)
    >>> tok = env.unwrapped.tokenizer
    >>> ids = tok(" there was", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    >>> action = np.array(ids + [0] * (8 - len(ids)))
    >>> obs, reward, terminated, truncated, info = env.step(action)
    >>> terminated, info["completion"]
    (True, 'there was')
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    state_fields = ("_np_random", "_sampler", "_index", "_completion", "_done")

    def __init__(self, **kwargs: Any) -> None:
        self._setup_core(TextGenArguments(**kwargs))  # TextGenEnv's keyword arguments, checked once
        self._start_episodes()

    @classmethod
    def sharing_core(cls, core: TextGenCore) -> TextGenSeqEnv:
        """Another env on ``core`` (the same tokenizer, dataset, reward function and prompt cache) with its
        own prompt sampler and RNG: the rows of :class:`TextGenSeqVectorEnv`."""
        env = cls.__new__(cls)
        env._setup_shared_core(core)
        env._start_episodes()
        return env

    def _start_episodes(self) -> None:
        """The spaces and the episode state before the first ``reset``."""
        self.action_space = spaces.MultiDiscrete(np.full(self.max_new_tokens, self.core.vocab_size))
        self.observation_space = self.core.observation_space(self.max_prompt_tokens)
        self._sampler = PromptSampler(len(self.dataset), self.group_size)
        self._index = 0
        self._completion = ""
        self._done = True

    def _check_state(self) -> None:
        check_indices("_index", self._index, len(self.dataset))

    def _obs(self) -> dict[str, np.ndarray]:
        input_ids, attention_mask = self.core.encode_prompt(self._index)
        return {"input_ids": input_ids.copy(), "attention_mask": attention_mask.copy()}

    def _begin(self) -> None:  # reset(): a prompt, no completion yet
        self._completion, self._done = "", False

    def _act(self, action: Any) -> tuple[float, bool, bool, dict[str, Any]]:  # step(): the whole completion
        tokens = self.core.check_tokens(action, (self.max_new_tokens,), "TextGenSeq-v0 action")
        completion = self.core.decode([self.core.completion_ids(tokens)])[0]
        reward = float(self.core.score([self._index], [completion])[0])  # may raise: nothing changed yet
        self._completion, self._done = completion, True
        return reward, True, False, self.core.final_info(self._index, self._completion)

    def render(self) -> str | None:
        """``"ansi"``: return prompt + completion (once stepped) as text; ``"human"``: print it."""
        text = self.core.render_text(self._index, self._completion)
        if self.render_mode == "human":
            print(text)
            return None
        return text


class TextGenSeqVectorEnv(CoreAttributes, VectorEnv):
    """``num_envs`` sequence-level envs at once: B completions per step, scored in one ``reward_fn`` call.

    Every row ends every step, so with ``AutoresetMode.SAME_STEP`` each step returns the next prompts, the
    answered prompts in ``info["final_obs"]`` and ``prompt``/``completion``/``reference`` in
    ``info["final_info"]``. ``reset(seed=s)`` seeds row i with ``s + i``.

    >>> import gymnasium as gym, numpy as np, textenv
    >>> envs = gym.make_vec("TextGenSeq-v0", num_envs=3, vectorization_mode="vector_entry_point",
    ...                     model="tiny-sp", dataset=["Hello", "Good day"], max_new_tokens=4)
    >>> obs, info = envs.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = envs.step(np.zeros((3, 4), dtype=np.int64))
    >>> obs["input_ids"].shape, terminated.tolist(), len(info["final_info"]["completion"])
    ((3, 64), [True, True, True], 3)
    """

    metadata = {"render_modes": ["ansi", "human"], "autoreset_mode": AutoresetMode.SAME_STEP}

    state_fields = ("envs", "_started")

    def __init__(self, num_envs: int = 1, **kwargs: Any) -> None:
        num_envs = check_num_envs(num_envs)
        first = TextGenSeqEnv(**kwargs)
        self.core = first.core  # the rows share the tokenizer, dataset and prompt cache
        self.envs = [first] + [TextGenSeqEnv.sharing_core(self.core) for _ in range(num_envs - 1)]
        self.num_envs = num_envs
        self.render_mode = self.envs[0].render_mode
        self.single_action_space = self.envs[0].action_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = self.envs[0].observation_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._started = False

    def _obs(self) -> dict[str, np.ndarray]:
        prompts = [self.core.encode_prompt(env._index) for env in self.envs]
        return {
            "input_ids": np.stack([p[0] for p in prompts]),
            "attention_mask": np.stack([p[1] for p in prompts]),
        }

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        indices = self.core.check_indices(self.core.reset_option(options, "indices"), self.num_envs)
        seeds = self.core.row_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0] if seeds is not None and isinstance(seed, (int, np.integer)) else None)
        infos: dict[str, Any] = {}
        for row, env in enumerate(self.envs):
            row_options = None if indices is None else {"index": indices[row]}
            _, info = env.reset(seed=None if seeds is None else seeds[row], options=row_options)
            infos = self._add_info(infos, info, row)
        self._started = True
        return self._obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("step() was called before reset(); call envs.reset() first.")
        tokens = self.core.check_tokens(
            actions, (self.num_envs, self.max_new_tokens), "TextGenSeq-v0 vector actions"
        )
        completions = self.core.decode([self.core.completion_ids(row) for row in tokens])
        indices = [env._index for env in self.envs]
        rewards = self.core.score(indices, completions)
        final_obs = self._obs()
        infos: dict[str, Any] = {}
        for row, env in enumerate(self.envs):
            obs = {key: value[row] for key, value in final_obs.items()}
            infos = self._add_info(
                infos,
                {"final_obs": obs, "final_info": self.core.final_info(indices[row], completions[row])},
                row,
            )
            _, info = env.reset()
            infos = self._add_info(infos, info, row)
        done = np.ones(self.num_envs, dtype=bool)
        return self._obs(), rewards, done, ~done, infos

    def render(self) -> tuple[str, ...] | None:
        texts = tuple(self.core.render_text(env._index, env._completion) for env in self.envs)
        if self.render_mode == "human":
            print("\n".join(texts))
            return None
        return texts
