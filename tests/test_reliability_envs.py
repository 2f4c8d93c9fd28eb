"""The envs hold against what a model or a user feeds them: the model's own text never crashes a task or a
tool, a non-finite reward is refused naming the task, and a tampered state dict is refused naming the key."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401  (registers the envs)
from textenv.chat_tasks import (
    CalculatorTask,
    FunctionTask,
    GuessNumberTask,
    Reply,
    UserSimTask,
    safe_arithmetic,
)

NASTY = [
    "0**-1",
    "0.0 ** -2",
    "9" * 190 + ".0**2",
    "9" * 190 + "**2",
    "1e309",
    "-1e309",
    "1e308 * 10",
    "(-8) ** 0.5",
    "10 ** 64 ** 64",
    "2 ** 64 * 2 ** 64",
    "1e15 // 1e-300",
    "5 % 0.0",
    "(" * 100 + "1" + ")" * 99,
    "1\x00",
    "",
    "   ",
    "1 +",
    "é",
    "1_000_000_000_000_000_000",
]


@pytest.mark.parametrize("expression", NASTY)
def test_arithmetic_the_model_writes_gets_a_value_error_or_a_finite_bounded_value(expression: str) -> None:
    try:
        value = safe_arithmetic(expression)
    except ValueError as error:
        assert str(error)
    else:
        assert abs(value) <= 1e15


@pytest.mark.parametrize("expression", ["0**-1", "9" * 190 + ".0**2", "1e309", "(" * 100 + "1"])
def test_the_calculator_tool_answers_every_call_with_a_result_or_an_error(expression: str) -> None:
    reply = CalculatorTask(split="test", size=2).start(0).respond(f"<calc>{expression}</calc>")
    assert reply.content.startswith("<result>error: ") and not reply.done
    assert "inf" not in reply.content.removeprefix("<result>error: ")


GARBAGE = [
    "",
    "<calc>",
    "<calc></calc>",
    "<calc><calc>1</calc></calc>",
    "9" * 5000,
    "-" + "9" * 400 + ".5",
    "\x00\udcff\ufffd",
    "<result>1</result>",
    "1e999 nan inf -0",
]


@pytest.mark.parametrize("message", GARBAGE)
def test_the_tasks_answer_garbage_with_a_reply(message: str) -> None:
    for task in (CalculatorTask(split="test", size=2), GuessNumberTask(split="test", size=2)):
        reply = task.start(0).respond(message)
        assert reply.content is None or isinstance(reply.content, str)
        assert -1 <= reply.reward <= 1


def test_the_user_simulator_answers_garbage() -> None:
    dialogue = UserSimTask(split="test", size=2, model="tiny-sp", reply_tokens=4).start(0)
    for message in GARBAGE:
        reply = dialogue.respond(message)
        assert isinstance(reply.content, str) and -1 <= reply.reward <= 1


def test_a_calculator_episode_survives_the_models_worst_text() -> None:
    env = gym.make(
        "TextChat-Calculator-v0", model="tiny-sp", max_new_tokens=400, max_turn_tokens=200, render_mode="ansi"
    )
    tokenizer, eos = env.unwrapped.tokenizer, env.unwrapped.eos_token_id
    for expression in ["0**-1", "9" * 60 + ".0**2", "1e309", "2**64**64"]:
        env.reset(seed=0)
        ids = tokenizer(f"<calc>{expression}</calc>", add_special_tokens=False)["input_ids"]
        for token in [*ids, eos]:
            _, reward, terminated, truncated, _ = env.step(token)
        assert not terminated and reward == pytest.approx(-0.05)
        assert "<result>error: " in env.render()


def nan_task(reward: object) -> FunctionTask:
    return FunctionTask(["Say yes."], lambda turns, message: Reply(None, reward, done=True))  # type: ignore[arg-type]


CHAT_SIZES = {"model": "tiny-sp", "max_prompt_tokens": 32, "max_new_tokens": 16, "max_turn_tokens": 4}


@pytest.mark.parametrize("env_id", ["TextChat-v0", "TextChatSeq-v0"])
@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("reward", [float("nan"), float("inf"), 1e39, "1", None])
def test_a_chat_env_refuses_a_non_finite_or_non_numeric_reward_naming_the_task(
    env_id: str, vector: bool, reward: object
) -> None:
    task = nan_task(reward)
    if vector:
        mode = "vector_entry_point"
        env = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, task=task, **CHAT_SIZES)
    else:
        env = gym.make(env_id, task=task, **CHAT_SIZES)
    env.reset(seed=0)
    action = np.full(env.action_space.shape, env.unwrapped.eos_token_id)
    with pytest.raises((ValueError, TypeError), match="FunctionTask"):
        env.step(action)
