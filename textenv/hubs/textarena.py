"""TextArena's games as ``TextChat-v0`` tasks: the agent plays one seat, a fixed offline policy the others.

`TextArena <https://pypi.org/project/textarena/>`_ (MIT; ``pip install 'textenv[hubs]'``) has about a hundred
text games. :class:`TextArenaTask` turns one into a :class:`~textenv.chat_tasks.ChatTask`:

- ``gym.make("TextChat-v0", task="textarena:TicTacToe-v0", max_prompt_tokens=256)``, or
- ``gym.make("TextChat-v0", task=TextArenaTask("KuhnPoker-v0", opponent=my_policy), ...)``.

An episode is one game (seeded: episode ``i`` of a split is game seed ``i``, plus :data:`TEST_SEED_OFFSET` in
the test split and twice that in the validation split, so the splits never share a game). The opening user
message is what the game shows the agent's player first (its rules, the board); after each agent message (its
move, in the game's format, e.g. ``[4]``) the other players move, each by ``opponent`` (default
:func:`random_move`: a uniformly random move among those the game lists, seeded per episode), and the next
user message is everything the agent's player saw since its move (the others' moves, the board, an
invalid-move notice: the game's own retry rule applies). The reward is the game's own reward for the agent's
player when the game ends (+1 win, -1 loss, 0 draw in two-player games; a score in [0, 1] in puzzles);
``success`` is a reward of 1 or more.

The games in :data:`OFFLINE_GAMES` (and their TextArena variants, such as ``"KuhnPoker-v0-short"``) were
checked to run without network access, and ``tests/test_textenv_hubs.py`` plays each with sockets refused.
Other TextArena games can download word lists at first use or call hosted LLMs; textenv refuses them unless
``allow_unchecked=True``.

**Trust.** The game's code runs in-process with your rights. TextArena seeds Python's global ``random`` in
every reset; the task runs each game on its own ``random`` state and restores yours around every call.

The opening holds a game's rules: give the env room for it (``max_prompt_tokens=256``: the P slots keep the
last tokens of a longer opening).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from textenv.chat_tasks import ChatTask, Dialogue, Reply
from textenv.hubs.packages import import_hub

PREFIX = "textarena:"
TEST_SEED_OFFSET = 1_000_000_000
"""The test split's game seeds start here (the train split's at 0, the validation split's at twice this)."""
SPLIT_OFFSETS = {"train": 0, "test": TEST_SEED_OFFSET, "validation": 2 * TEST_SEED_OFFSET}
OFFLINE_GAMES: dict[str, int] = {
    "TicTacToe-v0": 2,
    "ConnectFour-v0": 2,
    "KuhnPoker-v0": 2,
    "Nim-v0": 2,
    "IteratedRockPaperScissors-v0": 2,
    "IteratedPrisonersDilemma-v0": 2,
    "GuessTheNumber-v0": 1,
    "Mastermind-v0": 1,
    "TowerOfHanoi-v0": 1,
    "FrozenLake-v0": 1,
    "Minesweeper-v0": 1,
}
"""The games checked to run offline, with their number of players."""
Opponent = Callable[[str, np.random.Generator], str]
"""An offline policy for the other seats: ``(observation text, rng) -> move``."""
_MOVE = re.compile(r"\[[^\[\]\n]{1,30}\]")


def random_move(observation: str, rng: np.random.Generator) -> str:
    """A uniformly random move among the bracketed moves the latest listing paragraph of ``observation``
    offers (TextArena games list them, e.g. ``Available Moves: '[0]', '[4]'``); ``"[0]"`` if none.

    >>> random_move("Current Board: ...\\n\\nAvailable Moves: '[2]', '[7]'", np.random.default_rng(0))
    '[7]'
    """
    for paragraph in reversed(observation.split("\n\n")):
        moves = sorted(set(_MOVE.findall(paragraph)))
        if moves:
            return str(moves[int(rng.integers(len(moves)))])
    return "[0]"


def _game_family(game: str) -> str | None:
    """The :data:`OFFLINE_GAMES` entry ``game`` is (or is a variant of, e.g. ``"KuhnPoker-v0-short"``)."""
    for family in OFFLINE_GAMES:
        if game == family or game.startswith(family + "-"):
            return family
    return None


class _GameDialogue(Dialogue):
    """One game: the agent's seat, the TextArena env and the game's own ``random`` state."""

    def __init__(self, task: TextArenaTask, seed: int) -> None:
        self.task, self.seed = task, seed
        self.env = import_hub("textarena").make(f"{task.game}-raw")  # no LLM-prompt wrappers: raw messages
        self.rng = np.random.default_rng(seed)
        players = task.num_players
        self.agent = task.agent_player if task.agent_player is not None else int(self.rng.integers(players))
        self._random_state = random.Random(seed).getstate()
        with self._own_random():
            self.env.reset(num_players=players, seed=seed)
            done = self._others_move()
        if done:
            raise RuntimeError(f"{task.game} ended before the agent's first move (game seed {seed}).")
        self.opening = self._seen()

    @contextmanager
    def _own_random(self) -> Iterator[None]:
        outside = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outside)

    def _seen(self, player: int | None = None) -> str:
        """What ``player`` (the agent's by default) saw since it last moved: the game's messages and the
        other players' moves, the board only as it is now (not its own move, not older boards)."""
        player = self.agent if player is None else player
        state = self.env.state
        messages, state.observations[player] = state.observations[player], []
        boards = [i for i, (_, _, kind) in enumerate(messages) if getattr(kind, "name", "") == "GAME_BOARD"]
        lines = [
            text if sender < 0 else f"Player {sender}: {text}"
            for i, (sender, text, _) in enumerate(messages)
            if sender != player and (i not in boards or i == boards[-1])
        ]
        return "\n\n".join(line.strip() for line in lines if line.strip())

    def _others_move(self) -> bool:
        """Let the other seats move until it is the agent's turn or the game is over; returns done."""
        while self.env.state.current_player_id != self.agent:
            player = self.env.state.current_player_id
            done, _ = self.env.step(self.task.opponent(self._seen(player), self.rng))
            if done:
                return True
        return False

    def respond(self, message: str) -> Reply:
        with self._own_random():
            done, _ = self.env.step(message)
            done = done or self._others_move()
            if not done:
                return Reply(self._seen() or "(no change)")
            rewards, game_info = self.env.close()
            seen = self._seen()
        reward = float((rewards or {}).get(self.agent, 0.0))
        reason = str(game_info.get(self.agent, {}).get("reason", "")).strip()
        final = "\n\n".join(part for part in (seen, f"Game over. {reason}".strip()) if part)
        return Reply(final, reward=reward, done=True, success=reward >= 1.0)


class TextArenaTask(ChatTask):
    """A TextArena game as a chat task; the module docstring describes the episode.

    - ``game``: a TextArena id from :data:`OFFLINE_GAMES` or one of its variants (``"TicTacToe-v0"``).
    - ``split``, ``size``: ``size`` games per split, game seeds ``0..size-1`` (train) or from
      :data:`TEST_SEED_OFFSET` (test) or twice that (validation); ``size`` must be below it.
    - ``opponent``: the policy of the other seats, ``(observation, rng) -> move`` (default
      :func:`random_move`); ``agent_player``: the agent's seat (0 by default; None draws it per episode).
    - ``num_players``: for games outside :data:`OFFLINE_GAMES` (which need ``allow_unchecked=True``).
    """

    system_prompt = (
        "You are playing a game. Follow its rules and answer with your move in the format the game asks "
        "for, e.g. [4]."
    )

    def __init__(
        self,
        game: str = "TicTacToe-v0",
        split: str = "train",
        size: int = 1000,
        opponent: Opponent | None = None,
        agent_player: int | None = 0,
        num_players: int | None = None,
        allow_unchecked: bool = False,
    ) -> None:
        super().__init__(split, size)
        if size >= TEST_SEED_OFFSET:
            raise ValueError(
                f"size={size} must be below {TEST_SEED_OFFSET} so that the splits' game seeds stay apart."
            )
        family = _game_family(game)
        if family is None and not allow_unchecked:
            raise ValueError(
                f"game={game!r} is not among the TextArena games checked to run offline "
                f"({', '.join(OFFLINE_GAMES)}, and their variants); others may download data or call hosted "
                "models. Pass allow_unchecked=True (and num_players=) to use it anyway."
            )
        registry = import_hub("textarena").envs.registration.ENV_REGISTRY
        if f"{game}-raw" not in registry:
            raise ValueError(f"game={game!r} is not a TextArena game id (e.g. 'TicTacToe-v0').")
        players = num_players if num_players is not None else (OFFLINE_GAMES[family] if family else None)
        if players is None:
            raise ValueError(f"num_players= is needed for {game!r}, which textenv has not checked.")
        if agent_player is not None and not 0 <= agent_player < players:
            raise ValueError(f"agent_player={agent_player!r} must be a seat in [0, {players}) or None.")
        if opponent is not None and not callable(opponent):
            raise TypeError("opponent must be a function (observation, rng) -> move, e.g. random_move.")
        self.game, self.num_players, self.agent_player = game, int(players), agent_player
        self.opponent: Opponent = opponent if opponent is not None else random_move
        self.seed_offset = SPLIT_OFFSETS[split]

    def start(self, index: int) -> Dialogue:
        if not 0 <= index < self.size:
            raise IndexError(f"episode {index} is outside this split's {self.size} games.")
        return _GameDialogue(self, self.seed_offset + index)


def load_textarena(task: str, split: str = "train", **kwargs: Any) -> TextArenaTask:
    """The task of ``task="textarena:<game id>"`` (``kwargs``: the env's ``task_kwargs``)."""
    try:
        return TextArenaTask(task.removeprefix(PREFIX), split=split, **kwargs)
    except TypeError as error:
        raise TypeError(f"task_kwargs for {task!r}: {error}") from None
