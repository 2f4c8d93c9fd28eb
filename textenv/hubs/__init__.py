"""Other environment hubs' tasks as textenv tasks, offline (optional extra: ``pip install 'textenv[hubs]'``).

- reasoning-gym's procedural problems as ``TextGen-v0`` prompt tasks scored by reasoning-gym:
  ``gym.make("TextGen-v0", task="reasoning_gym:<name>")`` (:mod:`textenv.hubs.reasoning_gym`);
- TextArena's games as ``TextChat-v0`` tasks against an offline opponent:
  ``gym.make("TextChat-v0", task="textarena:<game id>")`` (:mod:`textenv.hubs.textarena`).

Both accept ``split="train"`` / ``"validation"`` / ``"test"`` with disjoint seeds. The hub packages are
imported only when such a task is made; a missing one raises an ImportError naming ``pip install
'textenv[hubs]'``. Hub code runs in-process with your rights, like any package you import.

>>> is_hub_task("reasoning_gym:chain_sum"), is_hub_task("textarena:TicTacToe-v0"), is_hub_task("guess")
(True, True, False)
"""

from __future__ import annotations

from typing import Any, TypeGuard

from textenv.chat_tasks import ChatTask
from textenv.data import PromptDataset
from textenv.hubs import reasoning_gym, textarena
from textenv.hubs.reasoning_gym import ReasoningGymScore, reasoning_gym_task
from textenv.hubs.textarena import OFFLINE_GAMES, TextArenaTask, random_move

PROMPT_HUBS = (reasoning_gym.PREFIX,)
"""Prefixes of the single-turn (``TextGen-v0``) hub tasks."""
CHAT_HUBS = (textarena.PREFIX,)
"""Prefixes of the multi-turn (``TextChat-v0``) hub tasks."""


def is_hub_task(task: Any) -> TypeGuard[str]:
    """Whether ``task`` names a hub's task (``"<hub>:<name>"``)."""
    return isinstance(task, str) and task.startswith((*PROMPT_HUBS, *CHAT_HUBS))


def hub_prompts(task: str, split: str = "train") -> PromptDataset:
    """The prompt dataset of a single-turn hub task (``TextGen-v0``'s ``task=``)."""
    if not task.startswith(PROMPT_HUBS):
        raise ValueError(f"task={task!r} is not a single-turn hub task; use 'reasoning_gym:<name>'.")
    return reasoning_gym.load_reasoning_gym(task, split)


def hub_reward(task: str) -> ReasoningGymScore:
    """The reward of a single-turn hub task: the hub's own scorer (the env's default ``reward_fn``)."""
    if not task.startswith(PROMPT_HUBS):
        raise ValueError(f"task={task!r} is not a single-turn hub task; use 'reasoning_gym:<name>'.")
    return ReasoningGymScore(task.removeprefix(reasoning_gym.PREFIX))


def hub_chat_task(task: str, split: str = "train", **kwargs: Any) -> ChatTask:
    """The chat task of a multi-turn hub task (``TextChat-v0``'s ``task=``, with its ``task_kwargs``)."""
    if not task.startswith(CHAT_HUBS):
        raise ValueError(
            f"task={task!r} is not a multi-turn hub task; use 'textarena:<game id>' (e.g. "
            "'textarena:TicTacToe-v0'), or make a TextGen-v0 env for 'reasoning_gym:' tasks."
        )
    return textarena.load_textarena(task, split, **kwargs)


__all__ = [
    "OFFLINE_GAMES",
    "ReasoningGymScore",
    "TextArenaTask",
    "hub_chat_task",
    "hub_prompts",
    "hub_reward",
    "is_hub_task",
    "random_move",
    "reasoning_gym_task",
]
