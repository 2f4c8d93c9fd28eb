"""Tools from Python functions in the chat envs (textenv.tools): description, calls, bad calls, counts."""

from __future__ import annotations

import json
import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import textenv  # noqa: F401  (registers the envs)
from textenv.chat_tasks import FunctionTask, Reply, render_chat
from textenv.envs.chat_core import ChatTemplateError
from textenv.models import load_tokenizer
from textenv.tools import Tools, template_supports_tools

CALLS: list[tuple[int, int]] = []


def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: the first number
        b: the second number
    """
    CALLS.append((a, b))
    return a + b


def sleepy(seconds: float) -> str:
    """Sleep a while.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "awake"


def broken(text: str) -> str:
    """Always fails.

    Args:
        text: anything
    """
    raise RuntimeError(f"cannot handle {text}")


def chatty(n: int) -> str:
    """Talks a lot.

    Args:
        n: how many characters
    """
    return "x" * n


def answer_five(turns: list[dict[str, str]], message: str) -> Reply:
    return Reply(None, reward=float("5" in message), done=True, success="5" in message)


def call(name: str, **arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def make_env(**tool_kwargs: Any) -> Any:
    tools = Tools([add, sleepy, broken, chatty], **tool_kwargs)
    task = FunctionTask(["What is 2 + 3?"], answer_five, tools=tools)
    return gym.make(
        "TextChat-v0",
        model="tiny-sp",
        task=task,
        max_prompt_tokens=64,
        max_new_tokens=900,
        max_turn_tokens=300,
        max_turns=8,
        render_mode="ansi",
    )


def say(env: Any, text: str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
    tokenizer = env.unwrapped.tokenizer
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        env.step(token)
    return env.step(env.unwrapped.eos_token_id)


def last_turn(env: Any) -> str:
    return env.render().split("\ntool: ")[-1]


def test_a_good_call_is_answered_in_a_tool_turn_and_the_task_sees_the_rest() -> None:
    env = make_env(call_cost=0.05)
    env.reset(seed=0)
    obs, reward, terminated, truncated, _ = say(env, "Let me add. " + call("add", a=2, b=3))
    assert last_turn(env) == "5" and reward == pytest.approx(-0.05) and not (terminated or truncated)
    turns = env.unwrapped.core.transcript(env.unwrapped._conv).splitlines()
    assert turns[-1] == "tool: 5"  # rendered with the role "tool"
    assert int(obs["agent_mask"].sum()) < int(obs["attention_mask"][64:].sum())  # the tool's tokens follow
    _, reward, terminated, _, info = say(env, "It is 5.")
    assert terminated and reward == 1.0 and info["success"]
    assert info["tool_calls"] == 1 and info["bad_tool_calls"] == 0
    assert [t["role"] for t in info["turns"]] == ["system", "user", "assistant", "tool", "assistant"]


BAD_CALLS = {
    "malformed JSON": ("<tool_call>{name: add}</tool_call>", "error: the call is not valid JSON"),
    "unclosed tag": ('<tool_call>{"name": "add"', "error: the call has no closing </tool_call>"),
    "no name": ('<tool_call>{"arguments": {}}</tool_call>', 'must be a JSON object with a "name"'),
    "unknown tool": (call("subtract", a=1), "error: unknown tool 'subtract'; the tools are: add, sleepy"),
    "wrong type": (call("add", a="2", b=3), "error: bad arguments for add: 'a' must be integer, got string"),
    "missing argument": (call("add", a=2), "error: bad arguments for add: missing 'b' (integer)"),
    "unknown argument": (call("add", a=2, b=3, c=4), "unknown argument 'c' (the arguments are: a, b)"),
    "timeout": (call("sleepy", seconds=2.0), "error: sleepy took longer than 0.2 s and was abandoned"),
    "exception": (call("broken", text="it"), "error: broken raised RuntimeError: cannot handle it"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_each_bad_call_becomes_a_tool_turn_that_says_what_was_wrong(case: str) -> None:
    message, expected = BAD_CALLS[case]
    env = make_env(timeout=0.2, call_cost=0.05, bad_call_cost=0.25)
    env.reset(seed=0)
    CALLS.clear()
    _, reward, terminated, truncated, _ = say(env, message)
    assert expected in last_turn(env)
    assert reward == pytest.approx(-0.3) and not (terminated or truncated)  # the episode goes on
    assert CALLS == []  # bad arguments never reach the function
    _, reward, terminated, _, info = say(env, "It is 5.")
    assert terminated and info["tool_calls"] == 1 and info["bad_tool_calls"] == 1


def test_long_outputs_are_cut_and_several_calls_are_answered_in_order() -> None:
    env = make_env(max_output_chars=20)
    env.reset(seed=0)
    say(env, call("chatty", n=50) + call("add", a=1, b=1) + call("nope"))
    lines = env.render().split("tool: ")[-1].splitlines()
    assert lines[0] == "[1] " + "x" * 20 + "... [cut: 50 characters in all]"
    assert lines[1] == "[2] 2" and lines[2].startswith("[3] error: unknown tool 'nope'")


def test_max_calls_sends_later_calls_to_the_task_and_a_restored_episode_runs_no_tool_again() -> None:
    env = make_env(max_calls=1)
    env.reset(seed=0)
    CALLS.clear()
    say(env, call("add", a=2, b=3))
    state = env.unwrapped.state_dict()
    fresh = make_env(max_calls=1)
    fresh.reset(seed=1)
    fresh.unwrapped.load_state_dict(state)
    assert CALLS == [(2, 3)]  # the replay did not call add again
    _, reward, terminated, _, info = say(fresh, call("add", a=2, b=3) + " so 5")  # past max_calls: an answer
    assert terminated and reward == 1.0 and info["tool_calls"] == 1 and CALLS == [(2, 3)]


def test_a_tools_env_passes_gymnasiums_checker() -> None:
    check_env(make_env().unwrapped, skip_render_check=True)


def test_the_fallback_rendering_describes_the_tools_in_the_system_prompt() -> None:
    tokenizer = load_tokenizer("tiny-sp")  # no chat template: textenv's fallback, which ignores tools
    assert not template_supports_tools(tokenizer)
    text = render_chat(tokenizer, [{"role": "user", "content": "Hi"}], True, tools=Tools([add]))
    assert text.startswith('System: You can call these tools:\n<tools>\n{"name": "add"')
    assert '<tool_call>{"name": "<tool name>", "arguments":' in text and text.endswith("Assistant:")


def test_a_template_that_reads_tools_gets_the_schemas() -> None:
    tokenizer = load_tokenizer("tiny-sp")
    tokenizer.chat_template = (
        "{% if tools %}Tools: {% for t in tools %}{{ t['function']['name'] }} {% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    assert template_supports_tools(tokenizer)
    text = render_chat(tokenizer, [{"role": "system", "content": "S"}], True, tools=Tools([add, broken]))
    assert text == "Tools: add broken system: S\nassistant:"  # transformers trims the newline after a block


def test_a_template_that_cannot_render_a_tool_turn_is_refused_for_a_task_with_tools() -> None:
    tokenizer = load_tokenizer("tiny-sp")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    plain = FunctionTask(["Hi"], answer_five)
    gym.make("TextChat-v0", tokenizer=tokenizer, task=plain)  # without tools the template is fine
    with pytest.raises(ChatTemplateError, match="cannot render"):
        gym.make("TextChat-v0", tokenizer=tokenizer, task=FunctionTask(["Hi"], answer_five, tools=[add]))


def undocumented(a: int) -> int:
    return a


def untyped(a):  # type: ignore[no-untyped-def]
    """No hints.

    Args:
        a: a value
    """
    return a


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ([undocumented], "tools\\[0\\] \\('undocumented'\\).*Google-style docstring"),
        ([add, untyped], "tools\\[1\\] \\('untyped'\\).*type hints"),
        (add, "non-empty list of functions"),
        ([], "non-empty list of functions"),
        ([add, "add"], "tools\\[1\\] is str"),
    ],
)
def test_tools_that_cannot_be_described_are_refused_with_the_fix(tools: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Tools(tools)


def test_duplicate_names_and_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        Tools([add, add])
    for bad in ({"timeout": 0}, {"max_calls": -1}, {"bad_call_cost": float("nan")}, {"max_output_chars": 0}):
        with pytest.raises(ValueError):
            Tools([add], **bad)


def test_the_vector_env_counts_tool_calls_per_row() -> None:
    task = FunctionTask(["What is 2 + 3?"], answer_five, tools=[add])
    envs = gym.make_vec(
        "TextChat-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model="tiny-sp",
        task=task,
        max_prompt_tokens=64,
        max_new_tokens=400,
        max_turn_tokens=120,
        max_turns=2,
    )
    envs.reset(seed=0)
    unwrapped: Any = envs.unwrapped
    tokenizer, eos = unwrapped.tokenizer, unwrapped.eos_token_id
    messages = [call("add", a=2, b=3), "<tool_call>oops</tool_call>"]
    plans = [[*tokenizer(m, add_special_tokens=False)["input_ids"], eos, eos] for m in messages]
    counts: dict[int, tuple[int, int]] = {}
    for step in range(max(map(len, plans))):
        actions = np.array([plan[step] if step < len(plan) else eos for plan in plans])
        _, _, terminated, truncated, info = envs.step(actions)
        for row in np.flatnonzero(terminated | truncated):
            final = info["final_info"]
            counts.setdefault(int(row), (int(final["tool_calls"][row]), int(final["bad_tool_calls"][row])))
    assert counts == {0: (1, 0), 1: (1, 1)}


def test_a_prompt_too_short_for_the_tools_description_is_warned_about() -> None:
    task = FunctionTask(["What is 2 + 3?"], answer_five, tools=[add])
    env = gym.make("TextChat-v0", model="tiny-sp", task=task, max_prompt_tokens=32)
    with pytest.warns(UserWarning, match="make the env with max_prompt_tokens=\\d+ or more"):
        env.reset(seed=0)
