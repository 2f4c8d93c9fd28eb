"""Token-level text generation: one token per step."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from textenv.envs.arguments import TextGenArguments
from textenv.envs.core import PromptEpisodes, PromptSampler
from textenv.envs.state import check_indices, check_layout


class TextGenEnv(PromptEpisodes):
    """
    ## Description

    Text generation as a sequential decision problem: each step the agent appends one token to a prompt drawn
    from a dataset. When the completion ends, a reward function scores it. The default task continues real
    drugs.com review openings, rewarded by VADER sentiment (positive text scores high).

    ## Action Space

    ``Discrete(vocab_size)``: the id of the next token. ``vocab_size`` is the larger of ``len(tokenizer)``
    and the model config's ``vocab_size`` (49152 for SmolLM2), so every id the model can emit is valid.

    ## Observation Space

    ``Dict(input_ids=Box(int64, (P+N,)), attention_mask=Box(int64, (P+N,)))`` with ``P = max_prompt_tokens``
    and ``N = max_new_tokens``. The first P positions hold the prompt, left-padded with ``pad_token_id``
    (a prompt longer than P tokens keeps its last P tokens: it is truncated from the left). The last N hold
    the generated tokens, right-padded. ``attention_mask`` is 1 on real tokens, 0 on padding. Prompts are
    tokenized without special tokens (no BOS is added).

    ## Rewards

    0 on every step but the last, then ``reward_fn([prompt], [completion], [reference])``. The completion is
    the generated text before the first EOS or stop token (that token is left out), decoded with
    ``skip_special_tokens=True``.

    ## Episode End

    ``terminated`` when the agent emits ``eos_token_id`` or one of ``stop_token_ids`` (the observation keeps
    that last token, as it keeps EOS); ``truncated`` after N tokens. The final ``info``
    carries ``prompt``, ``completion`` and ``reference``; ``reset`` returns ``prompt`` and ``reference``.

    ## Arguments

    - ``model``: a known model name or local HF dir; only its tokenizer (and config) is loaded, not weights.
      Default ``"smollm2-135m-instruct"``. Or ``tokenizer``: a tokenizer object (no pad token: EOS is used).
    - ``task``: a built-in task name (default ``"drugs-sentiment"``), with ``split`` ``"train"``/``"test"``.
      Or ``dataset``: a ``PromptDataset``, a list of prompts / ``Example`` / dicts, or the path of a
      ``.jsonl`` or ``.csv`` file (see ``PromptDataset.from_file``).
    - ``reward_fn``: callable ``(prompts, completions, references=None) -> np.ndarray``, one finite real
      score per completion (its signature is checked when the env is made, its output at every call).
    - ``max_prompt_tokens=64``, ``max_new_tokens=48``, ``render_mode`` (``"ansi"`` or ``"human"``),
      ``group_size=1`` (each sampled prompt is used for k episodes in a row, for RLOO baselines),
      ``vocab_size=None`` (override the action space size; at least ``len(tokenizer)``).
    - ``stop_token_ids=None``: ids that end the episode like EOS does (EOS always does).
      ``stop_strings=None``: strings such as ``["\\n"]``, which add every id whose text, decoded alone,
      contains one of them (a token that decodes to something with a newline ends the line; SmolLM2 has 129
      such ids, all whitespace). ``env.unwrapped.stop_token_ids`` lists the resulting ids, EOS included.
    - ``reset(options={"index": i})`` starts an episode on dataset example i (``0 <= i < len(dataset)``)
      instead of a sampled one.
    - A ``reward_fn`` that raises leaves the episode as it was before that step, so it can be stepped again.
    - Every argument is a keyword argument, a field of :class:`~textenv.envs.arguments.TextGenArguments` (a
      frozen dataclass: one signature for the four TextGen envs), checked once when the env is made
      (``env.unwrapped.core.args`` holds the env's).

    >>> import gymnasium as gym, textenv
    >>> env = gym.make("TextGen-v0", model="tiny-sp", dataset=["Once upon a time"], max_new_tokens=8)
    >>> obs, info = env.reset(seed=0)
    >>> obs["input_ids"].shape, info["prompt"]
    ((72,), 'Once upon a time')
    >>> for token in env.unwrapped.tokenizer(" there was", add_special_tokens=False)["input_ids"]:
    ...     obs, reward, terminated, truncated, info = env.step(token)
    >>> obs, reward, terminated, truncated, info = env.step(env.unwrapped.eos_token_id)
    >>> terminated, info["completion"]
    (True, 'there was')
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    state_fields = ("_np_random", "_sampler", "_input_ids", "_attention_mask", "_index", "_length", "_done")

    def __init__(self, **kwargs: Any) -> None:
        self._setup_core(TextGenArguments(**kwargs))  # the keyword arguments below, checked once
        self.action_space = spaces.Discrete(self.core.vocab_size)
        self.observation_space = self.core.observation_space(self.max_prompt_tokens + self.max_new_tokens)
        self._sampler = PromptSampler(len(self.dataset), self.group_size)
        self._input_ids = np.full(self.max_prompt_tokens + self.max_new_tokens, self.pad_token_id, np.int64)
        self._attention_mask = np.zeros_like(self._input_ids)
        self._index = 0
        self._length = 0  # tokens generated so far
        self._done = True  # no episode running until reset()

    def _check_state(self) -> None:
        names = ("_input_ids", "_attention_mask", "_length")
        check_layout(
            self._input_ids,
            self._attention_mask,
            self._length,
            self.max_prompt_tokens,
            self.vocab_size,
            names,
        )
        check_indices("_index", self._index, len(self.dataset))
        if not self._done and self._length >= self.max_new_tokens:
            raise ValueError(
                "saved env state '_length' is max_new_tokens in a running episode ('_done' false)"
            )

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._input_ids.copy(), "attention_mask": self._attention_mask.copy()}

    def _begin(self) -> None:  # reset(): the prompt in the first P slots, nothing generated
        prompt_ids, prompt_mask = self.core.encode_prompt(self._index)
        P = self.max_prompt_tokens
        self._input_ids[:P], self._input_ids[P:] = prompt_ids, self.pad_token_id
        self._attention_mask[:P], self._attention_mask[P:] = prompt_mask, 0
        self._length, self._done = 0, False

    def _act(self, action: Any) -> tuple[float, bool, bool, dict[str, Any]]:  # step(): one token
        token = int(self.core.check_tokens(action, (), "TextGen-v0 action"))
        position = self.max_prompt_tokens + self._length
        terminated = bool(self.core.is_stop(np.int64(token)))
        truncated = not terminated and self._length + 1 == self.max_new_tokens
        reward, info = 0.0, {}
        if terminated or truncated:  # score first: if reward_fn raises, the episode is as before this step
            generated = np.append(self._input_ids[self.max_prompt_tokens : position], token)
            completion = self.core.decode([self.core.completion_ids(generated)])[0]
            reward = float(self.core.score([self._index], [completion])[0])
            info = self.core.final_info(self._index, completion)
            self._done = True
        self._input_ids[position] = token
        self._attention_mask[position] = 1
        self._length += 1
        return reward, terminated, truncated, info

    def render(self) -> str | None:
        """``"ansi"``: return prompt + completion so far as text; ``"human"``: print it."""
        generated = self._input_ids[self.max_prompt_tokens : self.max_prompt_tokens + self._length]
        text = self.core.render_text(self._index, self.core.decode([self.core.completion_ids(generated)])[0])
        if self.render_mode == "human":
            print(text)
            return None
        return text
