"""The other party of a conversation: offline multi-turn tasks with verifiable rewards for ``TextChat-v0``.

A :class:`ChatTask` is a seeded, finite list of episodes. Its ``split`` picks the seed its episodes are drawn
with: ``"train"`` to train on, ``"validation"`` to choose settings on (sweeps, pilots, presets) and ``"test"``
for reported results only (:data:`SPLIT_SEEDS`). Procedural tasks with few distinct episodes (the guessing
game's secrets) can repeat an episode across splits; the splits are independent draws, not disjoint sets.
``task.start(i)`` opens episode i as a :class:`Dialogue`: the ``opening`` user message and
``respond(message)``, which reads the agent's message and returns a :class:`Reply`: the other party's next
message (a host's feedback, a tool's output, a simulated user's answer), a reward and whether the task is
over. The environment renders the reply with the tokenizer's chat template; the task only sees text.

Built-in tasks (:data:`CHAT_TASKS`):

- ``"guess"``, :class:`GuessNumberTask`: find a secret number in ``[low, high]``; the host answers
  "Higher." / "Lower." / "Correct!". Reward ``1 - turn_cost * (guesses - 1)`` on success, else 0.
- ``"calculator"``, :class:`CalculatorTask`: arithmetic word problems with the tool
  :func:`textenv.arithmetic.calculate` (a safe ``ast`` evaluator, never ``eval``), called with JSON in
  ``<tool_call>`` tags;
  any other message is the final answer (its last number). Reward 1 for the right answer, minus ``call_cost``
  per tool call.
- ``"usersim"``, :class:`UserSimTask`: a frozen LM plays a customer with a persona; each agent turn is
  rewarded with the VADER sentiment of the user's reply (in [-1, 1]); success is a positive last reply.

Your own task is a function: ``FunctionTask(openings, respond)`` with ``respond(turns, message) -> Reply``;
``tools=[fn, ...]`` gives it tools from plain Python functions (:mod:`textenv.tools`).

>>> task = GuessNumberTask(split="test", low=1, high=4)
>>> dialogue = task.start(0)
>>> dialogue.opening
"I'm thinking of a whole number from 1 to 4. Guess it!"
>>> [dialogue.respond(str(n)).content for n in (1, 4)][:1]
['Higher.']
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewards.sentiment import VaderSentiment
from textenv.arithmetic import calculate, safe_arithmetic
from textenv.models import load_model, load_tokenizer
from textenv.tools import Tools, describe_tools, template_supports_tools

SPLIT_SEEDS = {"train": 0, "validation": 2, "test": 1}
"""The seed of each split's episode draws: train on ``"train"``, choose settings on ``"validation"``, report
``"test"``."""
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Reply:
    """The other party's answer to one agent message."""

    content: str | None
    """Its next message; None when it has nothing more to say (the episode ends)."""
    reward: float = 0.0
    """Reward for the agent's message (per turn; the env sums nothing, agents see it at that turn)."""
    done: bool = False
    """The task is over (the episode terminates after this turn)."""
    success: bool = False
    """Whether the task was solved (reported in ``info["success"]`` at the end)."""
    role: str = "user"
    """The chat role the reply is rendered with (``"user"``; a tool's output also uses it by default)."""


class Dialogue(ABC):
    """One running episode of a task: the opening message and the other party's replies."""

    opening: str

    @abstractmethod
    def respond(self, message: str) -> Reply:
        """The reply to the agent's ``message`` (text, special tokens removed)."""


class ChatTask(ABC):
    """A seeded, finite list of episodes; :meth:`start` opens one as a :class:`Dialogue`."""

    system_prompt: str = "You are a helpful assistant."
    tools: Tools | None = None
    """The task's tools (:class:`textenv.tools.Tools`), or None. The env describes them in the system prompt
    and answers a message that calls one with a ``"tool"`` turn itself; the dialogue sees the other
    messages."""

    def __init__(self, split: str = "train", size: int = 1000) -> None:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLIT_SEEDS)}.")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r} must be a positive int (episodes in the split).")
        self.split, self.size = split, size
        self.rng = np.random.default_rng(SPLIT_SEEDS[split])

    def __len__(self) -> int:
        return self.size

    @abstractmethod
    def start(self, index: int) -> Dialogue:
        """Open episode ``index`` (``0 <= index < len(self)``)."""


FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""The template for tokenizers without one: ``Role: content<eos>`` per message, then ``Assistant:``."""


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool,
    tools: Tools | None = None,
) -> str:
    """``messages`` as text with the tokenizer's chat template (:data:`FALLBACK_CHAT_TEMPLATE` if it has
    none). With ``tools``, a template that reads ``tools`` gets their JSON schemas
    (``apply_chat_template(..., tools=...)``); any other template gets them described at the end of the
    system message (:func:`textenv.tools.describe_tools`; one is added if there is none)."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    messages, schemas = list(messages), None
    if tools is not None and template is None and template_supports_tools(tokenizer):
        schemas = tools.schemas
    elif tools is not None:
        described = describe_tools(tools.schemas)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{described}"}
        else:
            messages.insert(0, {"role": "system", "content": described})
    return str(
        tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tools=schemas,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    )


# ---- guessing game ----------------------------------------------------------------------------------------
class _GuessDialogue(Dialogue):
    def __init__(self, task: GuessNumberTask, secret: int) -> None:
        self.secret, self.low, self.high, self.turn_cost = secret, task.low, task.high, task.turn_cost
        self.invalid_cost, self.hints = task.invalid_cost, task.hints
        self.guesses = 0
        self.opening = f"I'm thinking of a whole number from {self.low} to {self.high}. Guess it!"

    def respond(self, message: str) -> Reply:
        self.guesses += 1
        found = _NUMBER.search(message)
        if found is None:
            text = f"Please answer with a whole number from {self.low} to {self.high}."
            return Reply(text, reward=-self.invalid_cost)
        guess = float(found.group())
        if guess == self.secret:
            reward = max(0.0, 1.0 - self.turn_cost * (self.guesses - 1))
            return Reply(f"Correct! It was {self.secret}.", reward=reward, done=True, success=True)
        if not self.hints:
            return Reply("Wrong.")
        return Reply("Higher." if guess < self.secret else "Lower.")


class GuessNumberTask(ChatTask):
    """Guess a secret whole number in ``[low, high]`` against a scripted host.

    Each agent message's first number is its guess; the host answers "Higher." or "Lower." (or asks for a
    number). Reward ``max(0, 1 - turn_cost * (guesses - 1))`` when the number is found, else 0: success,
    and fewer turns, pay. Optionally a message without any number costs ``invalid_cost`` at once (a per-turn
    shaping term, 0 by default). Secrets are drawn uniformly with the split's seed. With ``hints=False``
    the host only says "Wrong." to a wrong guess: the game without the information a strategy uses (a
    policy that wins it no better than distinct random guesses ignores the host).
    """

    system_prompt = "You are playing a number guessing game. Answer with one number per message."

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        low: int = 1,
        high: int = 10,
        turn_cost: float = 0.1,
        invalid_cost: float = 0.0,
        hints: bool = True,
    ) -> None:
        super().__init__(split, size)
        if not low < high:
            raise ValueError(f"need low < high, got low={low}, high={high}.")
        self.low, self.high, self.turn_cost = int(low), int(high), float(turn_cost)
        self.invalid_cost, self.hints = float(invalid_cost), bool(hints)
        self.secrets = self.rng.integers(self.low, self.high + 1, size=size)

    def start(self, index: int) -> Dialogue:
        return _GuessDialogue(self, int(self.secrets[index]))


# ---- calculator tool use ----------------------------------------------------------------------------------
_PROBLEMS = [
    ("A shop packs {a} boxes with {b} pens each. How many pens is that?", "{a}*{b}"),
    ("Sam had {a} stickers and got {b} more. How many stickers does Sam have?", "{a}+{b}"),
    ("A tank holds {a} litres and {b} litres leak out. How many litres are left?", "{a}-{b}"),
    (
        "{a} apples are shared by {b} children, and each child gets the same. How many are left over?",
        "{a}%{b}",
    ),
    ("A train travels {a} km per hour for {b} hours. How far does it go, in km?", "{a}*{b}"),
]


class _CalculatorDialogue(Dialogue):
    def __init__(self, question: str, answer: float) -> None:
        self.answer, self.opening = answer, question

    def respond(self, message: str) -> Reply:  # tool calls are answered by the env (CalculatorTask.tools)
        numbers = _NUMBER.findall(message)
        correct = bool(numbers) and math.isclose(float(numbers[-1]), self.answer, abs_tol=1e-6)
        return Reply(None, reward=1.0 if correct else 0.0, done=True, success=correct)


class CalculatorTask(ChatTask):
    """Arithmetic word problems with a calculator tool.

    The tool is :func:`~textenv.arithmetic.calculate` (the bounded ``ast`` evaluator of
    :mod:`textenv.arithmetic`, never ``eval``),
    called as ``<tool_call>{"name": "calculate", "arguments": {"expression": "12*7"}}</tool_call>``; the env
    answers in a tool turn (``84``, or ``error: ...``) at a cost of ``call_cost`` each (at most ``max_calls``
    per episode; later calls count as answers). Any message without a call is the final answer: its last
    number is compared with the truth, reward 1 if equal, and the episode ends. ``tool=False`` plays the same
    problems without the tool (not described, and a call is read as an answer): the floor a policy that uses
    the tool must beat, the same model answering in its head.
    """

    system_prompt = (
        "Solve the problem. Use the calculate tool for arithmetic, then give the final answer as a number."
    )
    no_tool_prompt = "Solve the problem. Give the final answer as a number."

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        max_operand: int = 99,
        call_cost: float = 0.05,
        max_calls: int = 3,
        tool: bool = True,
    ) -> None:
        super().__init__(split, size)
        if not isinstance(tool, bool):
            raise TypeError(f"tool={tool!r} must be True (the calculate tool) or False (answer without it).")
        kinds = self.rng.integers(len(_PROBLEMS), size=size)
        operands = self.rng.integers(2, max_operand + 1, size=(size, 2))
        self.problems = []
        for kind, (a, b) in zip(kinds.tolist(), operands.tolist(), strict=True):
            a, b = max(a, b), min(a, b)  # no negative answers to "how many are left"
            text, expression = _PROBLEMS[kind]
            formula = expression.format(a=a, b=b)
            self.problems.append((text.format(a=a, b=b), safe_arithmetic(formula)))
        self.tools = Tools([calculate], call_cost=call_cost, max_calls=max_calls) if tool else None
        if not tool:
            self.system_prompt = self.no_tool_prompt

    def start(self, index: int) -> Dialogue:
        question, answer = self.problems[index]
        return _CalculatorDialogue(question, answer)


# ---- user simulator ---------------------------------------------------------------------------------------
PERSONAS = [
    ("an impatient customer whose parcel arrived two weeks late", "Where is my parcel? It's two weeks late."),
    ("a worried patient whose new medicine makes them dizzy", "My new medicine makes me dizzy. Is that bad?"),
    ("a student who failed an exam and feels discouraged", "I failed my exam again and I feel terrible."),
    ("a traveller whose flight was cancelled", "My flight got cancelled and nobody is helping me."),
    ("a customer charged twice for the same order", "You charged me twice for one order!"),
    ("a new runner with sore knees", "My knees hurt after every run. Should I stop?"),
]


class _UserDialogue(Dialogue):
    def __init__(self, task: UserSimTask, persona: str, opening: str) -> None:
        self.task, self.persona, self.opening = task, persona, opening
        self.history: list[dict[str, str]] = [{"role": "assistant", "content": opening}]

    def respond(self, message: str) -> Reply:
        message = message.encode("utf-8", "replace").decode("utf-8")  # lone surrogates break the tokenizer
        self.history.append({"role": "user", "content": message})  # the agent speaks to the simulator
        reply = self.task.simulate(self.persona, self.history)
        self.history.append({"role": "assistant", "content": reply})
        score = float(self.task.sentiment([""], [reply])[0])
        return Reply(reply, reward=score, success=score > 0.05)


class UserSimTask(ChatTask):
    """Dialogue with a simulated user: a frozen LM (``model``) with a persona prompt plays the user.

    The user opens with a complaint; after each agent message the simulator answers (greedy decoding, at
    most ``reply_tokens`` tokens, so episodes are reproducible). The reward for each agent message is the
    VADER compound sentiment of the user's answer to it, in [-1, 1]; ``success`` means the last answer was
    positive (> 0.05). The episode ends at the env's ``max_turns``. The model loads on first use.
    """

    system_prompt = "You are a kind and helpful support assistant. Answer in one or two sentences."

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        model: str | Path = "smollm2-135m-instruct",
        reply_tokens: int = 24,
    ) -> None:
        super().__init__(split, size)
        self.model_name, self.reply_tokens = model, int(reply_tokens)
        self.choice = self.rng.integers(len(PERSONAS), size=size)
        self.sentiment = VaderSentiment()
        self._lm: Any = None
        self._tokenizer: Any = None

    def start(self, index: int) -> Dialogue:
        persona, opening = PERSONAS[int(self.choice[index])]
        return _UserDialogue(self, persona, opening)

    def simulate(self, persona: str, history: Sequence[dict[str, str]]) -> str:
        """The simulated user's next message after ``history`` (its own turns are ``assistant`` turns)."""
        import torch

        if self._lm is None:
            self._tokenizer = load_tokenizer(str(self.model_name))
            self._lm = load_model(str(self.model_name)).eval()
        system = f"You are {persona}. Reply to the assistant in one short sentence, as that person."
        text = render_chat(self._tokenizer, [{"role": "system", "content": system}, *history], True)
        ids = self._tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = self._lm.generate(
                **ids,
                max_new_tokens=self.reply_tokens,
                do_sample=False,
                pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            )
        reply = self._tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        return reply.strip() or "..."


# ---- your own task ----------------------------------------------------------------------------------------
class _FunctionDialogue(Dialogue):
    def __init__(self, opening: str, respond: Callable[[list[dict[str, str]], str], Reply | str]) -> None:
        self.opening, self._respond = opening, respond
        self.turns: list[dict[str, str]] = [{"role": "user", "content": opening}]

    def respond(self, message: str) -> Reply:
        self.turns.append({"role": "assistant", "content": message})
        reply = self._respond(list(self.turns), message)
        if isinstance(reply, str):
            reply = Reply(reply)
        if not isinstance(reply, Reply):
            raise TypeError(
                f"respond() returned {type(reply).__name__}; return a textenv.chat_tasks.Reply or a str."
            )
        if reply.content is not None:
            self.turns.append({"role": reply.role, "content": reply.content})
        return reply


class FunctionTask(ChatTask):
    """A task from a function: ``respond(turns, message) -> Reply | str`` plays the other party.

    ``turns`` is the conversation so far as ``{"role", "content"}`` dicts (ending with the agent's
    ``message``); ``openings`` are the first user messages, one episode each. ``tools``: typed, docstringed
    functions (or a :class:`textenv.tools.Tools` with its limits and costs) the agent may call; the env
    answers those calls, and ``respond`` sees only the agent's other messages.

    >>> task = FunctionTask(["Say hi."], lambda turns, msg: Reply(None, reward=float("hi" in msg), done=True))
    >>> task.start(0).respond("hi there").reward
    1.0
    """

    def __init__(
        self,
        openings: Sequence[str],
        respond: Callable[[list[dict[str, str]], str], Reply | str],
        system_prompt: str = "You are a helpful assistant.",
        tools: Sequence[Callable[..., Any]] | Tools | None = None,
    ) -> None:
        if isinstance(openings, str) or not openings:
            raise ValueError("openings must be a non-empty list of first user messages.")
        if not callable(respond):
            raise TypeError("respond must be a function (turns, message) -> Reply | str.")
        super().__init__("train", len(openings))
        self.openings, self.respond, self.system_prompt = list(openings), respond, system_prompt
        self.tools = tools if isinstance(tools, Tools) or tools is None else Tools(tools)

    def start(self, index: int) -> Dialogue:
        return _FunctionDialogue(self.openings[index], self.respond)


CHAT_TASKS: dict[str, type[ChatTask]] = {
    "guess": GuessNumberTask,
    "calculator": CalculatorTask,
    "usersim": UserSimTask,
}


def load_chat_task(task: str | ChatTask, split: str = "train", **kwargs: Any) -> ChatTask:
    """A built-in task by name (with its keyword arguments), or ``task`` itself if it is a ChatTask."""
    if isinstance(task, ChatTask):
        if kwargs:
            raise ValueError(f"task_kwargs={kwargs} apply to a built-in task name, not to a ChatTask object.")
        return task
    if task not in CHAT_TASKS:
        raise ValueError(f"task={task!r} is not a chat task; use one of {sorted(CHAT_TASKS)} or a ChatTask.")
    try:
        return CHAT_TASKS[task](split=split, **kwargs)
    except TypeError as error:
        raise TypeError(f"task_kwargs for {task!r}: {error}") from None
