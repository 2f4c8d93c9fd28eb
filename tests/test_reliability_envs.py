"""The envs hold against what a model or a user feeds them: the model's own text never crashes a task or a
tool, a non-finite reward is refused naming the task, and a tampered state dict is refused naming the key."""

from __future__ import annotations

import json
import sys

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
    tools = CalculatorTask(split="test", size=2).tools
    assert tools is not None
    answer = tools.answer(
        f'<tool_call>{{"name": "calculate", "arguments": {{"expression": "{expression}"}}}}</tool_call>'
    )
    assert answer is not None and answer.content.startswith("error: calculate raised ValueError: ")
    assert "inf" not in answer.content.removeprefix("error: ") and answer.bad_calls == 1


GARBAGE = [
    "",
    "<tool_call>",
    "<tool_call></tool_call>",
    "<tool_call><tool_call>1</tool_call></tool_call>",
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
        answer = task.tools.answer(message) if task.tools is not None else None
        assert answer is None or (isinstance(answer.content, str) and answer.bad_calls == answer.calls)


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
        call = (
            f'<tool_call>{{"name": "calculate", "arguments": {{"expression": "{expression}"}}}}</tool_call>'
        )
        ids = tokenizer(call, add_special_tokens=False)["input_ids"]
        for token in [*ids, eos]:
            _, reward, terminated, truncated, _ = env.step(token)
        assert not terminated and reward == pytest.approx(-0.05)
        assert "tool: error: calculate raised ValueError: " in env.render()


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


TOKEN_SIZES = {"model": "tiny-sp", "max_prompt_tokens": 12, "max_new_tokens": 6}
STATE_ENVS = {
    "TextGen-v0": lambda: gym.make("TextGen-v0", **TOKEN_SIZES).unwrapped,
    "TextGen-v0 vector": lambda: gym.make_vec(
        "TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point", **TOKEN_SIZES
    ),
    "TextGenSeq-v0": lambda: gym.make("TextGenSeq-v0", **TOKEN_SIZES).unwrapped,
    "TextGenSeq-v0 vector": lambda: gym.make_vec(
        "TextGenSeq-v0", num_envs=2, vectorization_mode="vector_entry_point", **TOKEN_SIZES
    ),
    "TextChat-v0": lambda: gym.make("TextChat-v0", **CHAT_SIZES).unwrapped,
    "TextChat-v0 vector": lambda: gym.make_vec(
        "TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point", **CHAT_SIZES
    ),
    "TextChatSeq-v0": lambda: gym.make("TextChatSeq-v0", **CHAT_SIZES).unwrapped,
}


def tamperings(env_id: str, state: dict) -> list[tuple[str, dict]]:
    """(the key the error must name, a tampered copy of ``state``)."""

    def changed(path: list, value: object) -> dict:
        tampered = json.loads(json.dumps(state))
        target = tampered
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return tampered

    if "Chat" in env_id:
        conv = ["conversations", 0]
        return [
            ("length", changed([*conv, "length"], -3)),
            ("length", changed([*conv, "length"], 10**6)),
            ("index", changed([*conv, "index"], 10**9)),
            ("agent_turns", changed([*conv, "agent_turns"], "lots")),
            ("ids", changed([*conv, "ids", 0], -1)),
            ("turns", changed([*conv, "turns"], [{"role": 1}])),
            ("messages", changed([*conv, "messages"], [None])),
            ("done", changed([*conv, "done"], "yes")),
        ]
    if "vector" in env_id and "Seq" in env_id:
        return [("_index", changed(["envs", 1, "_index"], -1)), ("_started", changed(["_started"], 1))]
    if "Seq" in env_id:
        return [
            ("_index", changed(["_index"], -1)),
            ("_index", changed(["_index"], 2.5)),
            ("_completion", changed(["_completion"], 5)),
            ("_sampler", changed(["_sampler"], [-1, 0])),
            ("_np_random", changed(["_np_random"], {"bit_generator": "PCG64", "state": "x"})),
        ]
    if "vector" in env_id:
        return [
            ("_lengths", changed(["_lengths"], [-1, 0])),
            ("_indices", changed(["_indices"], [0, 10**9])),
            ("_input_ids", changed(["_input_ids", 0, 0], 10**9)),
            ("_rngs", changed(["_rngs", 0], {"bit_generator": "Evil"})),
        ]
    return [
        ("_length", changed(["_length"], -3)),
        ("_length", changed(["_length"], "lots")),
        ("_length", changed(["_length"], 7)),
        ("_index", changed(["_index"], 10**9)),
        ("_attention_mask", changed(["_attention_mask", 0], 2)),
        ("_input_ids", changed(["_input_ids"], [1.5] * 18)),
        ("_done", changed(["_done"], "no")),
    ]


@pytest.mark.parametrize("env_id", list(STATE_ENVS))
def test_a_tampered_env_state_is_refused_naming_the_key_and_changes_nothing(env_id: str) -> None:
    env = STATE_ENVS[env_id]()
    env.reset(seed=0)
    state = env.state_dict()
    for key, tampered in tamperings(env_id, state):
        with pytest.raises(ValueError, match=key):
            env.load_state_dict(tampered)
        assert env.state_dict() == state, key  # nothing half-loaded
    env.load_state_dict(state)  # the genuine state still loads


def test_an_error_in_a_users_task_names_the_task_and_the_message_and_keeps_the_episode() -> None:
    def respond(turns: list, message: str) -> Reply:
        raise KeyError("my bug")

    env = gym.make("TextChatSeq-v0", task=FunctionTask(["Say yes."], respond), **CHAT_SIZES)
    env.reset(seed=0)
    before = env.unwrapped.state_dict()
    with pytest.raises(KeyError) as error:
        env.step(np.full(env.action_space.shape, env.unwrapped.eos_token_id))
    if sys.version_info >= (3, 11):  # exception notes
        assert any("FunctionTask" in note for note in getattr(error.value, "__notes__", []))
    assert env.unwrapped.state_dict() == before
