"""Token-level multi-turn conversations: one agent token per step, the other party's turns in between."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from textenv.chat_tasks import ChatTask
from textenv.envs.arguments import ChatArguments
from textenv.envs.chat_core import ChatCore, Conversation
from textenv.envs.core import PromptSampler, TokenAttributes, TokenCore
from textenv.envs.state import check_conversation, decode_state, encode_state


class ChatAttributes(TokenAttributes):
    """The core's settings as env attributes (what ``agents.layout`` reads through SB3's ``get_attr``), and
    the episode state (:meth:`state_dict`) an agent's checkpoint stores for an exact resume."""

    core: ChatCore
    state_fields: tuple[str, ...] = ()
    """The attributes that hold episode state besides the conversations: RNGs, prompt samplers, flags."""

    @property
    def _conversations(self) -> list[Conversation]:
        return []

    def state_dict(self) -> dict[str, Any]:
        """The episode state as JSON-able data: RNG states, sampler positions and the running conversations
        (tokens, turns, the agent's messages; the task's dialogue is rebuilt from them on load)."""
        state = {name: encode_state(getattr(self, name)) for name in self.state_fields}
        return state | {"conversations": [self.core.conversation_state(c) for c in self._conversations]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from an env made with the same arguments). A value of
        another type or outside this env's sizes raises ``ValueError`` naming its key, and leaves the env as
        it was."""
        if not isinstance(state, dict):
            raise ValueError(f"saved env state is {type(state).__name__}; expected the dict of state_dict()")
        missing = [name for name in (*self.state_fields, "conversations") if name not in state]
        if missing:
            raise ValueError(f"saved env state lacks {missing}; it comes from another kind of env")
        conversations, saved = self._conversations, state["conversations"]
        if not isinstance(saved, list) or len(saved) != len(conversations):
            raise ValueError(
                f"saved env state holds {len(saved) if isinstance(saved, list) else 'no'} conversations, "
                f"this env "
                f"{len(conversations)}; make it with the saved run's num_envs"
            )
        core = self.core
        for row, saved in enumerate(state["conversations"]):
            try:
                check_conversation(saved, core.P, core.vocab_size, len(core.task), core.max_turns)
            except (KeyError, ValueError) as error:
                raise ValueError(f"saved env state 'conversations'[{row}]: {error}") from None
        before = self.state_dict()
        try:
            self._restore(state)
        except ValueError:
            self._restore(before)
            raise

    def _restore(self, state: dict[str, Any]) -> None:
        for name in self.state_fields:
            current, saved = getattr(self, name), state[name]
            if name == "_np_random" and (saved is None or current is None):  # not seeded yet on one side
                current = None if saved is None else np.random.default_rng()
                if saved is None:
                    setattr(self, name, None)
                    continue
            setattr(self, name, decode_state(saved, current, name))
        for conv, saved in zip(self._conversations, state["conversations"], strict=True):
            self.core.restore_conversation(conv, saved)

    @property
    def task(self) -> ChatTask:
        return self.core.task

    @property
    def max_prompt_tokens(self) -> int:
        return self.core.P

    @property
    def max_new_tokens(self) -> int:
        return self.core.N

    @property
    def max_turn_tokens(self) -> int:
        return self.core.T

    @property
    def max_turns(self) -> int:
        return self.core.max_turns

    @property
    def end_of_turn_ids(self) -> set[int]:
        return set(self.core.chat.end_ids)


class TextChatEnv(ChatAttributes, gym.Env):
    """
    ## Description

    A conversation as a sequential decision problem. The agent writes its turn one token per step; when
    the turn ends (an end-of-turn token, i.e. EOS or the chat template's end marker such as
    ``<|im_end|>``, or ``max_turn_tokens`` tokens) the other party answers (a scripted host, a tool, a
    simulated user: the ``task``), its turn is appended rendered with the tokenizer's chat template, and the
    agent goes on. Tokenizers without a chat template use ``textenv.chat_tasks.FALLBACK_CHAT_TEMPLATE``
    (``Role: content</s>`` lines, then ``Assistant:``).

    ## Action Space

    ``Discrete(vocab_size)``: the id of the agent's next token.

    ## Observation Space

    ``Dict(input_ids, attention_mask, agent_mask)``, each ``Box(int64, (P+N,))`` with
    ``P = max_prompt_tokens`` and ``N = max_new_tokens``. The P slots hold the system prompt and the first
    user message (with the agent's generation prompt), left-padded (truncated from the left if longer).
    The N slots hold everything after it, agent and other-party tokens alike, right-padded.
    ``agent_mask`` is 1 on the tokens the agent wrote: only those are trained.

    **Context overflow**: before a reply is appended, the oldest whole exchanges (an agent turn and the
    reply to it) are dropped from the N slots until the reply and a full agent turn fit; the system prompt
    and the opening message (the P slots) are always kept. Such a step reports ``info["dropped_tokens"]``
    (how far the kept tokens moved left). If even that does not make room, the episode is truncated with
    ``info["context_full"]``.

    ## Rewards

    Per turn: the task's reward for each agent message arrives on the step that ends the turn (e.g. the
    guessing game pays at the end, the user simulator every turn); 0 on all other steps.

    ## Episode End

    ``terminated`` when the task says it is over (solved, or a final answer given); ``truncated`` after
    ``max_turns`` agent turns or when the context is full. The final ``info`` carries ``turns`` (the
    conversation as ``{"role", "content"}`` dicts, system prompt first), ``success``, ``agent_turns``,
    ``prompt`` (the opening), ``completion`` (the rest as text) and ``prompt_index``.

    ## Arguments

    - ``model`` (a textenv model name or local HF directory; only the tokenizer is loaded) or ``tokenizer``.
    - ``task``: ``"guess"`` (default), ``"calculator"``, ``"usersim"`` or a ``textenv.chat_tasks.ChatTask``
      (e.g. a ``FunctionTask``); ``task_kwargs`` for a named task; ``split`` ``"train"``, ``"validation"``
      (to choose settings on) or ``"test"``.
    - ``max_prompt_tokens=96``, ``max_new_tokens=160``, ``max_turn_tokens=16``, ``max_turns=6``,
      ``group_size=1`` (each episode index k times in a row, for RLOO), ``vocab_size=None``,
      ``render_mode`` (``"ansi"`` or ``"human"``).
    - ``reset(options={"index": i})`` plays episode i of the task's split.
    - Every argument is a keyword argument, a field of :class:`~textenv.envs.arguments.ChatArguments` (one
      signature for the chat envs), checked once when the env is made (``env.unwrapped.core.args`` holds
      the env's).

    >>> import gymnasium as gym, textenv
    >>> env = gym.make("TextChat-v0", model="tiny-sp", task_kwargs={"high": 3}, max_turn_tokens=4)
    >>> obs, info = env.reset(seed=0, options={"index": 0})
    >>> sorted(obs), info["prompt"]
    (['agent_mask', 'attention_mask', 'input_ids'], "I'm thinking of a whole number from 1 to 3. Guess it!")
    >>> for token in env.unwrapped.tokenizer("2", add_special_tokens=False)["input_ids"]:
    ...     obs, reward, terminated, truncated, info = env.step(token)
    >>> obs, reward, terminated, truncated, info = env.step(env.unwrapped.eos_token_id)  # the turn ends
    >>> env.render().splitlines()[-1], terminated
    ('user: Higher.', False)
    >>> int(obs["agent_mask"].sum()) < int(obs["attention_mask"][96:].sum())  # the host's tokens follow
    True
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}
    state_fields = ("_np_random", "_sampler")

    def __init__(self, **kwargs: Any) -> None:
        self.core = ChatCore(ChatArguments(**kwargs))  # the keyword arguments below, checked once
        self.render_mode = self.core.args.render_mode
        length = self.core.P + self.core.N
        self.action_space = spaces.Discrete(self.core.vocab_size)
        self.observation_space = self.core.observation_space(length)
        self._sampler = PromptSampler(len(self.core.task), self.core.group_size)
        self._conv = Conversation(
            np.full(length, self.core.pad_token_id, np.int64),
            np.zeros(length, np.int64),
            np.zeros(length, np.int64),
        )

    @property
    def _conversations(self) -> list[Conversation]:
        return [self._conv]

    def _obs(self) -> dict[str, np.ndarray]:
        conv = self._conv
        return {
            "input_ids": conv.ids.copy(),
            "attention_mask": conv.mask.copy(),
            "agent_mask": conv.agent.copy(),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        index = _reset_index(options, len(self.core.task))
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.reset()
        info = self.core.start(self._conv, self._sampler.next(self.np_random) if index is None else index)
        if self.render_mode == "human":
            self.render()
        return self._obs(), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._conv.done:
            raise RuntimeError(
                "step() was called after the episode ended (or before the first reset()); call env.reset()."
            )
        token = int(self.core.check_tokens(action, (), "TextChat-v0 action"))
        reward, terminated, truncated, info = self.core.advance(self._conv, token)
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> str | None:
        """``"ansi"``: the conversation so far as text; ``"human"``: print it."""
        text = self.core.transcript(self._conv)
        if self.render_mode == "human":
            print(text)
            return None
        return text


def _reset_index(options: Any, size: int, key: str = "index") -> int | None:
    """``options[key]`` of ``reset``, checked (None when absent)."""
    value = TokenCore.reset_option(options, key)
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < size:
        raise ValueError(f'options["{key}"]={value!r} must be an int episode index in [0, {size}).')
    return int(value)
