"""Checkpoints of the transformer agents: ``save``, ``load`` and ``export``, and their extension points.

:class:`Checkpointing` is a mixin of :class:`agents.base.TextAlgorithm`. It hands
:func:`agents.checkpoint.save` an :class:`~agents.checkpoint.AgentState` plus the networks, the engine
(optimizer state) and the env's episode state; :meth:`Checkpointing.load` rebuilds an agent from such a
directory. Subclasses extend a checkpoint through ``_extra_state`` / ``_load_extra_state`` (JSON-able
state), ``_extra_modules`` (networks saved as safetensors) and ``_extra_files`` / ``_load_extra_files``
(further files, e.g. DQN's replay).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from agents import checkpoint, distributed, lora
from agents.rollout import cache_arrays, restore_cache

SelfCheckpointing = TypeVar("SelfCheckpointing", bound="Checkpointing")


class Checkpointing:
    """save / load / export for :class:`agents.base.TextAlgorithm`, which provides the attributes below."""

    config_class: ClassVar[Any]
    config: Any
    policy: Any
    reference: Any
    engine: Any
    env: Any
    kl_ctl: Any
    rollout: Any
    rollout_copy: Any
    ema: Any
    deepspeed_config: Any
    model_source: Any
    seed: Any
    max_new_tokens: Any
    precision: str
    num_timesteps: int
    n_envs: int
    _n_updates: int
    _episode_num: int
    _diverged: bool
    _last_obs: Any
    _last_episode_starts: Any
    _step_cache: Any
    actor: Any

    def _env_attr(self, name: str) -> Any:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """Extension point: algorithm state (JSON-able) that a checkpoint must restore, e.g. a baseline."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Extension point: restore what :meth:`_extra_state` returned."""

    def _extra_modules(self) -> dict[str, nn.Module]:
        """Extension point: networks besides the policy that a checkpoint holds, by file stem."""
        return {}

    def _checkpoint_state(self) -> checkpoint.AgentState:
        """Everything :func:`agents.checkpoint.save` writes, handed over explicitly."""
        ds_config = self.deepspeed_config
        return checkpoint.AgentState(
            algo=type(self).__name__,
            config=dataclasses.asdict(self.config),
            settings={
                "seed": self.seed,
                "model_source": str(self.model_source),
                "max_new_tokens": self.max_new_tokens,
                "precision_used": self.precision,
                "deepspeed_config": ds_config
                if isinstance(ds_config, (dict, type(None)))
                else str(ds_config),
            },
            counters={
                "num_timesteps": self.num_timesteps,
                "n_updates": self._n_updates,
                "episode_num": self._episode_num,
            },
            extra={"kl_ctl": self.kl_ctl.state_dict() if self.kl_ctl else None, **self._extra_state()},
        )

    # override: a checkpoint is a directory, so no file objects (SB3's save also takes a BufferedIOBase)
    def save(self, path: str | os.PathLike, exclude: Any = None, include: Any = None) -> None:  # type: ignore[override]  # noqa: ARG002
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
            self._checkpoint_state(),
            lms=self._checkpoint_lms(),
            modules={"value_head": self.policy.value_head, **self._ema_modules(), **self._extra_modules()},
            engine=self.engine,
            tokenizer=self._env_attr("tokenizer") if self.env is not None else None,
            files={**self._resume_files(), **self._adapter_files(), **self._extra_files()},
        )

    def _checkpoint_lms(self) -> dict[str, Any]:
        """The HF directories of a checkpoint: the trained LM and the reference, or for a LoRA agent the base
        weights once (the reference is the base with adapters off)."""
        lm = self.policy.lm
        return {lora.BASE_DIR: lm} if lora.is_peft(lm) else {"model": lm, "reference": self.reference.lm}

    def _adapter_files(self) -> dict[str, Any]:
        """A LoRA agent's adapters in peft's format (``adapter/``)."""
        lm = self.policy.lm
        return {lora.ADAPTER_DIR: lambda path: lora.save_adapter(lm, path)} if lora.is_peft(lm) else {}

    def _resume_files(self) -> dict[str, Any]:
        """The env's episodes and the rollout in progress (:func:`agents.checkpoint.resume_files`)."""
        if self.env is None or not isinstance(self._last_obs, dict):
            return {}
        arrays = self.rollout.state_arrays()
        if getattr(self.config, "keep_kv_cache", False):  # computed with earlier weights: not recomputable
            arrays |= cache_arrays(self._step_cache)
        starts = np.asarray(self._last_episode_starts)
        return checkpoint.resume_files(self.env, self._last_obs, starts, arrays)

    def _extra_files(self) -> dict[str, Any]:
        """Extension point: ``{file name: writer(path)}`` for further checkpoint files (DQN's replay)."""
        return {}

    def _load_extra_files(self, directory: Path) -> None:
        """Extension point: read what :meth:`_extra_files` wrote (last step of :meth:`load`)."""

    def _ema_modules(self) -> dict[str, nn.Module]:
        """``{"ema": the fp32 average}`` when the agent keeps an EMA of its weights (``ema_decay``)."""
        return {"ema": self.ema.model} if self.ema is not None else {}

    def export(self, path: str | os.PathLike, ema: bool = False) -> None:
        """The trained LM alone as an HF directory (safetensors) that ``AutoModelForCausalLM`` loads; with
        ``ema=True`` the exponential moving average of its weights instead (fp32; needs ``ema_decay``)."""
        tokenizer = self._env_attr("tokenizer") if self.env is not None else None
        if ema and self.ema is None:
            raise ValueError(
                "export(..., ema=True) needs an agent that keeps an EMA of its weights; create it with "
                "ema_decay=0.992 (for example), or export without ema=True"
            )
        checkpoint.export_lm(self.ema.model if ema else self.policy.lm, Path(path), tokenizer)

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
        agent = build(
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
        saved_ema = saved.state.config.get("ema_decay") is not None  # else a new EMA starts from the weights
        ema = agent._ema_modules() if saved_ema else {}
        modules = {"value_head": agent.policy.value_head, **ema, **agent._extra_modules()}
        if distributed.is_partitioned(agent.policy):  # ZeRO-3: DeepSpeed's checkpoint restores the head
            modules.pop("value_head")
        saved.load_modules(modules, agent.device)
        saved.load_engine(agent.engine, agent.precision)
        counters = saved.state.counters
        agent.num_timesteps, agent._n_updates = counters["num_timesteps"], counters["n_updates"]
        agent._episode_num = counters["episode_num"]
        with checkpoint.reading(saved.path / checkpoint.STATE_FILE):  # a bad value names the file
            if agent.kl_ctl is not None:
                agent.kl_ctl.load_state_dict(saved.state.extra["kl_ctl"])
            agent._load_extra_state(saved.state.extra)
        saved.restore_rng()
        resumed = None
        if distributed.is_main():  # the saved episodes are rank 0's
            resumed = saved.load_resume_files(agent.env, agent.n_envs)
        else:  # other ranks start fresh episodes on their own seed, moved on by the updates already made
            agent.set_random_seed(distributed.rank_seed(settings["seed"] or 0) + agent._n_updates)
        if resumed is not None:
            agent._last_obs, agent._last_episode_starts, arrays = resumed
            agent.rollout.load_state_arrays(arrays)
            weight = next(agent.actor.parameters())
            with checkpoint.reading(saved.path / checkpoint.ROLLOUT_FILE):
                config = agent.actor.lm.config
                restore_cache(arrays, agent._step_cache, config, weight.dtype, weight.device)
        agent._load_extra_files(saved.path)
        if agent.rollout_copy is not None:
            agent.rollout_copy.sync()
        return agent
