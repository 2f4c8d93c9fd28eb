"""What the multi-turn envs share: chat-template rendering into token ids, and one conversation's state.

:class:`ChatCore` resolves the checked arguments of ``TextChat-v0`` / ``TextChatSeq-v0`` (tokenizer, task,
sizes), builds the spaces and runs the turn logic on a :class:`Conversation`, whose arrays are views into the
env's observation (one row of a vector env's (B, P+N) arrays, or a single env's (P+N,) ones).
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from rewards.validation import check_scores
from textenv.chat_tasks import Dialogue, Reply, load_chat_task, render_chat
from textenv.envs.arguments import ChatArguments
from textenv.envs.core import TokenCore
from textenv.hubs import hub_chat_task, is_hub_task
from textenv.tools import Tools

SENTINEL = "\u2063AGENT\u2063"  # stands for the agent's message while the template is rendered
CONVERSATION_ARRAYS = ("ids", "mask", "agent")
"""The (P+N,) arrays of a :class:`Conversation`, saved as lists."""
CONVERSATION_FIELDS = tuple(
    "index turns length turn_start exchanges messages agent_turns success done".split()
)
"""Its other state: everything but the dialogue, which is rebuilt from ``index`` and ``messages``."""
TOOL_FIELDS = ("tool_calls", "bad_tool_calls")
"""Its tool-call counters, saved too (0 when a state saved before tools lacks them)."""


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
        text = _text_after_agent(self.tokenizer, more)
        if text is None:
            check_chat_template(self.tokenizer)  # names the turn where it can
            raise ChatTemplateError(
                f"The chat template does not render an assistant message verbatim. {_TEMPLATE_FIX}", turn=1
            )
        return text

    def opening_ids(self, system_prompt: str, opening: str, tools: Tools | None = None) -> list[int]:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": opening}]
        text = render_chat(self.tokenizer, messages, add_generation_prompt=True, tools=tools)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reply_ids(self, role: str, content: str, agent_closed: bool) -> list[int]:
        """The ids after an agent message: close its turn (unless ``agent_closed``), ``content`` as a
        ``role`` turn, and the generation prompt of the agent's next turn."""
        text = self._after_agent([{"role": role, "content": content}])
        if agent_closed and self._end_token_text and text.startswith(self._end_token_text):
            text = text[len(self._end_token_text) :]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


TEMPLATE_CHECK_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    (  # a host's short replies (the guessing game)
        {"role": "system", "content": "You are playing a number guessing game."},
        {"role": "user", "content": "I'm thinking of a whole number from 1 to 10. Guess it!"},
        {"role": "assistant", "content": "My guess is 5."},
        {"role": "user", "content": "Higher."},
        {"role": "assistant", "content": "Then 8."},
        {"role": "user", "content": "Lower."},
    ),
    (  # reasoning in the agent's turns, which must stay in every later rendering; an empty message
        {"role": "system", "content": "Solve the problem."},
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": "<think>12 * 7 = 70 + 14.</think>It is 84."},
        {"role": "user", "content": "Are you sure?\nCheck it."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Please answer with a number."},
    ),
    (  # a tool call and the tool's turn (checked when the template can render a "tool" turn at all)
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Add 2 to 3."},
        {"role": "assistant", "content": '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>'},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "2 + 3 = 5."},
        {"role": "user", "content": "Thanks."},
    ),
)
"""The conversations :func:`check_chat_template` renders turn by turn (system prompt, opening, then agent
messages and replies, as the chat envs build them)."""


class ChatTemplateError(ValueError):
    """A chat template that breaks token continuity; ``turn`` is the index of the first turn that breaks."""

    def __init__(self, message: str, turn: int) -> None:
        super().__init__(message)
        self.turn = turn


def check_chat_template(tokenizer: Any, require_tool_turns: bool = False) -> None:
    """Raise :class:`ChatTemplateError` unless ``tokenizer``'s chat template is prefix-continuous.

    The chat envs never re-render a conversation: they render the opening once, then append the agent's
    tokens and, after each agent message, only the text the template puts after it (:class:`ChatTokens`).
    The KV cache of the agents and ``agent_mask`` rely on that sequence being the template's rendering of
    the whole conversation, which holds when every rendering of a conversation is a prefix of the rendering
    of the conversation extended by a turn. This renders :data:`TEMPLATE_CHECK_CONVERSATIONS` turn by turn
    and compares (whitespace between the generation prompt and the agent's message is allowed: the agent's
    first token carries it). Templates that rewrite earlier turns break it: the known case strips the
    reasoning (``<think>...</think>``) of earlier assistant turns (Qwen3-style). Tokenizers without a
    template get :data:`~textenv.chat_tasks.FALLBACK_CHAT_TEMPLATE`, which passes. The chat envs call this
    when they are made and refuse a template that fails (a few milliseconds: three short conversations).
    A template that cannot render a ``"tool"`` turn at all passes unless ``require_tool_turns`` (the envs
    set it for a task with tools).

    >>> from textenv import load_tokenizer
    >>> check_chat_template(load_tokenizer("tiny-sp"))  # the fallback template: no error
    >>> tokenizer = load_tokenizer("tiny-sp")
    >>> tokenizer.chat_template = (  # drops the content of earlier assistant turns
    ...     "{% for m in messages %}{{ m['role'] }}: "
    ...     "{{ '...' if m['role'] == 'assistant' else m['content'] }}\\n{% endfor %}"
    ...     "{% if add_generation_prompt %}assistant: {% endif %}")
    >>> check_chat_template(tokenizer)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    textenv.envs.chat_core.ChatTemplateError: The chat template breaks token continuity at turn 2 ...
    """
    for conversation in TEMPLATE_CHECK_CONVERSATIONS:
        messages = list(conversation)
        has_tool = any(message["role"] == "tool" for message in messages)
        try:
            ends = range(2, len(messages) + 1, 2)
            renderings = [render_chat(tokenizer, messages[:end], True) for end in ends]
            suffixes = [_text_after_agent(tokenizer, [reply]) for reply in messages[3::2]]
        except Exception as error:  # a template may refuse a role (e.g. "tool") or raise_exception() itself
            if has_tool and not require_tool_turns:
                continue  # only tasks that answer with tool turns need them; such a task fails when it does
            raise ChatTemplateError(
                f"The chat template cannot render a plain conversation (system, user, assistant, user "
                f"turns): {type(error).__name__}: {error}. {_TEMPLATE_FIX}",
                turn=0,
            ) from error
        for k, (before, after) in enumerate(zip(renderings, renderings[1:], strict=False)):
            agent_turn = 2 + 2 * k
            suffix = suffixes[k]  # None: the template does not render an agent message verbatim
            appended = messages[agent_turn]["content"] + (suffix or "")  # what the env appends to `before`
            # the agent's first token carries the space a template may put after its generation prompt
            seam = after[len(before) : len(after) - len(appended)]
            if suffix is None or not (
                after.startswith(before) and after.endswith(appended) and not seam.strip()
            ):
                message = _template_break(messages, agent_turn, before + appended, after)
                raise ChatTemplateError(message, turn=agent_turn)


def _text_after_agent(tokenizer: Any, more: list[dict[str, str]]) -> str | None:
    """The text the chat template puts after an agent message when the ``more`` turns follow it (with the
    next generation prompt), or None if the template does not render the message verbatim."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}, *more]
    text = render_chat(tokenizer, messages, add_generation_prompt=bool(more))
    return text[text.index(SENTINEL) + len(SENTINEL) :] if SENTINEL in text else None


_TEMPLATE_FIX = (
    "Pass a tokenizer whose chat template keeps earlier turns verbatim, or use textenv's fallback template: "
    "tokenizer.chat_template = textenv.chat_tasks.FALLBACK_CHAT_TEMPLATE."
)


def _template_break(messages: list[dict[str, str]], agent_turn: int, expected: str, found: str) -> str:
    """The error of :func:`check_chat_template`: the first turn whose text the extended rendering lost (or
    the agent's turn being extended), where the texts first differ, and the fix."""
    at = next((i for i, (a, b) in enumerate(zip(expected, found, strict=False)) if a != b), None)
    at = min(len(expected), len(found)) if at is None else at
    lost = [i for i in range(1, agent_turn + 1) if messages[i]["content"] not in found]
    turn = lost[0] if lost else agent_turn
    shown = messages[turn]["content"]
    return (
        f"The chat template breaks token continuity at turn {turn} ({messages[turn]['role']}: {shown!r}) of "
        f"a check conversation: rendering it up to turn {agent_turn} and then with the reply at turn "
        f"{agent_turn + 1} ({messages[agent_turn + 1]['role']}) does not extend the earlier text; from "
        f"character {at} the chat env's text reads {expected[at : at + 40]!r}, the template's "
        f"{found[at : at + 40]!r}. The chat envs append each turn to the tokens so far (the agents' KV cache "
        "and agent_mask rely on it), so a template must render earlier turns the same in every later "
        f"rendering; templates that strip earlier reasoning (<think>...</think>) do not. {_TEMPLATE_FIX}"
    )


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
    tool_calls: int = 0  # the agent's tool calls in this episode (ChatTask.tools), bad ones included
    bad_tool_calls: int = 0  # malformed, unknown, bad arguments, timed out or raised


class ChatCore(TokenCore):
    """Settings, spaces and turn logic shared by the chat envs; see :class:`~textenv.envs.TextChatEnv`. Built
    from :class:`~textenv.envs.arguments.ChatArguments`; the tokenizer side (special ids, vocabulary, action
    checks) is :class:`~textenv.envs.core.TokenCore`'s."""

    def __init__(self, args: ChatArguments) -> None:
        super().__init__(args)
        self.args: ChatArguments = args
        if is_hub_task(args.task):  # "textarena:<game>" (textenv.hubs)
            self.task = hub_chat_task(str(args.task), args.split, **(args.task_kwargs or {}))
        else:
            self.task = load_chat_task(args.task, args.split, **(args.task_kwargs or {}))
        self.tools: Tools | None = getattr(self.task, "tools", None)
        if self.tools is not None and not isinstance(self.tools, Tools):
            raise TypeError(
                f"the chat task's tools are {type(self.tools).__name__}; give a textenv.tools.Tools, e.g. "
                "self.tools = Tools([add, multiply]), or None"
            )
        check_chat_template(self.tokenizer, require_tool_turns=self.tools is not None)
        self.chat = ChatTokens(self.tokenizer)
        self.P, self.N, self.T = self.max_prompt_tokens, self.max_new_tokens, int(args.max_turn_tokens)
        self.max_turns = int(args.max_turns)
        self._opening_cache: dict[int, list[int]] = {}
        self._warned_cut_tools = False
        self.reward_seconds = 0.0  # time in the task's replies (its rewards), for the agents' time breakdown

    def observation_space(self, length: int) -> spaces.Dict:
        box = spaces.Box(low=0, high=self.vocab_size - 1, shape=(length,), dtype=np.int64)
        flag = spaces.Box(low=0, high=1, shape=(length,), dtype=np.int64)
        return spaces.Dict({"input_ids": box, "attention_mask": flag, "agent_mask": flag})

    # ---- episodes -----------------------------------------------------------------------------------------
    def start(self, conv: Conversation, index: int) -> dict[str, Any]:
        """Open episode ``index`` in ``conv``: the opening left-padded into the P slots (its last P tokens
        if longer), the N slots empty. Returns the reset info."""
        dialogue = self.task.start(index)
        if index not in self._opening_cache:
            system = self.task.system_prompt
            self._opening_cache[index] = self.chat.opening_ids(system, dialogue.opening, self.tools)
            length = len(self._opening_cache[index])
            if self.tools is not None and length > self.P and not self._warned_cut_tools:
                self._warned_cut_tools = True
                warnings.warn(
                    f"the opening of episode {index} (system prompt with the tools' description, first "
                    f"message) is {length} tokens; the env keeps its last max_prompt_tokens={self.P}, so the "
                    "model does not see the start of the tools' description: make the env with "
                    f"max_prompt_tokens={length} or more",
                    stacklevel=2,
                )
        ids = self._opening_cache[index][-self.P :]
        P, pad = self.P, self.P - len(ids)
        conv.ids[:], conv.mask[:], conv.agent[:] = self.pad_token_id, 0, 0
        conv.ids[pad:P], conv.mask[pad:P] = ids, 1
        conv.index, conv.dialogue, conv.length, conv.turn_start = index, dialogue, 0, 0
        conv.exchanges, conv.messages, conv.agent_turns, conv.success, conv.done = [], [], 0, False, False
        conv.tool_calls = conv.bad_tool_calls = 0
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
        tool_answer = None
        try:
            if self.tools is not None and self.tools.answers(message, conv.tool_calls):
                tool_answer = self._call_tools(message, conv.tool_calls)
                reply = Reply(
                    tool_answer.content, reward=tool_answer.reward, role="tool", success=conv.success
                )
            else:
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
        if tool_answer is not None:
            conv.tool_calls += tool_answer.calls
            conv.bad_tool_calls += tool_answer.bad_calls
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

    def _call_tools(self, message: str, calls_so_far: int) -> Any:
        """The tools' answer to ``message`` (:meth:`textenv.tools.Tools.answer`), within ``max_calls``."""
        assert self.tools is not None
        limit = self.tools.max_calls
        answer = self.tools.answer(message, None if limit is None else limit - calls_so_far)
        assert answer is not None
        return answer

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
        fields = (*CONVERSATION_FIELDS, *TOOL_FIELDS)
        return state | {name: copy.deepcopy(getattr(conv, name)) for name in fields}

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
        for name in TOOL_FIELDS:
            setattr(conv, name, int(state.get(name, 0)))
        conv.dialogue = None
        if not conv.done:
            conv.dialogue = self.task.start(conv.index)
            calls = 0  # the messages the tools answered are not replayed (nor the tools run again)
            for message in conv.messages:
                if self.tools is not None and self.tools.answers(message, calls):
                    calls += self.tools.count(message)
                else:
                    conv.dialogue.respond(message)

    def final_info(self, conv: Conversation) -> dict[str, Any]:
        """The info of a finished episode: the turns as text, success, and what the agents' logs read; with
        tools, the episode's ``tool_calls`` and ``bad_tool_calls``."""
        transcript = "\n".join(f"{t['role']}: {t['content']}" for t in conv.turns[2:])
        counts = {"tool_calls": conv.tool_calls, "bad_tool_calls": conv.bad_tool_calls}
        tools = counts if self.tools is not None else {}
        return tools | {
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
