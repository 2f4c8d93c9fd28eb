"""How an agent reads an environment: the observation layout (P, N), the token vocabulary and special ids.

Any environment that keeps textenv's observation contract works: ``Dict(input_ids, attention_mask)`` of
length ``P + N`` (token level, ``Discrete`` actions) or ``P`` (sequence level, ``MultiDiscrete([V] * N)``
actions). For token-level envs N comes from the agent's ``max_new_tokens`` setting if given, else from the
env attribute ``max_new_tokens``; ``P = obs length - N`` and, if the env has ``max_prompt_tokens``, it must
agree. ``pad_token_id`` / ``eos_token_id`` / ``tokenizer`` attributes are used when present.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from transformers import PreTrainedModel


@dataclass(frozen=True)
class EnvLayout:
    token_level: bool
    n_actions: int
    prompt_len: int
    max_new_tokens: int
    pad_token_id: int
    eos_token_id: int | None
    stop_token_ids: tuple[int, ...] = ()
    """Ids that end a completion (the env's ``stop_token_ids``: EOS and e.g. newline tokens); (): EOS only."""


def load_lm(model: str | os.PathLike | PreTrainedModel) -> PreTrainedModel:
    """A causal LM from a textenv name (``"tiny-sp"``...), an HF directory, or a model object."""
    if isinstance(model, PreTrainedModel):
        return model
    import textenv

    return textenv.load_model(str(model))


def env_attr(env: VecEnv, name: str) -> Any:
    """Attribute ``name`` of the first sub-env (through wrappers), or None."""
    try:
        return env.get_attr(name, indices=[0])[0]
    except (AttributeError, NotImplementedError):
        return None


def read_layout(env: VecEnv, lm: PreTrainedModel, max_new_tokens: int | None, model_source: Any) -> EnvLayout:
    """Check ``env``'s spaces against the contract and ``lm``'s vocabulary; ValueError says how to fix."""
    obs_space, action_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, spaces.Dict) and {"input_ids", "attention_mask"} <= set(obs_space.spaces)):
        raise ValueError(
            f"incompatible observation space {obs_space}: the agents need Dict(input_ids=Box(int64, (T,)), "
            "attention_mask=Box(int64, (T,))) as TextGen-v0 / TextGenSeq-v0 provide"
        )
    shape = obs_space["input_ids"].shape
    if shape is None or len(shape) != 1 or obs_space["attention_mask"].shape != shape:
        raise ValueError(f"input_ids and attention_mask must both be 1-D of equal length, got {obs_space}")
    length = shape[0]
    if isinstance(action_space, spaces.MultiDiscrete):
        token_level, n_new, prompt_len = False, len(action_space.nvec), length
        n_actions = int(action_space.nvec.max())
    elif isinstance(action_space, spaces.Discrete):
        token_level, n_actions = True, int(action_space.n)
        n_new = max_new_tokens or env_attr(env, "max_new_tokens")
        if n_new is None:
            raise ValueError(
                "cannot tell where the completion starts: the env has no `max_new_tokens` attribute; pass "
                "max_new_tokens=N to the agent (the observation is P prompt slots then N completion slots)"
            )
        prompt_len = length - int(n_new)
        prompt_attr = env_attr(env, "max_prompt_tokens")
        if prompt_attr is not None and int(prompt_attr) != prompt_len:
            raise ValueError(
                f"env max_prompt_tokens={prompt_attr} but the observation implies P={prompt_len}"
            )
        if prompt_len < 1:
            raise ValueError(
                f"max_new_tokens={n_new} leaves no prompt slots in observations of length {length}"
            )
    else:
        raise ValueError(
            f"incompatible action space {action_space}: use Discrete(vocab) (token level) or "
            "MultiDiscrete([vocab] * N) (sequence level)"
        )
    vocab = lm.get_output_embeddings().weight.shape[0]
    if n_actions > vocab:
        raise ValueError(
            f"vocabulary mismatch: the env has {n_actions} actions (token ids) but the model "
            f"only {vocab} logits; "
            "make the env with the model's tokenizer (gym.make(..., model=<same name>))"
        )
    tokenizer = env_attr(env, "tokenizer")
    if tokenizer is not None and isinstance(model_source, (str, os.PathLike)):
        import textenv

        if textenv.load_tokenizer(str(model_source)).get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"vocabulary mismatch: the env tokenizer differs from "
                f"{str(model_source)!r}'s tokenizer; "
                f"create the env with model={str(model_source)!r}"
            )
    pad = env_attr(env, "pad_token_id")
    eos = env_attr(env, "eos_token_id")
    stops = env_attr(env, "stop_token_ids")
    return EnvLayout(
        token_level=token_level,
        n_actions=n_actions,
        prompt_len=prompt_len,
        max_new_tokens=int(n_new),
        pad_token_id=int(pad if pad is not None else (lm.config.pad_token_id or 0)),
        eos_token_id=int(eos) if eos is not None else lm.config.eos_token_id,
        stop_token_ids=tuple(int(i) for i in stops) if stops is not None else (),
    )
