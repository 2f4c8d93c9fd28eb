"""The task hubs (textenv.hubs): reasoning-gym prompt tasks and TextArena chat tasks, offline, through both
env checkers, with disjoint splits, and one training step of an agent on each."""

from __future__ import annotations

import json
import pickle
import random
import socket
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textenv
from textenv.hubs import (
    OFFLINE_GAMES,
    ReasoningGymScore,
    TextArenaTask,
    hub_reward,
    random_move,
    reasoning_gym_task,
)
from textenv.hubs.packages import import_hub
from textenv.hubs.reasoning_gym import task_names
from textenv.hubs.textarena import TEST_SEED_OFFSET

CHAIN = "reasoning_gym:chain_sum"
TICTACTOE = "textarena:TicTacToe-v0"
CHAT = {"model": "tiny-sp", "max_prompt_tokens": 128, "max_new_tokens": 480, "max_turn_tokens": 4}
"""TextChat-v0 settings for a game with the tiny tokenizer (a board is about 190 tokens of it): the opening
keeps its last 128 tokens (the board), the rest holds two exchanges."""


def needs(module: str) -> None:
    pytest.importorskip(module, reason="the hubs extra is not installed (pip install 'textenv[hubs]')")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection or resolve a host fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("module", ["reasoning_gym", "textarena"])
def test_a_missing_hub_package_names_the_install_command(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'textenv\[hubs\]'"):
        import_hub(module)


# ---- reasoning-gym ----------------------------------------------------------------------------------------
def test_reasoning_gym_task_is_a_textgen_task_scored_by_its_own_scorer(no_network: None) -> None:
    needs("reasoning_gym")
    env = gym.make("TextGen-v0", model="tiny-sp", task=CHAIN, split="test", max_new_tokens=4)
    assert isinstance(env.unwrapped.reward_fn, ReasoningGymScore)
    obs, info = env.reset(seed=0)
    assert info["prompt"].startswith("State the final answer") and info["prompt"].endswith("\nAnswer:")
    answer = json.loads(info["reference"])["answer"]
    completions = [f" {answer}\nmore text", f"<answer>{answer}</answer>", " 0.5", ""]
    scores = hub_reward(CHAIN)([info["prompt"]] * 4, completions, [info["reference"]] * 4)
    assert scores.dtype == np.float32 and scores.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_reasoning_gym_splits_use_disjoint_seeds_and_are_reproducible(no_network: None) -> None:
    needs("reasoning_gym")
    train, _ = reasoning_gym_task("basic_arithmetic", "train", size=50)
    test, reward = reasoning_gym_task("basic_arithmetic", "test", size=50)
    validation, _ = reasoning_gym_task("basic_arithmetic", "validation", size=50)
    keys = [[json.loads(example.reference) for example in ds] for ds in (train, test, validation)]
    seeds = [{key["seed"] + key["index"] for key in split} for split in keys]
    assert len(set.union(*seeds)) == 150  # problem i is drawn from Random(seed + i): no seed is shared
    assert len(set(train.prompts) & set(test.prompts)) < 5
    assert reasoning_gym_task("basic_arithmetic", "train", size=50)[0].prompts == train.prompts
    right = [json.loads(e.reference)["answer"] for e in test]
    assert reward(test.prompts, right, [e.reference for e in test]).tolist() == [1.0] * 50
    copy = pickle.loads(pickle.dumps(reward))  # a picklable reward (for subprocess vector envs)
    assert copy(test.prompts[:2], right[:2], [e.reference for e in test][:2]).tolist() == [1.0, 1.0]


def test_reasoning_gym_bad_input_says_what_to_do() -> None:
    needs("reasoning_gym")
    with pytest.raises(ValueError, match="not a reasoning-gym task"):
        reasoning_gym_task("no_such_task")
    with pytest.raises(ValueError, match="refused its config"):
        reasoning_gym_task("chain_sum", size=2, no_such_option=1)
    dataset, reward = reasoning_gym_task("chain_sum", size=2)
    with pytest.raises(ValueError, match="references are JSON"):
        reward(["p"], ["1"], ["42"])
    other = ReasoningGymScore("chain_sum", min_terms=5, max_terms=6)  # not the config of the prompts
    with pytest.raises(ValueError, match="does not match"):
        other(["p"], ["1"], [dataset[0].reference])
    with pytest.raises(ValueError, match="not a single-turn hub task"):
        gym.make("TextGen-v0", model="tiny-sp", task=TICTACTOE)


def test_every_reasoning_gym_task_builds_and_scores_offline(no_network: None) -> None:
    needs("reasoning_gym")
    for name in task_names():
        dataset, reward = reasoning_gym_task(name, "test", size=2)
        references = [example.reference for example in dataset]
        answers = [json.loads(reference)["answer"] for reference in references]
        scores = reward(dataset.prompts, [" zzz", f" {answers[1]}"], references)  # garbage, the truth
        assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all(), name
        # some scorers give partial credit; game_of_life_halting's (0.1.25) scores any non-empty answer 1
        assert scores[0] < 1.0 or name == "game_of_life_halting", name


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_reasoning_gym_envs_pass_both_checkers(env_id: str) -> None:
    needs("reasoning_gym")
    env = gym.make(env_id, model="tiny-sp", task=CHAIN, max_new_tokens=4)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)


# ---- TextArena --------------------------------------------------------------------------------------------
def test_textarena_game_against_the_offline_opponent(no_network: None) -> None:
    needs("textarena")
    task = TextArenaTask("TicTacToe-v0", split="test", size=10)
    dialogue = task.start(0)
    assert "Tic Tac Toe" in dialogue.opening and "Available Moves" in dialogue.opening
    reply = dialogue.respond("[4]")
    assert "cell 4" in reply.content and "Player 1: [" in reply.content and not reply.done
    assert [task.start(0).respond("[4]").content for _ in range(2)] == [reply.content] * 2  # seeded
    reply = dialogue.respond("[4]")  # occupied: the game's own retry rule answers
    assert "invalid move" in reply.content and not reply.done
    reply = dialogue.respond("[4]")  # a second invalid move in a row loses
    assert reply.done and reply.reward == -1.0 and not reply.success and "Game over" in reply.content


def test_textarena_splits_differ_and_the_users_random_state_is_kept(no_network: None) -> None:
    needs("textarena")
    random.seed(123)
    expected = random.Random(123).random()
    train = [TextArenaTask("KuhnPoker-v0", "train", size=4).start(i).opening for i in range(4)]
    test = [TextArenaTask("KuhnPoker-v0", "test", size=4).start(i).opening for i in range(4)]
    validation = [TextArenaTask("KuhnPoker-v0", "validation", size=4).start(i).opening for i in range(4)]
    assert random.random() == expected  # TextArena reseeds the global random; the task restores it
    assert train != test and validation not in (train, test)  # other games (seeds from TEST_SEED_OFFSET)
    assert [
        TextArenaTask("KuhnPoker-v0", "validation", size=4).start(i).opening for i in range(4)
    ] == validation
    with pytest.raises(ValueError, match="size=1000000000 must be below"):
        TextArenaTask("KuhnPoker-v0", "test", size=TEST_SEED_OFFSET)


@pytest.mark.parametrize("game", list(OFFLINE_GAMES))
def test_every_checked_game_plays_to_the_end_offline(game: str, no_network: None) -> None:
    needs("textarena")
    task = TextArenaTask(game, size=2, agent_player=None)
    dialogue, rng = task.start(1), np.random.default_rng(0)
    observation, reply = dialogue.opening, None
    for _ in range(200):
        reply = dialogue.respond(random_move(observation, rng))
        observation = reply.content or ""
        if reply.done:
            break
    assert reply is not None and reply.done, f"{game} did not end in 200 random moves"
    assert np.isfinite(reply.reward)


def test_textarena_refuses_unchecked_games_and_bad_arguments() -> None:
    needs("textarena")
    with pytest.raises(ValueError, match="checked to run offline"):
        TextArenaTask("Hangman-v0")  # downloads a word list at first use
    with pytest.raises(ValueError, match="not a TextArena game id"):
        TextArenaTask("TicTacToe-v0-huge")  # a variant name TextArena lacks
    with pytest.raises(ValueError, match="seat"):
        TextArenaTask("TicTacToe-v0", agent_player=2)
    with pytest.raises(TypeError, match="task_kwargs"):
        gym.make("TextChat-v0", task=TICTACTOE, task_kwargs={"no_such": 1}, **CHAT)
    with pytest.raises(ValueError, match="not a multi-turn hub task"):
        gym.make("TextChat-v0", task=CHAIN, **CHAT)


@pytest.mark.parametrize("env_id", ["TextChat-v0", "TextChatSeq-v0"])
def test_textarena_envs_pass_both_checkers(env_id: str) -> None:
    needs("textarena")
    env = gym.make(env_id, task=TICTACTOE, **CHAT)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)


def test_textarena_chat_env_resumes_mid_game() -> None:
    needs("textarena")
    env = gym.make("TextChat-v0", task=TICTACTOE, **CHAT).unwrapped  # no wrapper: it needs a reset
    env.reset(seed=0, options={"index": 3})
    for token in [*env.tokenizer("[4]", add_special_tokens=False)["input_ids"], env.eos_token_id]:
        env.step(token)
    state = json.loads(json.dumps(env.state_dict()))
    other = gym.make("TextChat-v0", task=TICTACTOE, **CHAT).unwrapped
    other.load_state_dict(state)
    message = [*env.tokenizer("[0]", add_special_tokens=False)["input_ids"], env.eos_token_id]
    ends = [[e.step(token) for token in message][-1] for e in (env, other)]
    assert ends[0][0]["input_ids"].tolist() == ends[1][0]["input_ids"].tolist()
    assert env.render() == other.render()


# ---- one training step of an agent on each adapter --------------------------------------------------------
@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("TextGen-v0", {"model": "tiny-sp", "task": CHAIN, "max_new_tokens": 6}),
        ("TextChat-v0", {**CHAT, "task": TICTACTOE, "max_turns": 2}),
    ],
    ids=["reasoning_gym", "textarena"],
)
def test_an_agent_trains_a_step_on_each_hub(env_id: str, kwargs: dict[str, Any]) -> None:
    needs("reasoning_gym")
    needs("textarena")
    from agents import PPO

    torch.set_num_threads(1)
    env = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
    agent = PPO(env, model="tiny-sp", episodes_per_rollout=2, minibatch_size=2, seed=0)
    agent.learn(total_timesteps=4)
    assert agent._n_updates >= 1 and agent.rollout_batch is not None
    assert textenv.hubs.is_hub_task(kwargs["task"])
