"""Saving, exporting and resuming agents. Every write is atomic: built under a temporary name, then renamed.

A saved agent is a directory::

    agent.json          algorithm, config, layout, counters, KL controller state
    model/              the trained LM as an HF directory (safetensors; AutoModelForCausalLM loads it)
    reference/          the frozen reference LM (HF directory)
    value_head.pt       the value head
    deepspeed/          DeepSpeed checkpoint: weights and optimizer state (ZeRO-aware)
    rng.pt              Python, NumPy and torch RNG states
    ...                 files of the algorithm (``_save_extra_files``; DQN: ``target.pt``, ``replay.npz``)

SB3's ``CheckpointCallback`` calls ``save("<dir>/<prefix>_<n>_steps.zip")``; the ``.zip`` suffix is dropped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from agents.base import TextAlgorithm

AgentT = TypeVar("AgentT", bound="TextAlgorithm")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_dir(path: Path, build: Any) -> None:
    """Build a directory under a temporary name, then swap it in (an old one is removed only afterwards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _clean(path: Path) -> Path:
    return path.with_suffix("") if path.suffix == ".zip" else path


def _save_hf(lm: Any, directory: Path, tokenizer: Any = None) -> None:
    lm.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)


def export_lm(agent: TextAlgorithm, path: Path) -> None:
    """The trained LM (and the env tokenizer, when the env exposes one) as an HF directory."""
    tokenizer = agent._env_attr("tokenizer") if agent.env is not None else None
    _atomic_dir(_clean(path), lambda tmp: _save_hf(agent.module.lm, tmp, tokenizer))


def save(agent: TextAlgorithm, path: Path) -> None:
    """Write the full training state of ``agent`` to the directory ``path``."""
    tokenizer = agent._env_attr("tokenizer") if agent.env is not None else None

    def build(tmp: Path) -> None:
        _save_hf(agent.module.lm, tmp / "model", tokenizer)
        _save_hf(agent.reference.lm, tmp / "reference")
        torch.save(agent.module.value_head.state_dict(), tmp / "value_head.pt")
        agent.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
        torch.save(
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            tmp / "rng.pt",
        )
        state = {
            "algo": type(agent).__name__,
            "config": _jsonable(agent.config),
            "seed": agent.seed,
            "model_source": str(agent.model_source),
            "max_new_tokens": agent.max_new_tokens,
            "deepspeed_config": agent.deepspeed_config
            if isinstance(agent.deepspeed_config, (dict, type(None)))
            else str(agent.deepspeed_config),
            "num_timesteps": agent.num_timesteps,
            "n_updates": agent._n_updates,
            "episode_num": agent._episode_num,
            "kl_ctl": agent.kl_ctl.state_dict(),
            "extra": agent._extra_state(),
        }
        (tmp / "agent.json").write_text(json.dumps(state, indent=2))
        agent._save_extra_files(tmp)

    _atomic_dir(_clean(path), build)


def _jsonable(config: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def load(cls: type[AgentT], path: Path, env: Any = None, device: Any = "auto", **kwargs: Any) -> AgentT:
    """Rebuild ``cls`` from :func:`save`'s directory and restore its training state exactly."""
    path = _clean(path)
    state_file = path / "agent.json"
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved agent (no agent.json); pass the directory save() wrote"
        )
    state = json.loads(state_file.read_text())
    if state["algo"] != cls.__name__:
        raise ValueError(f"{str(path)!r} holds a {state['algo']} agent; load it with {state['algo']}.load")
    if env is None:
        raise ValueError("load needs env=...: the agent's layout (P, N, vocabulary) is checked against it")
    from transformers import AutoModelForCausalLM

    config = cls.config_class(**state["config"])
    agent = cls(
        env,
        model=AutoModelForCausalLM.from_pretrained(path / "model"),
        config=config,
        reference_model=AutoModelForCausalLM.from_pretrained(path / "reference"),
        deepspeed_config=kwargs.pop("deepspeed_config", state["deepspeed_config"]),
        seed=state["seed"],
        device=device,
        **kwargs,
    )
    agent.model_source = state["model_source"]
    agent.module.value_head.load_state_dict(torch.load(path / "value_head.pt", map_location=agent.device))
    agent.engine.load_checkpoint(str(path / "deepspeed"), tag="state", load_module_strict=True)
    agent.num_timesteps, agent._n_updates = state["num_timesteps"], state["n_updates"]
    agent._episode_num = state["episode_num"]
    agent.kl_ctl.load_state_dict(state["kl_ctl"])
    agent._load_extra_state(state["extra"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    agent._load_extra_files(path)
    return agent
