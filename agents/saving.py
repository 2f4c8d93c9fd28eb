"""Checkpoints of the transformer agents: ``save``, ``load`` and ``export``, and their extension points.

:class:`Checkpointing` is a mixin of :class:`agents.base.TextAlgorithm`; what it reads and writes on its host
is the typed protocol :class:`CheckpointHost`. It hands :func:`agents.checkpoint.save` an
:class:`~agents.checkpoint.AgentState` plus the networks, the engine (optimizer state) and the env's episode
state; :meth:`Checkpointing.load` rebuilds an agent from such a directory. Each algorithm family extends a
checkpoint through ``_extra_state`` / ``_load_extra_state`` (JSON-able state: the KL controller, a baseline,
DQN's exploration), ``_extra_modules`` (networks saved as safetensors: an EMA, DQN's target network),
``_extra_files`` (further files: DQN's replay), ``_resume_arrays`` (the running episodes' statistics and a
kept KV cache) and ``_after_load`` (the last step of :meth:`Checkpointing.load`). A kept KV cache
(:class:`agents.kv_cache.StepCache`, eager or on compiled decoding's static rows) goes into
``rollout_state.npz`` as the arrays of :func:`cache_arrays` and comes back through :func:`restore_cache`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from transformers import DynamicCache

from agents import checkpoint, distributed, lora
from agents.config import AlgorithmConfig
from agents.kv_cache import StepCache, kv_layers
from agents.policy import ActorCritic
from agents.rollout import RolloutCollector

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

SelfCheckpointing = TypeVar("SelfCheckpointing", bound="Checkpointing")
FileWriter = Callable[[Path], None]
"""Writes one checkpoint file or directory at the path it is given."""


class CheckpointHost(Protocol):
    """What :class:`Checkpointing` reads and writes on the agent it is mixed into
    (:class:`agents.base.TextAlgorithm`), and the extension points every algorithm family implements."""

    @property
    def config(self) -> AlgorithmConfig: ...
    @property
    def policy(self) -> ActorCritic: ...
    @property
    def reference(self) -> nn.Module: ...  # FrozenLM, or the LoRA agent's AdapterDisabledLM
    @property
    def actor(self) -> ActorCritic: ...
    @property
    def rollout(self) -> RolloutCollector: ...
    @property
    def env(self) -> VecEnv | None: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def n_envs(self) -> int: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def precision(self) -> str: ...  # "bf16" or "fp32", as the engine trains
    @property
    def deepspeed_config(self) -> str | os.PathLike | dict | None: ...
    @property
    def _step_cache(self) -> StepCache: ...
    @property
    def _diverged(self) -> bool: ...

    engine: DeepSpeedEngine  # around ``policy``: its optimizer state is in a checkpoint
    model_source: str | os.PathLike | None  # the LM's name or path; None for a model object
    num_timesteps: int
    _n_updates: int
    _episode_num: int
    _last_obs: np.ndarray | dict[str, np.ndarray] | None  # SB3's: what the next step acts on
    _last_episode_starts: np.ndarray | None  # SB3's: (B,) bool

    def _env_attr(self, name: str) -> Any: ...
    def set_random_seed(self, seed: int | None = None) -> None: ...
    def _extra_state(self) -> dict[str, Any]: ...
    def _load_extra_state(self, state: dict[str, Any]) -> None: ...
    def _extra_modules(self) -> dict[str, nn.Module]: ...
    def _restored_modules(self, saved_config: dict[str, Any]) -> dict[str, nn.Module]: ...
    def _extra_files(self) -> dict[str, FileWriter]: ...
    def _resume_arrays(self) -> dict[str, np.ndarray]: ...
    def _after_load(self, directory: Path) -> None: ...


class Checkpointing:
    """save / load / export for :class:`agents.base.TextAlgorithm`; its host is a :class:`CheckpointHost`."""

    config_class: ClassVar[type[AlgorithmConfig]]

    def _extra_state(self) -> dict[str, Any]:
        """Hook: algorithm state (JSON-able) that a checkpoint must restore, e.g. the KL controller."""
        raise NotImplementedError

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Hook: restore what :meth:`_extra_state` returned."""
        raise NotImplementedError

    def _extra_modules(self) -> dict[str, nn.Module]:
        """Hook: networks besides the policy that a checkpoint holds, by file stem (an EMA, a target)."""
        raise NotImplementedError

    def _restored_modules(self, saved_config: dict[str, Any]) -> dict[str, nn.Module]:
        """The :meth:`_extra_modules` that :meth:`load` restores from a checkpoint saved with the config
        ``saved_config`` (all of them, unless a family's saved settings say one was not kept)."""
        return self._extra_modules()

    def _extra_files(self) -> dict[str, FileWriter]:
        """Extension point: ``{file name: writer(path)}`` for further checkpoint files (DQN's replay)."""
        return {}

    def _after_load(self, directory: Path) -> None:
        """Extension point: the last step of :meth:`load` (read what :meth:`_extra_files` wrote to
        ``directory``, refresh a copy of the weights)."""

    # override: a checkpoint is a directory, so no file objects (SB3's save also takes a BufferedIOBase)
    def save(self: CheckpointHost, path: str | os.PathLike, exclude: Any = None, include: Any = None) -> None:  # type: ignore[override]  # noqa: ARG002
        """A resumable checkpoint directory: HF export (``model/``), reference, optimizer, counters, RNG."""
        if self._diverged:
            raise RuntimeError(
                "this agent's training diverged (see the FloatingPointError it raised); its optimizer state "
                "is not usable, so save() refuses. export() still writes the rolled-back weights"
            )
        bad = [name for name, p in self.policy.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise ValueError(
                f"refusing to save non-finite (inf/NaN) weights, e.g. {bad[:3]}; load the last checkpoint"
            )
        checkpoint.save(
            Path(path),
            checkpoint_state(self),
            lms=checkpoint_lms(self),
            modules={"value_head": self.policy.value_head, **self._extra_modules()},
            engine=self.engine,
            tokenizer=self._env_attr("tokenizer") if self.env is not None else None,
            files={**resume_files(self), **adapter_files(self), **self._extra_files()},
        )

    def export(self: CheckpointHost, path: str | os.PathLike, ema: bool = False) -> None:
        """The trained LM alone as an HF directory (safetensors) that ``AutoModelForCausalLM`` loads; with
        ``ema=True`` the exponential moving average of its weights instead (fp32; needs ``ema_decay``)."""
        tokenizer = self._env_attr("tokenizer") if self.env is not None else None
        average = self._extra_modules().get("ema")
        if ema and average is None:
            raise ValueError(
                "export(..., ema=True) needs an agent that keeps an EMA of its weights; create it with "
                "ema_decay=0.992 (for example), or export without ema=True"
            )
        checkpoint.export_lm(average if ema else self.policy.lm, Path(path), tokenizer)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfCheckpointing],
        path: str | os.PathLike,
        env: Any = None,
        device: torch.device | str = "auto",
        **kwargs: Any,
    ) -> SelfCheckpointing:  # the agent class itself
        """Rebuild an agent from :meth:`save`'s directory and restore its exact training state."""
        saved = checkpoint.read(Path(path), cls.__name__)
        if env is None:
            raise ValueError("load needs env=...: the agent's layout (P, N, vocabulary) is checked on it")
        settings = saved.state.settings
        peft_config = saved.peft_config()  # a LoRA agent: base weights plus adapters, no reference copy
        if "peft_config" in kwargs:
            raise ValueError(
                "load takes the LoRA settings from the checkpoint (its adapter/ directory); drop peft_config"
            )
        build: Any = cls  # the concrete agent class (TextAlgorithm's signature)
        agent: CheckpointHost = build(
            env,
            model=saved.load_lm(lora.BASE_DIR if peft_config else "model"),
            config=saved.config(cls.config_class),
            reference_model=None if peft_config else saved.load_lm("reference"),
            peft_config=peft_config,
            deepspeed_config=kwargs.pop("deepspeed_config", settings["deepspeed_config"]),
            seed=settings["seed"],
            device=device,
            **kwargs,
        )
        agent.model_source = settings["model_source"]
        modules = {"value_head": agent.policy.value_head, **agent._restored_modules(saved.state.config)}
        if distributed.is_partitioned(agent.policy):  # ZeRO-3: DeepSpeed's checkpoint restores the head
            modules.pop("value_head")
        saved.load_modules(modules, agent.device)
        saved.load_engine(agent.engine, agent.precision)
        counters = saved.state.counters
        agent.num_timesteps, agent._n_updates = counters["num_timesteps"], counters["n_updates"]
        agent._episode_num = counters["episode_num"]
        with checkpoint.reading(saved.path / checkpoint.STATE_FILE):  # a bad value names the file
            agent._load_extra_state(saved.state.extra)
        saved.restore_rng()
        resumed = None
        if distributed.is_main():  # the saved episodes are rank 0's
            resumed = saved.load_resume_files(agent.env, agent.n_envs)
        else:  # other ranks start fresh episodes on their own seed, moved on by the updates already made
            seed = distributed.rank_seed(settings["seed"] or 0)
            assert seed is not None
            agent.set_random_seed(seed + agent._n_updates)
        if resumed is not None:
            agent._last_obs, agent._last_episode_starts, arrays = resumed
            agent.rollout.load_state_arrays(arrays)
            weight = next(agent.actor.parameters())
            with checkpoint.reading(saved.path / checkpoint.ROLLOUT_FILE):
                config = agent.actor.lm.config
                restore_cache(arrays, agent._step_cache, config, weight.dtype, weight.device)
        agent._after_load(saved.path)
        return cast(SelfCheckpointing, agent)


def checkpoint_state(agent: CheckpointHost) -> checkpoint.AgentState:
    """Everything :func:`agents.checkpoint.save` writes of ``agent``, handed over explicitly."""
    ds_config = agent.deepspeed_config
    return checkpoint.AgentState(
        algo=type(agent).__name__,
        config=dataclasses.asdict(agent.config),
        settings={
            "seed": agent.seed,
            "model_source": str(agent.model_source),
            "max_new_tokens": agent.max_new_tokens,
            "precision_used": agent.precision,
            "deepspeed_config": ds_config if isinstance(ds_config, (dict, type(None))) else str(ds_config),
        },
        counters={
            "num_timesteps": agent.num_timesteps,
            "n_updates": agent._n_updates,
            "episode_num": agent._episode_num,
        },
        extra=agent._extra_state(),
    )


def checkpoint_lms(agent: CheckpointHost) -> dict[str, Any]:
    """The HF directories of a checkpoint: the trained LM and the reference, or for a LoRA agent the base
    weights once (the reference is the base with adapters off)."""
    lm = agent.policy.lm
    reference: Any = agent.reference
    return {lora.BASE_DIR: lm} if lora.is_peft(lm) else {"model": lm, "reference": reference.lm}


def adapter_files(agent: CheckpointHost) -> dict[str, FileWriter]:
    """A LoRA agent's adapters in peft's format (``adapter/``)."""
    lm = agent.policy.lm
    return {lora.ADAPTER_DIR: lambda path: lora.save_adapter(lm, path)} if lora.is_peft(lm) else {}


def resume_files(agent: CheckpointHost) -> dict[str, FileWriter]:
    """The env's episodes and the rollout in progress (:func:`agents.checkpoint.resume_files`)."""
    if agent.env is None or not isinstance(agent._last_obs, dict):
        return {}
    starts = np.asarray(agent._last_episode_starts)
    return checkpoint.resume_files(agent.env, agent._last_obs, starts, agent._resume_arrays())


KV_BOOKKEEPING = ("slot_mask", "fed_ids", "fed_mask", "fed_len")
"""The :class:`StepCache` fields a checkpoint keeps beside the keys and values."""


def cache_arrays(cache: StepCache) -> dict[str, np.ndarray]:
    """A token-level agent's KV cache (:class:`StepCache`) as arrays for a checkpoint's
    ``rollout_state.npz``: the bookkeeping and every layer's keys and values (in float32, which holds bf16
    exactly). Kept across updates (``keep_kv_cache``), the cache was computed with earlier weights, so a
    resumed run needs it to go on exactly as the saved one would. ``{}`` when it holds nothing."""
    if cache.past is None or cache.slot_mask is None or cache.fed_ids is None:
        return {}
    arrays = {f"kv_{name}": getattr(cache, name).cpu().numpy() for name in KV_BOOKKEEPING}
    if cache.outdated is not None:
        arrays["kv_outdated"] = cache.outdated.cpu().numpy()
    if cache.write_slot is not None:  # compiled decode's static rows
        arrays["kv_write_slot"] = cache.write_slot.cpu().numpy()
    for index, layer in enumerate(kv_layers(cache.past)):
        arrays[f"kv_keys_{index}"] = layer.keys.float().cpu().numpy()
        arrays[f"kv_values_{index}"] = layer.values.float().cpu().numpy()
    return arrays


def restore_cache(
    arrays: dict[str, np.ndarray], cache: StepCache, config: Any, dtype: torch.dtype, device: torch.device
) -> None:
    """Fill an empty ``cache`` from :func:`cache_arrays`' arrays (nothing when they hold no cache); a cache
    that does not fit the model (``config``) raises ValueError saying what is off."""
    if "kv_slot_mask" not in arrays:
        return
    slot_mask = torch.as_tensor(arrays["kv_slot_mask"])
    layers = config.num_hidden_layers
    if sum(key.startswith("kv_keys_") for key in arrays) != layers or slot_mask.dim() != 2:
        raise ValueError(f"the saved KV cache does not fit the model ({layers} layers); load it with its own")
    past = DynamicCache(config=config)
    for index in range(layers):
        keys, values = (torch.as_tensor(arrays[f"kv_{kind}_{index}"]) for kind in ("keys", "values"))
        if keys.dim() != 4 or keys.shape != values.shape or keys.shape[::2] != slot_mask.shape:
            raise ValueError(
                f"layer {index} of the saved KV cache has shape {tuple(keys.shape)}, which does not match "
                f"its slot mask {tuple(slot_mask.shape)}"
            )
        past.update(keys.to(device, dtype), values.to(device, dtype), index)
    cache.past = past
    for name in KV_BOOKKEEPING:
        setattr(cache, name, torch.as_tensor(arrays[f"kv_{name}"]).to(device))
    if "kv_outdated" in arrays:
        cache.outdated = torch.as_tensor(arrays["kv_outdated"]).to(device, torch.bool)
    if "kv_write_slot" in arrays:
        write_slot = torch.as_tensor(arrays["kv_write_slot"])
        if write_slot.shape != slot_mask.shape[:1] or bool(
            ((write_slot < 0) | (write_slot > slot_mask.shape[1])).any()
        ):
            raise ValueError(
                f"kv_write_slot of the saved KV cache must hold {slot_mask.shape[0]} slots, each in "
                f"0..{slot_mask.shape[1]}; load the checkpoint with the run that saved it"
            )
        cache.write_slot = write_slot.to(device, torch.long)
