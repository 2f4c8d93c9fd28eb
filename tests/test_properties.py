"""Property-based tests (hypothesis) at the boundaries a user or a model feeds.

Each property: the input is handled correctly, or refused with a clear ``ValueError`` / ``TypeError`` that
names the argument; never a crash inside a dependency (IndexError, KeyError, OverflowError, ...), never a
silent wrong value. Example counts are small for the 2-core CI; ``TEXTENV_HYPOTHESIS_EXAMPLES=500`` runs
them longer by hand.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import textenv  # noqa: F401  (registers the envs)
from rewards.validation import check_scores
from textenv.chat_tasks import CalculatorTask, GuessNumberTask, safe_arithmetic
from textenv.data import PromptDataset

EXAMPLES = int(os.environ.get("TEXTENV_HYPOTHESIS_EXAMPLES", "30"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLEAR = (ValueError, TypeError)
SIZES = {"model": "tiny-sp", "max_prompt_tokens": 8, "max_new_tokens": 5}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def letter_e(prompts, completions, references=None) -> np.ndarray:
    return np.array([c.count("e") / max(1, len(c)) for c in completions], dtype=np.float32)


ENV = gym.make("TextGen-v0", reward_fn=letter_e, **SIZES)
SEQ = gym.make("TextGenSeq-v0", reward_fn=letter_e, **SIZES)
VOCAB = ENV.unwrapped.vocab_size
ACTIONS = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=4)
    | st.none()
    | st.lists(st.integers(-5, VOCAB + 5), max_size=3).map(np.array)
    | st.integers(-3, VOCAB + 3).map(np.int64)
    | st.booleans()
)


# ---- env actions and action sequences -------------------------------------------------------------------
@SETTINGS
@given(action=ACTIONS)
def test_a_token_env_takes_a_valid_action_or_names_the_action(action: Any) -> None:
    ENV.reset(seed=0)
    before = ENV.unwrapped.state_dict()
    try:
        obs, reward, terminated, truncated, _ = ENV.step(action)
    except CLEAR as error:
        assert "action" in str(error)
        assert ENV.unwrapped.state_dict() == before  # a refused action changes nothing
    else:
        assert ENV.observation_space.contains(obs) and math.isfinite(reward)


@SETTINGS
@given(tokens=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12), seed=st.integers(0, 2**31))
def test_any_token_sequence_gives_valid_observations_and_ends_within_n(tokens: list[int], seed: int) -> None:
    obs, _ = ENV.reset(seed=seed)
    step = 0
    for token in tokens:
        step += 1
        obs, reward, terminated, truncated, info = ENV.step(token)
        assert ENV.observation_space.contains(obs)
        assert isinstance(reward, float) and math.isfinite(reward)
        assert step <= SIZES["max_new_tokens"]
        if terminated or truncated:
            assert "completion" in info and truncated == (step == SIZES["max_new_tokens"] and not terminated)
            obs, _ = ENV.reset()
            step = 0


@SETTINGS
@given(action=st.lists(st.integers(-2, VOCAB + 2), min_size=0, max_size=7).map(np.array) | ACTIONS)
def test_a_sequence_env_takes_a_whole_completion_or_names_the_action(action: Any) -> None:
    SEQ.reset(seed=0)
    try:
        obs, reward, terminated, *_ = SEQ.step(action)
    except CLEAR as error:
        assert "action" in str(error)
    else:
        assert terminated and SEQ.observation_space.contains(obs) and math.isfinite(reward)


# ---- reward outputs -------------------------------------------------------------------------------------
REWARD_OUTPUTS = (
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3)
    | st.lists(st.integers(-(2**70), 2**70), max_size=3)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=3)
    | st.none()
    | st.lists(st.lists(st.floats(-1, 1), max_size=2), max_size=2)
    | st.lists(st.booleans(), max_size=2)
    | st.lists(st.complex_numbers(), min_size=1, max_size=2)
    | JSON
)


@SETTINGS
@given(output=REWARD_OUTPUTS, batch=st.integers(1, 3))
def test_reward_outputs_are_finite_float32_of_the_batch_or_refused_naming_the_reward(
    output: Any, batch: int
) -> None:
    try:
        scores = check_scores(output, batch, "MyReward")
    except CLEAR as error:
        assert "MyReward" in str(error)
    else:
        assert scores.dtype == np.float32 and scores.shape == (batch,) and np.isfinite(scores).all()
        assert np.allclose(scores, np.asarray(output, dtype=np.float64).reshape(-1), rtol=1e-6)


@SETTINGS
@given(output=REWARD_OUTPUTS)
def test_an_env_with_a_bad_reward_refuses_it_and_keeps_the_episode(output: Any) -> None:
    env = gym.make("TextGenSeq-v0", reward_fn=lambda p, c, r=None: output, **SIZES)
    env.reset(seed=0)
    try:
        _, reward, *_ = env.step(np.zeros(SIZES["max_new_tokens"], dtype=np.int64))
    except CLEAR as error:
        assert "reward" in str(error).lower() or "<lambda>" in str(error)
    else:
        assert math.isfinite(reward)


# ---- dataset rows ---------------------------------------------------------------------------------------
ROWS = st.lists(
    st.text(max_size=10)
    | st.dictionaries(st.sampled_from(["prompt", "reference", "text", "x"]), JSON, max_size=3)
    | JSON,
    max_size=4,
)


@SETTINGS
@given(rows=ROWS)
def test_dataset_rows_are_examples_or_refused_naming_the_row(rows: list[Any]) -> None:
    try:
        dataset = PromptDataset(rows)
    except CLEAR as error:
        assert str(error)
    else:
        assert len(dataset) == len(rows)
        assert all(isinstance(example.prompt, str) and example.prompt for example in dataset)


# ---- env state dicts ------------------------------------------------------------------------------------
def mutate(state: Any, path: list[int], value: Any) -> Any:
    """``state`` with the leaf or item chosen by ``path`` (indices into the nested keys) set to ``value``."""
    state = copy.deepcopy(state)
    target: Any = state
    for step, choice in enumerate(path):
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = keys[choice % len(keys)]
        child = target[key]
        if step == len(path) - 1 or not isinstance(child, (dict, list)) or not child:
            target[key] = value
            break
        target = child
    return state


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0", "TextChat-v0"])
def test_a_mutated_env_state_loads_or_is_refused_without_changing_the_env(env_id: str) -> None:
    extra = {"max_turn_tokens": 3} if "Chat" in env_id else {}
    env = gym.make(env_id, **{**SIZES, "max_new_tokens": 12}, **extra).unwrapped
    env.reset(seed=0)
    genuine = env.state_dict()

    @SETTINGS
    @given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), value=JSON)
    def check(path: list[int], value: Any) -> None:
        env.load_state_dict(genuine)
        tampered = mutate(genuine, path, value)
        try:
            env.load_state_dict(tampered)
        except ValueError as error:
            assert "saved" in str(error) or "state" in str(error)
            assert env.state_dict() == genuine
        else:  # accepted: the env still works
            if not getattr(env, "_done", False) and not all(
                c.get("done") for c in tampered.get("conversations", [{}])
            ):
                env.step(env.action_space.sample())

    check()


# ---- tool calls -----------------------------------------------------------------------------------------
NUMBER = (
    st.integers(-(10**30), 10**30).map(str)
    | st.floats(allow_nan=False).map(repr)
    | st.sampled_from(["0", "1e309", "9" * 60, "0.0", "-0", "1_0", "0x10", ".5", "5.", "1e-320"])
)
EXPRESSION = st.recursive(
    NUMBER,
    lambda inner: (
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"
        )
        | inner.map(lambda e: f"-{e}")
    ),
    max_leaves=6,
)


@SETTINGS
@given(expression=EXPRESSION | st.text(max_size=40))
def test_arithmetic_is_a_bounded_finite_number_or_a_value_error(expression: str) -> None:
    try:
        value = safe_arithmetic(expression)
    except ValueError as error:
        assert str(error)
    else:
        assert isinstance(value, (int, float)) and math.isfinite(value) and abs(value) <= 1e15


@SETTINGS
@given(inside=EXPRESSION | st.text(max_size=60) | JSON.map(json.dumps), around=st.text(max_size=20))
def test_the_calculator_answers_any_call_with_a_result_turn(inside: str, around: str) -> None:
    tools = CalculatorTask(split="test", size=2).tools
    assert tools is not None
    call = json.dumps({"name": "calculate", "arguments": {"expression": inside}})
    for message in (f"{around}<tool_call>{call}</tool_call>", f"{around}<tool_call>{inside}</tool_call>"):
        answer = tools.answer(message)
        assert answer is not None and isinstance(answer.content, str) and answer.calls >= 1


@SETTINGS
@given(message=st.text(max_size=80) | JSON.map(json.dumps))
def test_the_scripted_tasks_answer_any_message(message: str) -> None:
    for task in (CalculatorTask(split="test", size=2), GuessNumberTask(split="test", size=2)):
        reply = task.start(0).respond(message)
        assert reply.content is None or isinstance(reply.content, str)
        assert math.isfinite(reply.reward) and -1 <= reply.reward <= 1


# ---- config values --------------------------------------------------------------------------------------
CONFIG_VALUES = (
    st.integers(-(2**65), 2**65) | st.floats(allow_nan=True) | st.booleans() | st.none() | st.text(max_size=4)
)


@SETTINGS
@given(data=st.data())
def test_agent_settings_are_accepted_with_their_type_or_refused_naming_them(data: st.DataObject) -> None:
    import dataclasses

    from agents.dqn import DQNConfig
    from agents.ppo import PPOConfig

    config_class = data.draw(st.sampled_from([PPOConfig, DQNConfig]))
    fields = [f for f in dataclasses.fields(config_class) if str(f.type) in ("int", "float", "int | None")]
    field = data.draw(st.sampled_from(fields))
    value = data.draw(CONFIG_VALUES)
    try:
        config = config_class(**{field.name: value})
    except CLEAR as error:
        assert field.name in str(error) or "episodes_per_rollout" in str(error), (field.name, str(error))
    else:
        kept = getattr(config, field.name)
        if str(field.type).startswith("int") and kept is not None:
            assert isinstance(kept, (int, np.integer)) and not isinstance(kept, bool)
        if isinstance(kept, float):
            assert math.isfinite(kept)


@SETTINGS
@given(data=st.data())
def test_env_sizes_are_accepted_or_refused_naming_them(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["max_prompt_tokens", "max_new_tokens", "group_size"]))
    value = data.draw(
        st.integers(-5, 2**40) | st.floats(allow_nan=True) | st.booleans() | st.text(max_size=3)
    )
    bound = 2**62 if name == "group_size" else 2**20  # any group size, sizes up to MAX_SEQUENCE_TOKENS
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= bound:
        return  # a valid size (building large ones would only cost memory)
    with pytest.raises(CLEAR, match=name):
        gym.make("TextGen-v0", **{**SIZES, name: value})
