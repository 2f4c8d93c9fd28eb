"""Saving, exporting and resuming agents, from the state an agent hands over (:class:`AgentState`).

A saved agent is a directory::

    agent.json          algorithm, config, settings, counters, algorithm state (JSON)
    model/              the trained LM as an HF directory (safetensors; AutoModelForCausalLM loads it)
    reference/          the frozen reference LM (HF directory)
    base/, adapter/     instead of model/ and reference/ for a LoRA agent: the frozen base weights (HF
                        directory) and the adapters in peft's format (see :mod:`agents.lora`)
    value_head.safetensors, ...   further networks (DQN: target.safetensors)
    deepspeed/          DeepSpeed checkpoint: trained weights and optimizer state (ZeRO-aware, per rank)
    rng.json            Python, NumPy and torch RNG states
    env_state.json      every env's RNG, prompt sampler and running episode (exact resume)
    rollout_state.npz   the last observation and the running episodes' statistics
    ...                 further files of the algorithm (DQN: replay.npz)

Our own files hold no pickles: JSON, safetensors and ``.npz`` read with ``allow_pickle=False``.

Every write goes through :func:`infra.storage.atomic_directory`: the checkpoint is built under a
temporary name, fsynced and then swapped in, so the path always holds a whole checkpoint, the old or the new
one. A directory that is not a checkpoint, or a file, is never replaced.

SB3's ``CheckpointCallback`` calls ``save("<dir>/<prefix>_<n>_steps.zip")``; the ``.zip`` suffix is dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agents import distributed, lora
from infra.storage import atomic_directory, check_replaceable, mark_owned, recover_directory
from textenv.models import no_hf_progress_bars

STATE_FILE = "agent.json"
RNG_FILE = "rng.json"
ENV_FILE = "env_state.json"
ROLLOUT_FILE = "rollout_state.npz"
SETTINGS_KEYS = ("seed", "model_source", "max_new_tokens", "deepspeed_config")
COUNTER_KEYS = ("num_timesteps", "n_updates", "episode_num")


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


def _legacy_checkpoint(path: Path) -> bool:
    """A checkpoint written before the ownership mark: agent.json naming an algorithm, and rng.json."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(state, dict) and "algo" in state and (path / RNG_FILE).is_file()


def _check_target(path: Path, what: str) -> None:
    """Refuse to replace anything but an earlier checkpoint (or export) of ours: a directory holding the
    mark :data:`infra.storage.OWNER_FILE` that save and export write (never a user's own model folder)."""
    check_replaceable(path, what, _legacy_checkpoint if what == "checkpoint" else None)


def _save_hf(lm: Any, directory: Path, tokenizer: Any = None, merge: bool = True) -> None:
    """``lm`` as a plain HF directory; a peft model with its adapters merged (``merge``) or its base alone
    (quietly: no progress bar)."""
    if lora.is_peft(lm):
        with no_hf_progress_bars():
            lora.save_plain(lm, directory, tokenizer, merge=merge)
        return
    with no_hf_progress_bars():
        lm.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)


def export_lm(lm: Any, path: Path, tokenizer: Any = None) -> None:
    """The LM (and the env tokenizer, when given) as an HF directory, written atomically; LoRA adapters are
    merged in. Under a launcher every rank calls it (ZeRO-3 gathers the weights) and rank 0 writes."""
    path = checkpoint_path(path)
    _check_target(path, "export")
    with distributed.gathered(lm):
        if distributed.is_main():
            with atomic_directory(path) as tmp:
                _save_hf(lm, tmp, tokenizer)
                mark_owned(tmp, "export")
    distributed.barrier()


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


def resume_files(
    env: Any, last_obs: dict[str, np.ndarray], episode_starts: np.ndarray, rollout: dict[str, np.ndarray]
) -> dict[str, Callable[[Path], None]]:
    """Writers of ``env_state.json`` (every env's RNG, prompt sampler and running episode, from its
    ``state_dict()``) and ``rollout_state.npz`` (the last observation and the running episodes' statistics),
    so that ``load`` then ``learn(..., reset_num_timesteps=False)`` continues the very episodes the saved run
    was in. Empty when the env cannot give its state."""
    try:
        states = env.env_method("state_dict")
    except AttributeError:
        return {}
    arrays = {
        "input_ids": np.asarray(last_obs["input_ids"]),
        "attention_mask": np.asarray(last_obs["attention_mask"]),
        "episode_starts": episode_starts,
        **rollout,
    }

    def write_env(path: Path) -> None:
        path.write_text(json.dumps(states))

    def write_rollout(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    return {ENV_FILE: write_env, ROLLOUT_FILE: write_rollout}


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
    tokenizer; a peft model as its base weights), ``modules`` as safetensors, the DeepSpeed ``engine`` (frozen
    weights left out: they are in the HF directory), the RNG states, ``files`` by writer.

    Under a launcher every rank calls it: DeepSpeed writes each rank's shard into a staging directory next to
    ``path`` (the ranks must share the file system), then rank 0 moves it into the checkpoint it builds and
    writes everything else (ZeRO-3 weights gathered first). A failure on rank 0 raises on every rank."""
    path = checkpoint_path(path)
    _check_target(path, "checkpoint")
    exclude_frozen = _has_frozen(engine)
    networks = [*lms.values(), *modules.values()]

    def write(tmp: Path) -> None:
        for index, (name, lm) in enumerate(lms.items()):
            _save_hf(lm, tmp / name, tokenizer if index == 0 else None, merge=False)
        for name, module in modules.items():
            _save_module(module, tmp / f"{name}.safetensors")
        (tmp / RNG_FILE).write_text(json.dumps(_rng_state()))
        for name, writer in (files or {}).items():
            writer(tmp / name)
        (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=2))
        mark_owned(tmp, "checkpoint")

    if distributed.world_size() == 1:
        with atomic_directory(path) as tmp:
            deepspeed_dir = str(tmp / "deepspeed")
            engine.save_checkpoint(
                deepspeed_dir, tag="state", save_latest=False, exclude_frozen_parameters=exclude_frozen
            )
            with _whole_weights(networks):
                write(tmp)
        return
    staging = path.parent / f".{path.name}.deepspeed-staging"  # ours: left over only by a killed save
    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()
    engine.save_checkpoint(
        str(staging), tag="state", save_latest=False, exclude_frozen_parameters=exclude_frozen
    )
    distributed.barrier()
    error: BaseException | None = None
    with _whole_weights(networks):  # every rank: a ZeRO-3 gather is collective
        if distributed.is_main():
            try:
                with atomic_directory(path) as tmp:
                    os.replace(staging, tmp / "deepspeed")
                    write(tmp)
            except BaseException as caught:  # noqa: BLE001  (re-raised below, after the ranks agree)
                error = caught
    if distributed.any_rank(error is not None):
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 failed to write the checkpoint {str(path)!r}; see its error")


def _has_frozen(engine: Any) -> bool:
    """Whether the engine's module has frozen weights (LoRA's base), which DeepSpeed then leaves out."""
    module = getattr(engine, "module", None)
    return module is not None and any(not p.requires_grad for p in module.parameters())


@contextlib.contextmanager
def _whole_weights(networks: list[Any]) -> Iterator[None]:
    """ZeRO-3 partitions of ``networks`` gathered inside the block (collective); a no-op otherwise."""
    with contextlib.ExitStack() as stack:
        for network in networks:
            stack.enter_context(distributed.gathered(network))
        yield


@contextlib.contextmanager
def reading(file: Path) -> Iterator[None]:
    """Turn any failure while reading ``file`` into an error that names it and says what to do."""
    if not file.exists():
        raise FileNotFoundError(
            f"{file} is missing: the checkpoint is incomplete; save it again or load another checkpoint"
        )
    try:
        yield
    except Exception as error:  # noqa: BLE001  (any failure here means the file is damaged)
        raise ValueError(
            f"{file} could not be read ({type(error).__name__}: {str(error)[:300]}); the checkpoint is "
            "damaged or was written by another version: save it again or load another checkpoint"
        ) from error


class SavedAgent:
    """A checkpoint directory opened for loading: its :class:`AgentState` and readers for the rest."""

    def __init__(self, path: Path, state: AgentState) -> None:
        self.path, self.state = path, state

    def config(self, config_class: type) -> Any:
        """The saved config as ``config_class`` (settings it lacks take their defaults)."""
        with reading(self.path / STATE_FILE):
            known = {f.name for f in dataclasses.fields(config_class)}
            unknown = sorted(set(self.state.config) - known)
            if unknown:
                raise ValueError(f"its config has settings {config_class.__name__} does not know: {unknown}")
            return config_class(**self.state.config)

    def load_lm(self, name: str) -> Any:
        from transformers import AutoModelForCausalLM

        with reading(self.path / name), no_hf_progress_bars():
            return AutoModelForCausalLM.from_pretrained(self.path / name, use_safetensors=True)  # no pickle

    def peft_config(self) -> Any:
        """The ``LoraConfig`` of a LoRA agent's checkpoint (its ``adapter/`` directory), else None."""
        folder = self.path / lora.ADAPTER_DIR
        if not folder.is_dir():
            return None
        with reading(folder / "adapter_config.json"):
            return lora.read_config(folder)

    def load_modules(self, modules: dict[str, nn.Module], device: torch.device | str) -> None:
        for name, module in modules.items():
            with reading(self.path / f"{name}.safetensors"):
                _load_module(module, self.path / f"{name}.safetensors", device)

    def load_engine(self, engine: Any, precision: str | None = None) -> None:
        """DeepSpeed's state (weights, optimizer, schedule) into ``engine``, which runs in ``precision``."""
        folder = self.path / "deepspeed"
        saved = self.state.settings.get("precision_used")
        if precision is not None and saved is not None and saved != precision:
            raise ValueError(
                f"{self.path} was trained in {saved} and is being loaded in {precision}: DeepSpeed's {saved} "
                f"optimizer state does not load into a {precision} engine. Load it with precision={saved!r} "
                f"(e.g. {self.state.algo}.load(path, env=env, precision={saved!r}))"
            )
        strict = not _has_frozen(engine)  # frozen weights (LoRA's base) were left out and come from base/
        lm_dir = self.path / (lora.BASE_DIR if (self.path / lora.BASE_DIR).is_dir() else "model")
        with reading(folder / "state"):  # a missing folder: say so
            pass
        try:
            loaded, _ = engine.load_checkpoint(str(folder), tag="state", load_module_strict=strict)
        except RuntimeError as error:
            if "state_dict" not in str(error):
                with reading(folder / "state"):
                    raise
            missing = str(error).count('"') // 2
            raise ValueError(
                f"{lm_dir} does not hold the network this checkpoint trained ({missing} weight names differ "
                f"from {folder / 'state'}): the folder was replaced or comes from another checkpoint; put "
                "back the one saved with it"
            ) from None
        except (KeyError, AttributeError) as error:  # e.g. a bf16 engine reading an fp32 optimizer state
            other = {"bf16": "fp32", "fp32": "bf16"}.get(precision or "")
            hint = f"; if it was saved in {other}, load it with precision={other!r}" if other else ""
            with reading(folder / "state"):
                raise ValueError(f"{type(error).__name__}: {error}{hint}") from error
        with reading(folder / "state"):
            if loaded is None:
                raise ValueError("DeepSpeed found no checkpoint in it")

    def load_resume_files(
        self, env: Any, n_envs: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]] | None:
        """Restore the env's episode state written by :func:`resume_files`; returns the last observation,
        the episode starts and the rollout arrays (None when the checkpoint has no env state)."""
        env_file, rollout_file = self.path / ENV_FILE, self.path / ROLLOUT_FILE
        if not (env_file.is_file() and rollout_file.is_file()):
            return None
        with reading(env_file):
            states = json.loads(env_file.read_text())
            if not isinstance(states, list):
                raise ValueError("expected a list with one state per env")
        if len(states) != n_envs:
            raise ValueError(
                f"{env_file} holds {len(states)} environments, the env passed to load has {n_envs}; "
                "load with the same number of envs to resume exactly"
            )
        # a reset first, so that the wrappers around each env (SB3's Monitor, gymnasium's order check) see an
        # episode in progress; the saved state then replaces everything the reset drew
        env.reset()
        with reading(env_file):
            for index, state in enumerate(states):
                env.env_method("load_state_dict", state, indices=[index])
        with reading(rollout_file), np.load(rollout_file, allow_pickle=False) as data:
            obs = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
            arrays = {key: data[key] for key in data.files}
        return obs, arrays["episode_starts"], arrays

    def restore_rng(self) -> None:
        with reading(self.path / RNG_FILE):
            rng = json.loads((self.path / RNG_FILE).read_text())
            version, internal, gauss = rng["python"]
            name, keys, pos, has_gauss, cached = rng["numpy"]
            torch_state = torch.tensor(rng["torch"], dtype=torch.uint8)
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch_state)


def _check_saved_values(state: AgentState) -> None:
    """The counters and settings of ``agent.json`` have the types and ranges a saved run gives them."""

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for key in COUNTER_KEYS:
        value = state.counters[key]
        if not whole(value) or value < 0:
            raise ValueError(f"counters.{key} is {value!r}; expected a whole number >= 0")
    settings = state.settings
    checks = {
        "seed": settings["seed"] is None or whole(settings["seed"]),
        "model_source": isinstance(settings["model_source"], str),
        "max_new_tokens": settings["max_new_tokens"] is None  # SFT's checkpoint
        or (whole(settings["max_new_tokens"]) and settings["max_new_tokens"] > 0),
        "deepspeed_config": isinstance(settings["deepspeed_config"], (str, dict, type(None))),
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"settings.{key} is {settings[key]!r}, which no saved run writes")
    if not isinstance(state.config, dict) or not isinstance(state.extra, dict):
        raise ValueError("'config' and 'extra' must be objects")


def read(path: Path, algo: str) -> SavedAgent:
    """Open the checkpoint at ``path`` (written by :func:`save`) for an agent of class ``algo``."""
    path = recover_directory(checkpoint_path(path))
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved agent (no {STATE_FILE}); pass the directory save() wrote"
        )
    with reading(state_file):
        saved = json.loads(state_file.read_text())
        fields = {f.name for f in dataclasses.fields(AgentState)}
        if not isinstance(saved, dict) or set(saved) != fields:
            raise ValueError(f"expected an object with the keys {sorted(fields)}")
        state = AgentState(**saved)
        for part, keys in (("settings", SETTINGS_KEYS), ("counters", COUNTER_KEYS)):
            value = getattr(state, part)
            if not isinstance(value, dict) or not set(keys) <= set(value):
                raise ValueError(f"{part!r} must be an object with the keys {list(keys)}")
        _check_saved_values(state)
    if state.algo != algo:
        raise ValueError(f"{str(path)!r} holds a {state.algo} agent; load it with {state.algo}.load")
    return SavedAgent(path, state)
