"""Multi-turn envs (TextChat-v0, TextChatSeq-v0) and tasks: checkers, layout, vector = singles, overflow."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textenv
from textenv.chat_tasks import (
    CalculatorTask,
    FunctionTask,
    GuessNumberTask,
    Reply,
    UserSimTask,
    load_chat_task,
    safe_arithmetic,
)
from textenv.envs.chat_core import ChatTokens

SMALL = {"model": "tiny-sp", "task_kwargs": {"high": 3}, "max_prompt_tokens": 96, "max_new_tokens": 96}
DIGITS = [53, 54, 55]  # "1", "2", "3" in tiny-sp


def tokens(env: gym.Env, text: str) -> list[int]:
    return env.unwrapped.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("env_id", ["TextChat-v0", "TextChatSeq-v0"])
def test_envs_pass_both_checkers(env_id: str) -> None:
    env = gym.make(env_id, **SMALL, max_turn_tokens=3)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)


def test_a_turn_appends_the_hosts_reply_and_only_agent_tokens_are_marked() -> None:
    env = gym.make("TextChat-v0", **SMALL, max_turn_tokens=4)
    obs, info = env.reset(seed=0, options={"index": 0})
    secret = int(env.unwrapped.task.secrets[0])
    assert info["turns"][0]["role"] == "system" and "1 to 3" in info["turns"][1]["content"]
    guess = 1 if secret != 1 else 3
    agent_ids = [*tokens(env, str(guess)), env.unwrapped.eos_token_id]
    for token in agent_ids:
        obs, reward, terminated, truncated, info = env.step(token)
    P = env.unwrapped.max_prompt_tokens
    mask, agent = obs["attention_mask"][P:], obs["agent_mask"][P:]
    assert agent[: len(agent_ids)].tolist() == [1] * len(agent_ids) and agent[len(agent_ids) :].sum() == 0
    assert mask.sum() > len(agent_ids)  # the host's turn follows, not marked as the agent's
    text = env.unwrapped.tokenizer.decode(obs["input_ids"][P:][mask == 1].tolist())
    assert ("Higher." if guess < secret else "Lower.") in text and text.rstrip().endswith("Assistant:")
    assert (reward, terminated, truncated) == (0.0, False, False)
    for token in [*tokens(env, str(secret)), env.unwrapped.eos_token_id]:
        obs, reward, terminated, truncated, info = env.step(token)
    assert terminated and info["success"] and reward == pytest.approx(0.9)  # one turn cost for a 2nd guess
    assert [t["role"] for t in info["turns"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert info["turns"][4]["content"] == str(secret)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_per_turn_limit_ends_a_turn_and_max_turns_truncates() -> None:
    env = gym.make("TextChat-v0", **SMALL, max_turn_tokens=2, max_turns=2)
    env.reset(seed=1)
    results = [env.step(200) for _ in range(4)]  # no number, no end token: each turn stops at 2 tokens
    assert [r[3] for r in results] == [False, False, False, True]
    assert results[-1][4]["agent_turns"] == 2 and not results[-1][4]["success"]


def test_overflow_drops_the_oldest_exchange_and_keeps_the_opening() -> None:
    env = gym.make("TextChat-v0", **{**SMALL, "max_new_tokens": 60}, max_turn_tokens=2, max_turns=10)
    obs, _ = env.reset(seed=0)
    P = env.unwrapped.max_prompt_tokens
    opening = obs["input_ids"][:P].copy()
    dropped = []
    for _ in range(12):
        obs, reward, terminated, truncated, info = env.step(200)
        dropped.append(info.get("dropped_tokens", 0))
        if terminated or truncated:
            break
    assert any(dropped), "the conversation outgrew 60 slots, so old exchanges must have been dropped"
    assert (obs["input_ids"][:P] == opening).all()
    N_region = obs["attention_mask"][P:]
    assert N_region[: int(N_region.sum())].all()  # still right-padded and contiguous
    assert obs["agent_mask"][P:][0] == 1  # what remains starts with a whole agent turn


def _drive(single_envs, vector_env, actions) -> None:
    for step_actions in actions:
        v_obs, v_rew, v_term, v_trunc, v_info = vector_env.step(step_actions)
        for row, env in enumerate(single_envs):
            obs, rew, term, trunc, info = env.step(step_actions[row])
            final = None
            if term or trunc:
                final, final_info = obs, info
                obs, info = env.reset()
                assert v_info["final_info"]["turns"][row] == final_info["turns"]
                for key in final:
                    np.testing.assert_array_equal(v_info["final_obs"][row][key], final[key])
            for key in obs:
                np.testing.assert_array_equal(v_obs[key][row], obs[key])
            assert (v_rew[row], v_term[row], v_trunc[row]) == (np.float32(rew), term, trunc)


@pytest.mark.parametrize("env_id", ["TextChat-v0", "TextChatSeq-v0"])
def test_native_vector_env_equals_single_envs(env_id: str) -> None:
    kwargs = {**SMALL, "max_turn_tokens": 3, "max_turns": 3, "task_kwargs": {"high": 3, "size": 20}}
    vector = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", **kwargs)
    singles = [gym.make(env_id, **kwargs).unwrapped for _ in range(3)]
    v_obs, _ = vector.reset(seed=7)
    for row, env in enumerate(singles):
        obs, _ = env.reset(seed=7 + row)
        np.testing.assert_array_equal(v_obs["input_ids"][row], obs["input_ids"])
    rng = np.random.default_rng(0)
    choices = [*DIGITS, 2, 200, 300]  # digits, EOS and other tokens
    shape = (40, 3) if env_id == "TextChat-v0" else (12, 3, 3)
    _drive(singles, vector, rng.choice(choices, size=shape))


def test_seq_env_observation_is_the_left_padded_conversation() -> None:
    env = gym.make("TextChatSeq-v0", **SMALL, max_turn_tokens=4)
    obs, _ = env.reset(seed=0, options={"index": 0})
    secret = int(env.unwrapped.task.secrets[0])
    message = [*tokens(env, str(1 if secret != 1 else 3)), env.unwrapped.eos_token_id]
    obs, reward, terminated, truncated, info = env.step(np.array(message + [300] * (4 - len(message))))
    real = obs["attention_mask"] == 1
    assert real[-int(real.sum()) :].all() and not terminated  # left-padded, ends with the generation prompt
    assert int(obs["agent_mask"].sum()) == len(message)  # the ids after EOS were ignored


def test_smollm2_chat_template_renders_chatml_turns() -> None:
    chat = ChatTokens(textenv.load_tokenizer("smollm2-135m-instruct"))
    end = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert chat.turn_end_id == end and end in chat.end_ids
    closed = chat.tokenizer.decode(chat.reply_ids("user", "Lower.", agent_closed=True))
    assert closed == "\n<|im_start|>user\nLower.<|im_end|>\n<|im_start|>assistant\n"
    open_turn = chat.tokenizer.decode(chat.reply_ids("user", "Lower.", agent_closed=False))
    assert open_turn.startswith("<|im_end|>\n<|im_start|>user")


def test_tiny_tokenizer_without_template_gets_the_fallback() -> None:
    chat = ChatTokens(textenv.load_tokenizer("tiny-sp"))
    text = chat.tokenizer.decode(chat.opening_ids("Be brief.", "Hi"))
    assert text.startswith("System: Be brief.</s>") and text.endswith("Assistant:")


def test_safe_arithmetic_evaluates_and_refuses() -> None:
    assert safe_arithmetic("12*7") == 84 and safe_arithmetic("-(3 + 4) ** 2 // 5") == -10
    assert safe_arithmetic("7 / 2") == 3.5
    for bad in [
        "__import__('os')",
        "x + 1",
        "(1).real",
        "2 ** 100",
        "1 / 0",
        "[1, 2]",
        "1 if 1 else 2",
        "9" * 300,
    ]:
        with pytest.raises(ValueError):
            safe_arithmetic(bad)


def test_calculator_task_answers_tool_calls_and_scores_the_final_answer() -> None:
    task = CalculatorTask(split="test", size=5)
    dialogue = task.start(0)
    _, answer = task.problems[0]
    assert task.tools is not None
    answer_of = task.tools.answer(
        'Let me compute <tool_call>{"name": "calculate", "arguments": {"expression": "2*(3+4)"}}</tool_call>'
    )
    assert answer_of is not None and answer_of.content == "14" and answer_of.reward == -0.05
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "os.system(1)"}}</tool_call>'
    error = task.tools.answer(call)
    assert error is not None and error.content.startswith("error: calculate raised ValueError: not allowed")
    final = dialogue.respond(f"The answer is {int(answer)}.")
    assert final.done and final.success and final.reward == 1.0 and final.content is None
    assert not task.start(0).respond("It is 123456789.").success
    assert CalculatorTask("train", size=5).problems != task.problems  # the splits differ


def test_guess_task_rewards_fewer_turns() -> None:
    task = GuessNumberTask(split="train", size=10, high=10)
    secret = int(task.secrets[3])
    fast, slow = task.start(3), task.start(3)
    assert fast.respond(f"It is {secret}").reward == 1.0
    assert slow.respond("hmm").content.startswith("Please answer")
    assert slow.respond(str(secret)).reward == pytest.approx(0.9)


def test_guess_task_without_hints_only_says_wrong() -> None:
    """hints=False: the host gives no direction (the floor's game), but a right guess still wins."""
    hinted, hidden = (
        GuessNumberTask(split="test", size=4, high=10),
        GuessNumberTask("test", 4, high=10, hints=False),
    )
    secret = int(hidden.secrets[0])
    assert secret == int(hinted.secrets[0])  # same episodes
    wrong = str(1 if secret != 1 else 2)
    assert hinted.start(0).respond(wrong).content in ("Higher.", "Lower.")
    dialogue = hidden.start(0)
    assert dialogue.respond(wrong).content == "Wrong."
    assert dialogue.respond(str(secret)).success


def test_user_simulator_is_a_frozen_lm_and_rewards_sentiment() -> None:
    task = UserSimTask(split="test", size=4, model="tiny-sp", reply_tokens=6)
    first, second = task.start(0), task.start(0)
    a, b = first.respond("I am sorry, let me help."), second.respond("I am sorry, let me help.")
    assert a.content == b.content and a.content  # greedy: reproducible
    assert -1.0 <= a.reward <= 1.0 and not a.done


def test_function_task_and_bad_arguments() -> None:
    task = FunctionTask(["Say yes."], lambda turns, message: Reply(None, float("yes" in message), done=True))
    env = gym.make("TextChat-v0", model="tiny-sp", task=task, max_prompt_tokens=32, max_new_tokens=16)
    env.reset(seed=0)
    for token in tokens(env, "yes"):
        env.step(token)
    _, reward, terminated, _, info = env.step(env.unwrapped.eos_token_id)
    assert terminated and reward == 1.0 and info["turns"][-1] == {"role": "assistant", "content": "yes"}
    with pytest.raises(ValueError, match="not a chat task"):
        load_chat_task("chess")
    with pytest.raises(TypeError, match="task_kwargs for 'guess'"):
        load_chat_task("guess", colour="red")
    with pytest.raises(ValueError, match="max_turn_tokens"):
        gym.make("TextChat-v0", model="tiny-sp", max_new_tokens=4, max_turn_tokens=8)
    with pytest.raises(ValueError, match="index"):
        env.reset(options={"index": 10})


@pytest.mark.parametrize("env_id", ["TextChat-Guess-v0", "TextChat-Calculator-v0", "TextChat-UserSim-v0"])
def test_task_ids_are_registered(env_id: str) -> None:
    kwargs = {"task_kwargs": {"model": "tiny-sp"}} if "UserSim" in env_id else {}
    env = gym.make(env_id, model="tiny-sp", **kwargs)
    obs, info = env.reset(seed=0)
    assert obs["input_ids"].shape == env.observation_space["input_ids"].shape and info["prompt"]


def _play(env, steps: int, seed: int, width: tuple[int, ...], single: bool) -> list:
    """``steps`` seeded random actions (digits, EOS and other tokens: guesses, turn ends and invalid turns);
    returns what each step gave back."""
    rng = np.random.default_rng(seed)
    unwrapped = env.unwrapped
    choices = np.array([*DIGITS, unwrapped.eos_token_id, 300, 301])
    results = []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(rng.choice(choices, size=width))
        final = info.get("final_info", {}).get("turns") if "final_info" in info else info.get("turns")
        done = np.asarray(terminated) | np.asarray(truncated)
        results.append((obs, np.asarray(reward).tolist(), done.tolist(), repr(final)))
        if single and (terminated or truncated):
            env.reset()
    return results


def _dialogues(env) -> list:
    """The state of every row's running dialogue (None when no episode runs)."""
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "envs"):
        conversations = [row._conv for row in unwrapped.envs]
    else:
        conversations = unwrapped._convs if hasattr(unwrapped, "_convs") else [unwrapped._conv]
    return [None if c.dialogue is None else vars(c.dialogue) for c in conversations]


@pytest.mark.parametrize(
    ("env_id", "num_envs"),
    [("TextChat-v0", None), ("TextChat-v0", 3), ("TextChatSeq-v0", None), ("TextChatSeq-v0", 3)],
    ids=["token", "token-vector", "seq", "seq-vector"],
)
def test_state_dict_resumes_mid_conversation_exactly(env_id: str, num_envs: int | None) -> None:
    """Save mid-run (rows inside a turn and between turns), load into a new env through JSON, and both
    envs go on identically: the same sampled episodes, tokens, rewards (the guess count is part of the
    dialogue's state: a later guess pays less) and turns."""
    import json

    settings = {**SMALL, "max_turn_tokens": 3, "max_turns": 4, "max_new_tokens": 48}
    if num_envs is None:

        def make():
            return gym.make(env_id, **settings).unwrapped  # no wrapper: it needs a reset
    else:

        def make():
            return gym.make_vec(
                env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **settings
            )

    seq = env_id == "TextChatSeq-v0"
    width = ((num_envs,) if num_envs else ()) + ((3,) if seq else ())
    env = make()
    env.reset(seed=7)

    def between_turns(state: dict) -> bool:  # a running conversation after at least one agent message
        conversations = [c for s in state.get("envs", [state]) for c in s["conversations"]]
        return any(not c["done"] and c["messages"] for c in conversations)

    for step in range(60):
        _play(env, 1, seed=step, width=width, single=num_envs is None)
        state = json.loads(json.dumps(env.unwrapped.state_dict()))
        if step >= 5 and between_turns(state):
            break
    assert between_turns(state), "the save should catch a conversation after an agent turn"
    resumed = make()
    resumed.unwrapped.load_state_dict(state)
    assert _dialogues(resumed) == _dialogues(env)  # replayed: e.g. the guesses so far
    expected, got = (
        _play(env, 30, seed=2, width=width, single=num_envs is None),
        _play(resumed, 30, seed=2, width=width, single=num_envs is None),
    )
    for (obs_a, *rest_a), (obs_b, *rest_b) in zip(expected, got, strict=True):
        assert rest_a == rest_b
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
    assert any(any(np.atleast_1d(done)) for _, _, done, _ in expected)  # episodes ended and restarted


def test_state_dict_refuses_another_env() -> None:
    env = gym.make_vec("TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point", **SMALL)
    env.reset(seed=0)
    state = env.unwrapped.state_dict()
    other = gym.make_vec("TextChat-v0", num_envs=3, vectorization_mode="vector_entry_point", **SMALL)
    with pytest.raises(ValueError, match="num_envs"):
        other.unwrapped.load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        gym.make("TextChat-v0", **SMALL).unwrapped.load_state_dict({"_np_random": None})
    bigger = gym.make_vec(
        "TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point", **{**SMALL, "max_new_tokens": 97}
    )
    with pytest.raises(ValueError, match="max_prompt_tokens \\+ max_new_tokens"):
        bigger.unwrapped.load_state_dict(state)


def test_chat_tasks_have_a_validation_split_drawn_apart_from_train_and_test() -> None:
    """split="validation" (to choose settings on) draws its own episodes, reproducibly; an unknown split says
    which ones exist."""
    secrets = {
        split: [int(s) for s in GuessNumberTask(split=split, size=64, high=1000).secrets]
        for split in ("train", "validation", "test")
    }
    assert secrets["validation"] not in (secrets["train"], secrets["test"])
    assert [int(s) for s in GuessNumberTask(split="validation", size=64, high=1000).secrets] == secrets[
        "validation"
    ]
    env = gym.make(
        "TextChat-v0", model="tiny-sp", task="guess", split="validation", task_kwargs={"high": 1000}
    )
    env.reset(seed=0, options={"index": 5})
    assert env.unwrapped.core.task.split == "validation"
    with pytest.raises(ValueError, match="split='dev' is not known; use one of train, validation, test"):
        GuessNumberTask(split="dev")


def test_calculator_task_without_its_tool_asks_the_same_problems_in_the_head() -> None:
    with_tool, without = (
        CalculatorTask(split="test", size=3),
        CalculatorTask(split="test", size=3, tool=False),
    )
    assert with_tool.problems == without.problems and without.tools is None and with_tool.tools is not None
    assert "calculate" not in without.system_prompt and "calculate" in with_tool.system_prompt
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "1+1"}}</tool_call>'
    assert without.start(0).respond(call).done  # a call is read as the (wrong or right) answer
    with pytest.raises(TypeError, match="tool='no' must be True"):
        CalculatorTask(tool="no")
