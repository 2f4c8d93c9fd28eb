"""Saving, exporting and resuming agents, from the state an agent hands over (:class:`AgentState`).

A saved agent is a directory::

    agent.json          algorithm, config, settings, counters, algorithm state (JSON)
    model/              the trained LM as an HF directory (safetensors; AutoModelForCausalLM loads it)
    reference/          the frozen reference LM (HF directory)
    value_head.safetensors, ...   further networks (DQN: target.safetensors)
    deepspeed/          DeepSpeed checkpoint: weights and optimizer state (ZeRO-aware)
    rng.json            Python, NumPy and torch RNG states
    ...                 further files of the algorithm (DQN: replay.npz)

Our own files hold no pickles: JSON, safetensors and ``.npz`` read with ``allow_pickle=False``.

Every write goes through :func:`rewards.storage.atomic_directory`: the checkpoint is built under a
temporary name, fsynced and then swapped in, so the path always holds a whole checkpoint, the old or the new
one. A directory that is not a checkpoint, or a file, is never replaced.

SB3's ``CheckpointCallback`` calls ``save("<dir>/<prefix>_<n>_steps.zip")``; the ``.zip`` suffix is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rewards.storage import atomic_directory, recover_directory

STATE_FILE = "agent.json"
RNG_FILE = "rng.json"


@dataclasses.dataclass
class AgentState:
    """The JSON part of a checkpoint: what the agent is and where it stands."""

    algo: str
    config: dict[str, Any]
    settings: dict[str, Any]  # seed, model_source, max_new_tokens, deepspeed_config
    counters: dict[str, int]  # num_timesteps, n_updates, episode_num
    extra: dict[str, Any]  # algorithm state: KL controller, baselines, exploration...


def checkpoint_path(path: Path) -> Path:
    """The directory a checkpoint lives in: ``path`` without SB3's ``.zip`` suffix."""
    return path.with_suffix("") if path.suffix == ".zip" else path


def _check_target(path: Path, what: str) -> None:
    """Refuse to replace anything but an earlier checkpoint (or export) of ours."""
    if path.is_file() or path.is_symlink():
        raise FileExistsError(f"{str(path)!r} is a file; {what} writes a directory. Choose another path")
    if path.is_dir() and any(path.iterdir()):
        ours = (path / STATE_FILE).is_file() or (path / "config.json").is_file() and what == "export"
        if not ours:
            raise FileExistsError(
                f"{str(path)!r} is a non-empty directory that does not hold a textenv {what}; "
                "its files would be lost. Choose a new or empty directory"
            )


def _save_hf(lm: Any, directory: Path, tokenizer: Any = None) -> None:
    lm.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)


def export_lm(lm: Any, path: Path, tokenizer: Any = None) -> None:
    """The LM (and the env tokenizer, when given) as an HF directory, written atomically."""
    path = checkpoint_path(path)
    _check_target(path, "export")
    with atomic_directory(path) as tmp:
        _save_hf(lm, tmp, tokenizer)


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }


def _save_module(module: nn.Module, file: Path) -> None:
    """``module``'s state as safetensors; tensors that share storage (tied weights) are stored once, and
    views into DeepSpeed's flat buffers are copied out first."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in module.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().clone().contiguous()
    save_file(tensors, str(file), metadata={"aliases": json.dumps(aliases)})


def _load_module(module: nn.Module, file: Path, device: torch.device | str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(file), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    tensors = load_file(str(file), device=str(device))
    tensors.update({alias: tensors[name] for alias, name in aliases.items()})
    module.load_state_dict(tensors, strict=True)


def save(
    path: Path,
    state: AgentState,
    lms: dict[str, Any],
    modules: dict[str, nn.Module],
    engine: Any,
    tokenizer: Any = None,
    files: dict[str, Callable[[Path], None]] | None = None,
) -> None:
    """Write a checkpoint to the directory ``path``: ``lms`` as HF directories (the first one with the
    tokenizer), ``modules`` as safetensors, the DeepSpeed ``engine``, the RNG states, ``files`` by writer."""
    path = checkpoint_path(path)
    _check_target(path, "checkpoint")
    with atomic_directory(path) as tmp:
        for index, (name, lm) in enumerate(lms.items()):
            _save_hf(lm, tmp / name, tokenizer if index == 0 else None)
        for name, module in modules.items():
            _save_module(module, tmp / f"{name}.safetensors")
        engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
        (tmp / RNG_FILE).write_text(json.dumps(_rng_state()))
        for name, write in (files or {}).items():
            write(tmp / name)
        (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=2))


class SavedAgent:
    """A checkpoint directory opened for loading: its :class:`AgentState` and readers for the rest."""

    def __init__(self, path: Path, state: AgentState) -> None:
        self.path, self.state = path, state

    def load_lm(self, name: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.path / name, use_safetensors=True)  # never a pickle

    def load_modules(self, modules: dict[str, nn.Module], device: torch.device | str) -> None:
        for name, module in modules.items():
            _load_module(module, self.path / f"{name}.safetensors", device)

    def load_engine(self, engine: Any) -> None:
        engine.load_checkpoint(str(self.path / "deepspeed"), tag="state", load_module_strict=True)

    def restore_rng(self) -> None:
        rng = json.loads((self.path / RNG_FILE).read_text())
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))


def read(path: Path, algo: str) -> SavedAgent:
    """Open the checkpoint at ``path`` (written by :func:`save`) for an agent of class ``algo``."""
    path = recover_directory(checkpoint_path(path))
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved agent (no {STATE_FILE}); pass the directory save() wrote"
        )
    state = AgentState(**json.loads(state_file.read_text()))
    if state.algo != algo:
        raise ValueError(f"{str(path)!r} holds a {state.algo} agent; load it with {state.algo}.load")
    return SavedAgent(path, state)
