"""Sequence-level multi-turn conversations: one whole agent message per step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.envs.arguments import check_num_envs
from textenv.envs.chat_core import Conversation
from textenv.envs.chat_env import ChatAttributes, TextChatEnv
from textenv.envs.core import TokenCore


class TextChatSeqEnv(ChatAttributes, gym.Env):
    """
    ## Description

    The message-level view of :class:`~textenv.envs.TextChatEnv`: each step the agent sends one whole
    message, the task answers, and the observation is the conversation so far. Suited to PPO / REINFORCE
    with ``generate`` (the agents treat every message as a completion of the conversation before it).

    ## Action Space

    ``MultiDiscrete([vocab_size] * max_turn_tokens)``: the message's token ids. It ends at the first
    end-of-turn id (EOS or the template's end marker, kept as the last token); ids after it are ignored.

    ## Observation Space

    ``Dict(input_ids, attention_mask, agent_mask)``, each ``Box(int64, (P+N,))``: the conversation so far
    (what ``TextChat-v0`` holds), left-padded into one window that ends with the agent's generation prompt.
    ``agent_mask`` marks the agent's earlier messages. Overflow drops the oldest whole exchanges after the
    opening, as in ``TextChat-v0``.

    ## Rewards

    The task's reward for each message, on its step.

    ## Episode End

    As ``TextChat-v0``: ``terminated`` when the task is over, ``truncated`` after ``max_turns`` messages or a
    full context. ``info`` carries ``turns``, ``success``, ``prompt`` and ``completion`` at the end.

    ## Arguments

    Those of :class:`~textenv.envs.TextChatEnv`.

    >>> import gymnasium as gym, numpy as np, textenv
    >>> env = gym.make("TextChatSeq-v0", model="tiny-sp", task_kwargs={"high": 3}, max_turn_tokens=4)
    >>> obs, info = env.reset(seed=0)
    >>> tok = env.unwrapped.tokenizer
    >>> message = tok("2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    >>> obs, reward, terminated, truncated, info = env.step(np.array(message + [0] * (4 - len(message))))
    >>> obs["input_ids"].shape, int(obs["agent_mask"].sum()) == len(message)
    ((256,), True)
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(self, **kwargs: Any) -> None:
        self._token_env = TextChatEnv(**kwargs)
        self.core = self._token_env.core
        self.render_mode = self._token_env.render_mode
        self.action_space = spaces.MultiDiscrete(np.full(self.core.T, self.core.vocab_size))
        self.observation_space = self._token_env.observation_space

    @property
    def _conv(self) -> Conversation:
        return self._token_env._conv

    def state_dict(self) -> dict[str, Any]:
        """The episode state (:meth:`TextChatEnv.state_dict`): its token-level env draws and holds it all."""
        return self._token_env.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._token_env.load_state_dict(state)

    def _obs(self) -> dict[str, np.ndarray]:
        conv, length = self._conv, self.core.P + self.core.N
        real = conv.mask == 1
        count = int(real.sum())
        obs = {
            "input_ids": np.full(length, self.core.pad_token_id, np.int64),
            "attention_mask": np.zeros(length, np.int64),
            "agent_mask": np.zeros(length, np.int64),
        }
        obs["input_ids"][length - count :] = conv.ids[real]
        obs["attention_mask"][length - count :] = 1
        obs["agent_mask"][length - count :] = conv.agent[real]
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        _, info = self._token_env.reset(seed=seed, options=options)
        return self._obs(), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._conv.done:
            raise RuntimeError(
                "step() was called after the episode ended (or before the first reset()); call env.reset()."
            )
        tokens = self.core.check_tokens(action, (self.core.T,), "TextChatSeq-v0 action")
        ends = np.flatnonzero(np.isin(tokens, list(self.core.chat.end_ids)))
        message = tokens[: ends[0] + 1] if ends.size else tokens
        result: tuple[float, bool, bool, dict[str, Any]] = (0.0, False, False, {})
        for token in message.tolist():  # the last token ends the turn (end id or the per-turn limit)
            result = self.core.advance(self._conv, int(token))
        reward, terminated, truncated, info = result
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> str | None:
        return self._token_env.render()


class TextChatSeqVectorEnv(ChatAttributes, VectorEnv):
    """``num_envs`` :class:`TextChatSeqEnv` rows sharing one tokenizer and task; one message per row per step.

    ``AutoresetMode.SAME_STEP`` (finished rows restart in the same step; ``info["final_obs"]`` /
    ``info["final_info"]`` hold their end), ``reset(seed=s)`` seeds row i with ``s + i``.

    >>> import gymnasium as gym, numpy as np, textenv
    >>> envs = gym.make_vec("TextChatSeq-v0", num_envs=2, vectorization_mode="vector_entry_point",
    ...                     model="tiny-sp", max_turn_tokens=4, max_turns=1)
    >>> obs, info = envs.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = envs.step(np.full((2, 4), 57))
    >>> truncated.tolist(), obs["input_ids"].shape
    ([True, True], (2, 256))
    """

    metadata = {"render_modes": ["ansi", "human"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, **kwargs: Any) -> None:
        num_envs = check_num_envs(num_envs)
        first = TextChatSeqEnv(**kwargs)
        self.core = first.core
        skip = ("model", "tokenizer", "task", "task_kwargs", "split", "vocab_size")
        shared = {key: value for key, value in kwargs.items() if key not in skip}
        core = self.core  # the other rows share the tokenizer and the task object
        self.envs = [first] + [
            TextChatSeqEnv(tokenizer=core.tokenizer, task=core.task, vocab_size=core.vocab_size, **shared)
            for _ in range(int(num_envs) - 1)
        ]
        self.num_envs = int(num_envs)
        self.render_mode = first.render_mode
        self.single_action_space = first.action_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = first.observation_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._started = False

    def state_dict(self) -> dict[str, Any]:
        """Every row's :meth:`TextChatSeqEnv.state_dict` and whether the rows were reset."""
        return {"envs": [env.state_dict() for env in self.envs], "started": self._started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "envs" not in state or "started" not in state:
            raise ValueError("saved env state lacks 'envs' or 'started'; it comes from another kind of env")
        if len(state["envs"]) != self.num_envs:
            raise ValueError(
                f"saved env state holds {len(state['envs'])} envs, this env {self.num_envs}; make it with "
                "the saved run's num_envs"
            )
        for env, saved in zip(self.envs, state["envs"], strict=True):
            env.load_state_dict(saved)
        self._started = bool(state["started"])

    def _stack(self, observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        indices = TokenCore.reset_option(options, "indices")
        if indices is not None and (isinstance(indices, (str, bytes)) or len(indices) != self.num_envs):
            raise ValueError(f'options["indices"] must hold one episode index per env ({self.num_envs}).')
        seeds = TokenCore.row_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0] if seeds is not None and isinstance(seed, (int, np.integer)) else None)
        observations: list[dict[str, np.ndarray]] = []
        infos: dict[str, Any] = {}
        for row, env in enumerate(self.envs):
            row_options = None if indices is None else {"index": indices[row]}
            obs, info = env.reset(seed=None if seeds is None else seeds[row], options=row_options)
            observations.append(obs)
            infos = self._add_info(infos, info, row)
        self._started = True
        return self._stack(observations), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("step() was called before reset(); call envs.reset() first.")
        actions = self.core.check_tokens(
            actions, (self.num_envs, self.core.T), "TextChatSeq-v0 vector actions"
        )
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        observations: list[dict[str, np.ndarray]] = []
        infos: dict[str, Any] = {}
        for row, env in enumerate(self.envs):
            obs, rewards[row], terminated[row], truncated[row], info = env.step(actions[row])
            if terminated[row] or truncated[row]:
                infos = self._add_info(infos, {"final_obs": obs, "final_info": info}, row)
                obs, info = env.reset()
            observations.append(obs)
            if info:
                infos = self._add_info(infos, info, row)
        return self._stack(observations), rewards, terminated, truncated, infos

    def render(self) -> tuple[str, ...] | None:
        texts = tuple(env._token_env.core.transcript(env._conv) for env in self.envs)
        if self.render_mode == "human":
            print("\n\n".join(texts))
            return None
        return texts
