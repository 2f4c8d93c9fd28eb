"""What the multi-turn envs share: chat-template rendering into token ids, and one conversation's state.

:class:`ChatCore` resolves the arguments of ``TextChat-v0`` / ``TextChatSeq-v0`` (tokenizer, task, sizes),
builds the spaces and runs the turn logic on a :class:`Conversation`, whose arrays are views into the env's
observation (one row of a vector env's (B, P+N) arrays, or a single env's (P+N,) ones).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from rewards.validation import check_scores
from textenv.chat_tasks import ChatTask, Dialogue, Reply, load_chat_task, render_chat
from textenv.envs.core import TextGenCore, _model_vocab_size, check_sequence_size
from textenv.models import DEFAULT_MODEL, load_tokenizer

SENTINEL = "\u2063AGENT\u2063"  # stands for the agent's message while the template is rendered
CONVERSATION_ARRAYS = ("ids", "mask", "agent")
"""The (P+N,) arrays of a :class:`Conversation`, saved as lists."""
CONVERSATION_FIELDS = (
    "index", "turns", "length", "turn_start", "exchanges", "messages", "agent_turns", "success", "done"
)  # fmt: skip
"""Its other state: everything but the dialogue, which is rebuilt from ``index`` and ``messages``."""


class ChatTokens:
    """Token ids of a conversation's pieces under the tokenizer's chat template.

    The opening (system prompt and first user message, then the generation prompt) is rendered whole. An
    other-party turn is the text the template puts after the agent's message: the end of the agent's turn
    (left out when the agent wrote the end-of-turn token itself), the new message and the next generation
    prompt. The agent's own tokens are never re-tokenized.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        closed = self._after_agent([])
        self.turn_end_text = closed
        suffix_ids = tokenizer(closed, add_special_tokens=False)["input_ids"] if closed else []
        special = set(getattr(tokenizer, "all_special_ids", []))
        self.turn_end_id: int | None = suffix_ids[0] if suffix_ids and suffix_ids[0] in special else None
        self.end_ids = {int(tokenizer.eos_token_id)} | (
            {self.turn_end_id} if self.turn_end_id is not None else set()
        )
        self._end_token_text = tokenizer.decode([self.turn_end_id]) if self.turn_end_id is not None else ""

    def _after_agent(self, more: list[dict[str, str]]) -> str:
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}, *more]
        text = render_chat(self.tokenizer, messages, add_generation_prompt=bool(more))
        return text[text.index(SENTINEL) + len(SENTINEL) :]

    def opening_ids(self, system_prompt: str, opening: str) -> list[int]:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": opening}]
        text = render_chat(self.tokenizer, messages, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reply_ids(self, role: str, content: str, agent_closed: bool) -> list[int]:
        """The ids after an agent message: close its turn (unless ``agent_closed``), ``content`` as a
        ``role`` turn, and the generation prompt of the agent's next turn."""
        text = self._after_agent([{"role": role, "content": content}])
        if agent_closed and self._end_token_text and text.startswith(self._end_token_text):
            text = text[len(self._end_token_text) :]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Conversation:
    """One episode in the observation layout: ``ids``, ``mask`` and ``agent`` are (P+N,) views."""

    ids: np.ndarray
    mask: np.ndarray
    agent: np.ndarray
    index: int = 0
    dialogue: Dialogue | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    length: int = 0  # real tokens in the N region
    turn_start: int = 0  # N-region position where the agent's current turn began
    exchanges: list[int] = field(default_factory=list)  # N-region end of each finished exchange
    messages: list[str] = field(default_factory=list)  # the agent's finished messages, as the task read them
    agent_turns: int = 0
    success: bool = False
    done: bool = True


class ChatCore:
    """Settings, spaces and turn logic shared by the chat envs; see :class:`~textenv.envs.TextChatEnv`."""

    def __init__(
        self,
        model: str | Path | None,
        tokenizer: Any | None,
        task: str | ChatTask,
        task_kwargs: dict[str, Any] | None,
        split: str,
        max_prompt_tokens: int,
        max_new_tokens: int,
        max_turn_tokens: int,
        max_turns: int,
        group_size: int,
        vocab_size: int | None,
    ) -> None:
        for name, value in [
            ("max_prompt_tokens", max_prompt_tokens),
            ("max_new_tokens", max_new_tokens),
            ("max_turn_tokens", max_turn_tokens),
            ("max_turns", max_turns),
            ("group_size", group_size),
        ]:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int, e.g. {name}=8.")
        check_sequence_size(max_prompt_tokens, max_new_tokens)
        if max_turn_tokens > max_new_tokens:
            raise ValueError(
                f"max_turn_tokens={max_turn_tokens} exceeds max_new_tokens={max_new_tokens} (the slots "
                "after the opening): raise max_new_tokens or lower max_turn_tokens."
            )
        if model is not None and tokenizer is not None:
            raise ValueError("Pass either model= (a name or path) or tokenizer=, not both.")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model= takes a model name or a local directory, got {type(model).__name__}.")
        if tokenizer is None:
            model = DEFAULT_MODEL if model is None else model
            tokenizer = load_tokenizer(model)
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no eos_token; set tokenizer.eos_token before making the env.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.task = load_chat_task(task, split, **(task_kwargs or {}))
        self.chat = ChatTokens(tokenizer)
        self.P, self.N, self.T = int(max_prompt_tokens), int(max_new_tokens), int(max_turn_tokens)
        self.max_turns, self.group_size = int(max_turns), int(group_size)
        self.eos_token_id, self.pad_token_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
        model_vocab = _model_vocab_size(model) if model is not None else None
        if vocab_size is not None and vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size={vocab_size} must be >= len(tokenizer) = {len(tokenizer)}.")
        self.vocab_size = int(vocab_size or max(len(tokenizer), model_vocab or 0))
        self._opening_cache: dict[int, list[int]] = {}
        self.reward_seconds = 0.0  # time in the task's replies (its rewards), for the agents' time breakdown

    def observation_space(self, length: int) -> spaces.Dict:
        box = spaces.Box(low=0, high=self.vocab_size - 1, shape=(length,), dtype=np.int64)
        flag = spaces.Box(low=0, high=1, shape=(length,), dtype=np.int64)
        return spaces.Dict({"input_ids": box, "attention_mask": flag, "agent_mask": flag})

    def check_tokens(self, action: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        return TextGenCore.check_tokens(self, action, shape, what)  # type: ignore[arg-type]

    # ---- episodes -----------------------------------------------------------------------------------------
    def start(self, conv: Conversation, index: int) -> dict[str, Any]:
        """Open episode ``index`` in ``conv``: the opening left-padded into the P slots (its last P tokens
        if longer), the N slots empty. Returns the reset info."""
        dialogue = self.task.start(index)
        if index not in self._opening_cache:
            self._opening_cache[index] = self.chat.opening_ids(self.task.system_prompt, dialogue.opening)
        ids = self._opening_cache[index][-self.P :]
        P, pad = self.P, self.P - len(ids)
        conv.ids[:], conv.mask[:], conv.agent[:] = self.pad_token_id, 0, 0
        conv.ids[pad:P], conv.mask[pad:P] = ids, 1
        conv.index, conv.dialogue, conv.length, conv.turn_start = index, dialogue, 0, 0
        conv.exchanges, conv.messages, conv.agent_turns, conv.success, conv.done = [], [], 0, False, False
        conv.turns = [
            {"role": "system", "content": self.task.system_prompt},
            {"role": "user", "content": dialogue.opening},
        ]
        return {"prompt": dialogue.opening, "prompt_index": index, "turns": list(conv.turns)}

    def advance(self, conv: Conversation, token: int) -> tuple[float, bool, bool, dict[str, Any]]:
        """Write one agent token; at the end of its turn get the other party's reply and append it.

        The reply is computed before anything is written, so a task that raises leaves ``conv`` as it was.
        """
        assert conv.dialogue is not None and not conv.done
        P, start = self.P, conv.turn_start
        turn = np.append(conv.ids[P + start : P + conv.length], token)
        if token not in self.chat.end_ids and len(turn) < self.T:
            self._write(conv, [token], agent=1)
            return 0.0, False, False, {}
        message = self.tokenizer.decode(turn.tolist(), skip_special_tokens=True).strip()
        start_time = time.perf_counter()
        try:
            reply = conv.dialogue.respond(message)
        except Exception as error:  # a bug in the task's own code: say whose, on which message
            if sys.version_info >= (3, 11):  # exception notes
                task = type(self.task).__name__
                error.add_note(f"raised by the chat task {task} on the message {message[:80]!r}")
            raise
        self.reward_seconds += time.perf_counter() - start_time
        reward = self.check_reply(reply)
        self._write(conv, [token], agent=1)
        conv.messages.append(message)
        conv.turns.append({"role": "assistant", "content": message})
        if reply.content is not None:
            conv.turns.append({"role": reply.role, "content": reply.content})
        conv.agent_turns += 1
        conv.success = reply.success
        terminated, truncated, info = reply.done, False, {}
        if not terminated and conv.agent_turns >= self.max_turns:
            truncated = True
        elif not terminated:
            ids = self.chat.reply_ids(reply.role, reply.content or "", token == self.chat.turn_end_id)
            dropped = self._make_room(conv, len(ids) + self.T)
            if dropped:
                info["dropped_tokens"] = dropped
            if self.N - conv.length < len(ids) + self.T:
                truncated, info["context_full"] = True, True
            else:
                self._write(conv, ids, agent=0)
                conv.exchanges.append(conv.length)
                conv.turn_start = conv.length
        if terminated or truncated:
            conv.done = True
            info |= self.final_info(conv)
        return reward, bool(terminated), truncated, info

    def check_reply(self, reply: Any) -> float:
        """The reward of the task's ``reply``, refused like a reward function's scores (rewards.check_scores:
        a real, finite number within the float32 range), naming the task; its content must be text or None."""
        name = f"the chat task {type(self.task).__name__} (Reply.reward)"
        if not isinstance(reply, Reply):
            raise TypeError(f"the task's respond() returned {type(reply).__name__}, not a textenv Reply.")
        reward = reply.reward
        if not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
            raise TypeError(f"{name} is {reply.reward!r} ({type(reply.reward).__name__}); give a float")
        if reply.content is not None and not isinstance(reply.content, str):
            raise TypeError(
                f"the chat task {type(self.task).__name__} replied with {type(reply.content).__name__} "
                "content; give a str, or None to end the conversation"
            )
        check_scores([reply.reward], 1, name)
        return float(reply.reward)

    def _write(self, conv: Conversation, ids: list[int], agent: int) -> None:
        start, end = self.P + conv.length, self.P + conv.length + len(ids)
        conv.ids[start:end], conv.mask[start:end], conv.agent[start:end] = ids, 1, agent
        conv.length += len(ids)

    def _make_room(self, conv: Conversation, needed: int) -> int:
        """Drop the oldest whole exchanges (an agent turn and the reply to it) from the N slots until
        ``needed`` slots are free or none is left to drop; returns how many slots the rest moved left."""
        shift = 0
        while self.N - (conv.length - shift) < needed and conv.exchanges:
            shift = conv.exchanges.pop(0)
        if shift:
            P, N = self.P, self.N
            for array, fill in ((conv.ids, self.pad_token_id), (conv.mask, 0), (conv.agent, 0)):
                array[P : P + N - shift] = array[P + shift : P + N].copy()
                array[P + N - shift :] = fill
            conv.length -= shift
            conv.turn_start -= shift
            conv.exchanges = [end - shift for end in conv.exchanges]
        return shift

    # ---- episode state (for an agent's exact resume) -------------------------------------------------------
    def conversation_state(self, conv: Conversation) -> dict[str, Any]:
        """``conv`` as JSON-able data: its arrays, turns, counters and the agent's messages so far."""
        state: dict[str, Any] = {name: getattr(conv, name).tolist() for name in CONVERSATION_ARRAYS}
        return state | {name: copy.deepcopy(getattr(conv, name)) for name in CONVERSATION_FIELDS}

    def restore_conversation(self, conv: Conversation, state: dict[str, Any]) -> None:
        """Write :meth:`conversation_state`'s ``state`` into ``conv`` (in place: its arrays may be views of a
        vector env's). A running episode's dialogue is rebuilt by replaying the agent's messages to
        ``task.start(index)``, so the task must answer the same messages the same way (the built-in tasks do;
        the user simulator decodes greedily)."""
        missing = [name for name in (*CONVERSATION_ARRAYS, *CONVERSATION_FIELDS) if name not in state]
        if missing:
            raise ValueError(f"saved conversation lacks {missing}; it comes from another kind of env")
        for name in CONVERSATION_ARRAYS:
            array, saved = getattr(conv, name), np.asarray(state[name], dtype=np.int64)
            if saved.shape != array.shape:
                raise ValueError(
                    f"saved conversation has {saved.shape[-1]} slots, this env {len(array)} "
                    "(max_prompt_tokens + max_new_tokens): make the env with the saved run's sizes"
                )
            array[:] = saved
        for name in CONVERSATION_FIELDS:
            setattr(conv, name, copy.deepcopy(state[name]))
        conv.dialogue = None
        if not conv.done:
            conv.dialogue = self.task.start(conv.index)
            for message in conv.messages:
                conv.dialogue.respond(message)

    def final_info(self, conv: Conversation) -> dict[str, Any]:
        """The info of a finished episode: the turns as text, success, and what the agents' logs read."""
        transcript = "\n".join(f"{t['role']}: {t['content']}" for t in conv.turns[2:])
        return {
            "turns": list(conv.turns),
            "success": bool(conv.success),
            "agent_turns": conv.agent_turns,
            "prompt": conv.turns[1]["content"],
            "completion": transcript,
            "prompt_index": conv.index,
        }

    def transcript(self, conv: Conversation) -> str:
        """The conversation as text, with the agent's unfinished turn (for ``render``)."""
        lines = [f"{t['role']}: {t['content']}" for t in conv.turns]
        if not conv.done and conv.length > conv.turn_start:
            partial = conv.ids[self.P + conv.turn_start : self.P + conv.length].tolist()
            lines.append("assistant: " + self.tokenizer.decode(partial, skip_special_tokens=True) + " ▌")
        return "\n".join(lines)
