"""check_chat_template: the token-continuity check of chat templates, and the chat envs refusing a template
that breaks it."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import pytest

import textenv
from textenv import ChatTemplateError, check_chat_template
from textenv.chat_tasks import FALLBACK_CHAT_TEMPLATE

CHATML_HEAD = "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
CHATML_TAIL = "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
DROPS_EARLIER_ASSISTANT_TURNS = (
    CHATML_HEAD + "{{ '(earlier answer)' if m['role'] == 'assistant' else m['content'] }}" + CHATML_TAIL
)
"""Renders earlier assistant turns as a placeholder (a template that summarises or elides old turns)."""
STRIPS_EARLIER_REASONING = (
    CHATML_HEAD
    + "{% if m['role'] == 'assistant' and '</think>' in m['content'] %}"
    + "{{ m['content'].split('</think>')[-1].lstrip() }}{% else %}{{ m['content'] }}{% endif %}"
    + CHATML_TAIL
)
"""Qwen3-style: the reasoning of earlier assistant turns is removed from later renderings."""
NO_TOOL_ROLE = (
    CHATML_HEAD
    + "{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}{{ m['content'] }}"
    + CHATML_TAIL
)


def tiny_tokenizer(template: str | None) -> Any:
    tokenizer = textenv.load_tokenizer("tiny-sp")
    tokenizer.chat_template = template
    return tokenizer


def test_smollm2_template_passes_quickly() -> None:
    tokenizer = textenv.load_tokenizer("smollm2-135m-instruct")
    start = time.perf_counter()
    check_chat_template(tokenizer)
    assert time.perf_counter() - start < 0.5  # three short conversations (about 10 ms here)


def test_fallback_template_passes() -> None:
    check_chat_template(tiny_tokenizer(None))  # no template: the env renders with the fallback
    check_chat_template(tiny_tokenizer(FALLBACK_CHAT_TEMPLATE))
    check_chat_template(tiny_tokenizer(CHATML_HEAD + "{{ m['content'] }}" + CHATML_TAIL))  # plain ChatML


def test_a_template_that_drops_earlier_assistant_turns_fails_naming_the_turn() -> None:
    with pytest.raises(ChatTemplateError, match="at turn 2 \\(assistant: 'My guess is 5.'\\)") as error:
        check_chat_template(tiny_tokenizer(DROPS_EARLIER_ASSISTANT_TURNS))
    assert error.value.turn == 2
    assert "FALLBACK_CHAT_TEMPLATE" in str(error.value)  # says how to fix it


def test_a_template_that_strips_earlier_reasoning_fails_naming_the_turn() -> None:
    with pytest.raises(ChatTemplateError, match="at turn 2 \\(assistant: '<think>") as error:
        check_chat_template(tiny_tokenizer(STRIPS_EARLIER_REASONING))
    assert error.value.turn == 2 and "<think>" in str(error.value)


def test_a_template_without_a_tool_role_passes_and_a_broken_one_fails() -> None:
    check_chat_template(tiny_tokenizer(NO_TOOL_ROLE))  # tool turns are checked only where they render
    with pytest.raises(ChatTemplateError, match="cannot render a plain conversation"):
        check_chat_template(tiny_tokenizer("{{ raise_exception('no chat here') }}"))


@pytest.mark.parametrize("env_id", ["TextChat-v0", "TextChatSeq-v0"])
@pytest.mark.parametrize("vector", [False, True])
def test_chat_envs_refuse_a_template_that_breaks_continuity(env_id: str, vector: bool) -> None:
    kwargs = {"tokenizer": tiny_tokenizer(STRIPS_EARLIER_REASONING), "max_turn_tokens": 4}
    with pytest.raises(ChatTemplateError, match="turn 2"):
        if vector:
            gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
        else:
            gym.make(env_id, **kwargs)
    env = gym.make(env_id, tokenizer=tiny_tokenizer(FALLBACK_CHAT_TEMPLATE), max_turn_tokens=4)
    env.reset(seed=0)  # the fix the error names works
