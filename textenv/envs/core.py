"""Logic shared by the token-level and sequence-level environments, scalar and vectorised.

:class:`TokenCore` resolves the tokenizer and the action vocabulary of every env (the chat envs' core builds
on it too) and validates actions. :class:`TextGenCore` resolves the rest of the checked arguments
(:class:`~textenv.envs.arguments.TextGenArguments`: dataset, reward function, stop tokens), builds the spaces,
tokenizes and caches prompts, samples prompts (with RLOO groups), decodes completions and scores them with
checks on the reward function's output. The four environment classes only keep episode state; the two
single ones share their ``reset`` and ``step`` protocol (:class:`PromptEpisodes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from rewards.sentiment import VaderSentiment
from rewards.validation import check_scores
from textenv.data import PromptDataset, as_dataset
from textenv.envs.arguments import EnvArguments, TextGenArguments
from textenv.envs.state import PromptSampler as PromptSampler
from textenv.envs.state import decode_state, encode_state
from textenv.hubs import hub_reward, is_hub_task
from textenv.models import DEFAULT_MODEL, load_tokenizer, model_dir
from textenv.tasks import DEFAULT_TASK, load_task

RewardFn = Callable[..., Any]
MAX_CACHED_PROMPTS = 100_000  # tokenized prompts kept per env (about 1 KB each at P=64)


def default_reward(task: str | None = None) -> RewardFn:
    """The reward used when none is given: ``rewards.VaderSentiment()`` (VADER compound score in [-1, 1]);
    for a hub task (``task="reasoning_gym:<name>"``) the hub's own scorer."""
    return hub_reward(task) if is_hub_task(task) else VaderSentiment()


def _model_vocab_size(model: str | Path) -> int | None:
    """The model config's ``vocab_size`` (reads config.json only, never the weights); None if unavailable."""
    if str(model) == DEFAULT_MODEL:  # its tokenizer covers the model's 49152 ids; don't convert the weights
        return None
    try:
        from transformers import AutoConfig

        source = model_dir(model)
        config = AutoConfig.from_pretrained(source) if isinstance(source, Path) else None
    except (OSError, ValueError):
        return None
    size = getattr(config, "vocab_size", None)
    return int(size) if size else None


def token_ids_containing(tokenizer: Any, strings: Sequence[str]) -> list[int]:
    """Every token id whose text, decoded alone, contains one of ``strings``; e.g. ``["\\n"]`` gives the
    ids that end a line (SmolLM2: 129 ids, all whitespace such as ``"\\n"``, ``"\\n\\n"``, ``" \\n"``).

    >>> from textenv import load_tokenizer
    >>> tok = load_tokenizer("tiny-sp")
    >>> [tok.decode([i]) for i in token_ids_containing(tok, ["\\n"])]
    ['\\n']
    """
    texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))])
    return [token for token, text in enumerate(texts) if any(string in text for string in strings)]


class TokenCore:
    """The tokenizer side of every textenv env: the tokenizer resolved from
    :class:`~textenv.envs.arguments.EnvArguments` (``model`` or ``tokenizer``), its special ids, the action
    vocabulary, and the checks of actions and ``reset`` arguments. :class:`TextGenCore` and
    :class:`textenv.envs.chat_core.ChatCore` build on it.

    ``vocab_size`` is the larger of ``len(tokenizer)`` and the model config's ``vocab_size`` (when ``model``
    names a loadable model), so that the action space covers every id the model can emit; an explicit
    ``vocab_size`` must be at least ``len(tokenizer)``.
    """

    def __init__(self, args: EnvArguments) -> None:
        self.args = args
        model, tokenizer = args.model, args.tokenizer
        if tokenizer is None:
            model = DEFAULT_MODEL if model is None else model
            tokenizer = load_tokenizer(model)
        needed = ("eos_token_id", "pad_token_id", "batch_decode")
        missing = [name for name in needed if not hasattr(tokenizer, name)]
        if missing:
            raise TypeError(
                f"tokenizer is {type(tokenizer).__name__}, which lacks {missing}; pass a Hugging Face "
                "tokenizer, e.g. textenv.load_tokenizer('tiny-sp')."
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no eos_token; set tokenizer.eos_token before making the env.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if args.vocab_size is not None and args.vocab_size < len(tokenizer):
            raise ValueError(
                f"vocab_size={args.vocab_size} is smaller than the tokenizer's vocabulary ({len(tokenizer)} "
                "tokens), so prompts could hold ids outside the observation space; vocab_size must be >= "
                f"len(tokenizer): pass vocab_size={len(tokenizer)} or more, or leave it None."
            )
        self.tokenizer = tokenizer
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        model_vocab = _model_vocab_size(model) if model is not None else None
        self.vocab_size = int(args.vocab_size or max(len(tokenizer), model_vocab or 0))
        self.max_prompt_tokens = int(args.max_prompt_tokens)
        self.max_new_tokens = int(args.max_new_tokens)
        self.group_size = int(args.group_size)

    @staticmethod
    def reset_option(options: Any, key: str) -> Any:
        """``options[key]`` of ``reset`` (None if absent); ``options`` is None or a dict with no other key."""
        if options is None:
            return None
        if not isinstance(options, dict):
            raise TypeError(f"options={options!r} must be a dict, e.g. options={{{key!r}: 0}}.")
        unknown = [name for name in options if name != key]
        if unknown:
            raise ValueError(f"options has unknown keys {unknown}; this env takes options={{{key!r}: ...}}.")
        return options.get(key)

    @staticmethod
    def row_seeds(seed: Any, num_envs: int) -> list[Any] | None:
        """A vector env's ``reset(seed=...)`` as one seed per row: an int s gives row i ``s + i``; a list
        gives one seed (or None) per row; None gives None."""
        if seed is None:
            return None
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return [int(seed) + row for row in range(num_envs)]
        if isinstance(seed, (str, bytes)) or not hasattr(seed, "__len__"):
            raise TypeError(
                f"seed={seed!r} must be an int (row i gets seed + i), a list with one int or None per env, "
                "or None."
            )
        if len(seed) != num_envs:
            raise ValueError(f"Got {len(seed)} seeds for {num_envs} envs; pass one per env or an int.")
        for row, row_seed in enumerate(seed):
            if row_seed is not None and (
                not isinstance(row_seed, (int, np.integer)) or isinstance(row_seed, bool) or row_seed < 0
            ):
                raise ValueError(f"seed[{row}]={row_seed!r} must be an int >= 0 or None.")
        return [None if row_seed is None else int(row_seed) for row_seed in seed]

    def check_tokens(self, action: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        """Validate token ids: integer dtype, the given shape, each in [0, vocab_size); returns int64."""
        array = np.asarray(action)
        if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(
                f"{what} must be integer token ids (e.g. np.int64), got dtype {array.dtype}; "
                "pass the ids as ints, e.g. env.action_space.sample()."
            )
        if array.shape != shape:
            raise ValueError(f"{what} must have shape {shape}, got {array.shape}.")
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            bad = array[(array < 0) | (array >= self.vocab_size)].ravel()[0]
            raise ValueError(
                f"{what} contains token id {int(bad)} outside the vocabulary [0, {self.vocab_size}); "
                "sample from env.action_space or the model's logits over the same tokenizer."
            )
        return array.astype(np.int64, copy=False)


class TextGenCore(TokenCore):
    """Resolved configuration and helpers shared by the text-generation environments (``TextGen-v0``,
    ``TextGenSeq-v0`` and their vector envs): the prompts, the reward function, the stop tokens.

    Built from :class:`~textenv.envs.arguments.TextGenArguments` (the arguments of
    :class:`textenv.envs.TextGenEnv`, checked when they are made); what needs the tokenizer is checked here,
    so a bad argument fails when the env is made.
    """

    def __init__(self, args: TextGenArguments) -> None:
        super().__init__(args)
        self.args: TextGenArguments = args
        self.reward_seconds = 0.0  # time spent in reward_fn, for the agents' time breakdown
        if args.dataset is None:
            self.dataset: PromptDataset = load_task(args.task or DEFAULT_TASK, split=args.split)
        else:
            self.dataset = as_dataset(args.dataset)
        self.reward_fn: RewardFn = args.reward_fn if args.reward_fn is not None else default_reward(args.task)
        self.stop_token_ids = self._resolve_stops(args.stop_token_ids, args.stop_strings)
        self._stop_array = np.array(self.stop_token_ids, dtype=np.int64)  # (S,), for np.isin
        self._prompt_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _resolve_stops(self, stop_token_ids: Any, stop_strings: Any) -> tuple[int, ...]:
        """The sorted ids that end an episode: EOS, ``stop_token_ids`` (checked to lie in the vocabulary) and
        the ids whose text contains one of ``stop_strings`` (:func:`token_ids_containing`)."""
        stops = {self.eos_token_id}
        for token in stop_token_ids or ():
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"stop_token_ids holds {int(token)}, outside the vocabulary [0, {self.vocab_size}); "
                    "pass ids of the env's tokenizer."
                )
            stops.add(int(token))
        if stop_strings is not None:
            found = token_ids_containing(self.tokenizer, list(stop_strings))
            if not found:
                raise ValueError(
                    f"stop_strings={list(stop_strings)!r}: no token of the tokenizer contains them, so they "
                    "could never end an episode; pass strings that some token's text contains, or "
                    "stop_token_ids=."
                )
            stops.update(found)
        return tuple(sorted(stops))

    # ---- spaces -------------------------------------------------------------------------------------------
    def token_box(self, length: int) -> spaces.Box:
        return spaces.Box(low=0, high=self.vocab_size - 1, shape=(length,), dtype=np.int64)

    def observation_space(self, length: int) -> spaces.Dict:
        return spaces.Dict(
            {
                "input_ids": self.token_box(length),
                "attention_mask": spaces.Box(low=0, high=1, shape=(length,), dtype=np.int64),
            }
        )

    # ---- prompts ------------------------------------------------------------------------------------------
    def encode_prompt(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), each (P,): left-padded, and truncated from the left if too long."""
        if index not in self._prompt_cache:
            ids = self.tokenizer(self.dataset[index].prompt, add_special_tokens=False)["input_ids"]
            ids = ids[-self.max_prompt_tokens :]
            pad = self.max_prompt_tokens - len(ids)
            input_ids = np.array([self.pad_token_id] * pad + list(ids), dtype=np.int64)  # (P,)
            mask = np.array([0] * pad + [1] * len(ids), dtype=np.int64)  # (P,)
            if len(self._prompt_cache) < MAX_CACHED_PROMPTS:
                self._prompt_cache[index] = (input_ids, mask)
            return input_ids, mask
        return self._prompt_cache[index]

    def check_indices(self, indices: Any, num_envs: int) -> list[int] | None:
        """``options["indices"]`` of a vector env's ``reset``, checked: None, or one valid index per env."""
        if indices is None:
            return None
        if isinstance(indices, (str, bytes, dict)) or not hasattr(indices, "__len__"):
            raise TypeError(
                f'options["indices"] must be a list of {num_envs} dataset indices, one per env; '
                f"got {type(indices).__name__}."
            )
        if len(indices) != num_envs:
            raise ValueError(
                f'options["indices"] has {len(indices)} indices for {num_envs} envs; pass one per env.'
            )
        return [self.check_index(index, f'options["indices"][{row}]') for row, index in enumerate(indices)]

    def check_index(self, index: Any, what: str) -> int:
        """A dataset index from ``reset`` options, checked: an int in ``[0, len(dataset))``."""
        size = len(self.dataset)
        if not isinstance(index, (int, np.integer)) or isinstance(index, (bool, np.bool_)):
            raise TypeError(f"{what}={index!r} must be an int dataset index in [0, {size}).")
        if not 0 <= index < size:
            raise ValueError(
                f"{what}={int(index)} is outside the dataset of {size} examples; use an index in [0, {size})."
            )
        return int(index)

    def prompt_info(self, index: int) -> dict[str, Any]:
        example = self.dataset[index]
        return {"prompt": example.prompt, "reference": example.reference}

    # ---- completions and rewards --------------------------------------------------------------------------
    def is_stop(self, tokens: np.ndarray) -> np.ndarray:
        """Whether each token id ends an episode (EOS or a stop token); bool, the shape of ``tokens``."""
        return np.isin(tokens, self._stop_array)

    def completion_ids(self, tokens: np.ndarray) -> np.ndarray:
        """The completion part of generated ids: everything before the first EOS or stop token."""
        stop = np.flatnonzero(self.is_stop(tokens))
        return tokens[: stop[0]] if stop.size else tokens

    def decode(self, completions: Sequence[np.ndarray]) -> list[str]:
        """Decode completion ids (the stop token already cut) in one batch call, skipping special tokens."""
        return self.tokenizer.batch_decode([c.tolist() for c in completions], skip_special_tokens=True)

    def score(self, indices: Sequence[int], completions: list[str]) -> np.ndarray:
        """One batched reward call for the given prompt indices and completions; checks the output. Its time
        adds up in ``reward_seconds``."""
        examples = [self.dataset[i] for i in indices]
        prompts = [e.prompt for e in examples]
        references = [e.reference for e in examples]
        name = "reward_fn " + getattr(self.reward_fn, "__name__", type(self.reward_fn).__name__)
        start = time.perf_counter()
        raw = self.reward_fn(prompts, completions, references)
        self.reward_seconds += time.perf_counter() - start
        # strings, complex numbers, bools: TypeError; a wrong count, NaN, inf, beyond float32: ValueError
        return check_scores(raw, len(completions), name)

    def render_text(self, index: int, completion: str) -> str:
        """The prompt, then the completion so far after a marker, as shown by ``render()``."""
        return f"{self.dataset[index].prompt} ▶ {completion}"

    def final_info(self, index: int, completion: str) -> dict[str, Any]:
        """The info of a finished episode; ``prompt_index`` (the dataset index) lets agents group episodes
        that answered the same prompt (RLOO) without re-deriving it from tokens."""
        example = self.dataset[index]
        return {
            "prompt": example.prompt,
            "completion": completion,
            "reference": example.reference,
            "prompt_index": index,
        }


class TokenAttributes:
    """What every textenv env exposes of its core to agents (``agents.layout`` reads them through SB3's
    ``get_attr``): the tokenizer and its special ids, the action vocabulary and the prompt group size."""

    core: Any

    @property
    def tokenizer(self) -> Any:
        return self.core.tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.core.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.core.pad_token_id

    @property
    def vocab_size(self) -> int:
        return self.core.vocab_size

    @property
    def group_size(self) -> int:
        return self.core.group_size

    def _setup_token_rows(self, num_envs: int, length: int, episodes: int) -> None:
        """What every token-level vector env builds alike: the spaces (one token id per row, observations
        of ``length`` slots) and each row's RNG and sampler over ``episodes`` prompts (RNGs unseeded until
        ``reset``)."""
        self.num_envs: int = num_envs
        self.single_action_space: spaces.Space[Any] = spaces.Discrete(self.core.vocab_size)
        self.action_space: spaces.Space[Any] = spaces.MultiDiscrete(np.full(num_envs, self.core.vocab_size))
        self.single_observation_space: spaces.Space[Any] = self.core.observation_space(length)
        self.observation_space: spaces.Space[Any] = batch_space(self.single_observation_space, num_envs)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._samplers = [PromptSampler(episodes, self.core.group_size) for _ in range(num_envs)]


class CoreAttributes(TokenAttributes):
    """Exposes the core's settings on an environment (``env.unwrapped.tokenizer`` and friends), and its
    episode state (:meth:`state_dict`), which an agent's checkpoint stores so that a resumed run continues
    the very episodes and prompt draws of the one it resumes."""

    core: TextGenCore
    metadata: dict[str, Any]
    state_fields: tuple[str, ...] = ()
    """The attributes that hold episode state: RNGs, prompt samplers, the running episodes."""

    def state_dict(self) -> dict[str, Any]:
        """The episode state as JSON-able data (RNG states, sampler positions, running episodes)."""
        return {name: encode_state(getattr(self, name)) for name in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from an env made with the same arguments). A value of
        another type or outside this env's sizes raises ``ValueError`` naming its key, and leaves the env as
        it was."""
        if not isinstance(state, dict):
            raise ValueError(f"saved env state is {type(state).__name__}; expected the dict of state_dict()")
        missing = [name for name in self.state_fields if name not in state]
        if missing:
            raise ValueError(f"saved env state lacks {missing}; it comes from another kind of env")
        before = self.state_dict()
        try:
            for name in self.state_fields:
                setattr(self, name, decode_state(state[name], getattr(self, name), name))
            self._check_state()
        except ValueError:
            for name in self.state_fields:
                setattr(self, name, decode_state(before[name], getattr(self, name), name))
            raise

    def _check_state(self) -> None:
        """Extension point: check a loaded episode against the env's sizes (``ValueError`` naming the key)."""

    def _setup_core(self, args: TextGenArguments) -> None:
        """Build the core from the env's checked arguments."""
        self._setup_shared_core(TextGenCore(args))

    def _setup_shared_core(self, core: TextGenCore) -> None:
        """Run on ``core`` (one made for another env too: a vector env's rows share it)."""
        self.core = core
        self.render_mode = core.args.render_mode

    @property
    def dataset(self) -> PromptDataset:
        return self.core.dataset

    @property
    def reward_fn(self) -> RewardFn:
        return self.core.reward_fn

    @property
    def max_prompt_tokens(self) -> int:
        return self.core.max_prompt_tokens

    @property
    def max_new_tokens(self) -> int:
        return self.core.max_new_tokens

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The sorted ids that end an episode: EOS and the env's stop tokens."""
        return self.core.stop_token_ids


class PromptEpisodes(CoreAttributes, gym.Env):
    """The episode protocol of the two single TextGen envs (``TextGen-v0``, ``TextGenSeq-v0``): ``reset``
    takes ``options["index"]`` (checked before anything changes) or the prompt sampler's next draw (a new
    ``seed`` restarts the sampler) and the env sets its episode up in :meth:`_begin`; ``step`` refuses a
    finished episode and the env acts in :meth:`_act`. Both render after each, in ``"human"`` mode."""

    _sampler: PromptSampler
    _index: int
    _done: bool

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        index = self.core.reset_option(options, "index")
        if index is not None:
            index = self.core.check_index(index, 'options["index"]')
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.reset()
        self._index = self._sampler.next(self.np_random) if index is None else index
        self._begin()
        if self.render_mode == "human":
            self.render()
        return self._obs(), self.core.prompt_info(self._index)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError(
                "step() was called after the episode ended (or before the first reset()); "
                "call env.reset() to start a new episode."
            )
        reward, terminated, truncated, info = self._act(action)
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, terminated, truncated, info

    def _begin(self) -> None:
        """Start the episode on prompt ``self._index``."""
        raise NotImplementedError

    def _act(self, action: Any) -> tuple[float, bool, bool, dict[str, Any]]:
        """Take ``action`` in the running episode: ``(reward, terminated, truncated, info)``. A reward
        function that raises must leave the episode as it was."""
        raise NotImplementedError

    def _obs(self) -> dict[str, np.ndarray]:
        raise NotImplementedError
