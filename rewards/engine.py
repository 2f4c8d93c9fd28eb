"""DeepSpeed engine for the trainable actor-critic: config loading, validation, defaults and initialisation.

On CPU the default is one process without a launcher: the torch.distributed variables are filled in while
DeepSpeed starts if missing (``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, ``RANK=0``, ``WORLD_SIZE=1``,
``LOCAL_RANK=0``; removed again afterwards) and the process group uses gloo, with ZeRO stage 0. On GPU the
default is ZeRO-2. The precision (bf16 or fp32) follows the agent's ``precision`` setting.

Several processes (N on one machine): start the same script with either launcher::

    torchrun --nproc_per_node N script.py [args]   # CPU or GPU; add --master_port PORT if 29500 is taken
    deepspeed --num_gpus N script.py [args]        # appends --local_rank=R to the script's own arguments

Both set the variables above, so :func:`init_distributed` joins their process group instead of making one.
Every rank steps its own environments and DeepSpeed averages the gradients across ranks: with each rank's
loss a mean over its own minibatch of b episodes, N ranks take the step one process would take on N * b
(``train_batch_size`` becomes ``b * WORLD_SIZE``). ``tests/test_agents_distributed.py`` runs the torchrun
command with 2 CPU processes (gloo) and checks the averaged gradient and the parameters after one step
against one process on the whole batch, for ZeRO stages 0, 1 and 2 and with gradient clipping. ZeRO stages
0, 1 and 2 are supported; stage 3 (parameter partitioning) is refused because the KV-cached rollout needs
whole parameters on every rank.

>>> cfg = build_config({"zero_optimization": {"stage": 1}}, learning_rate=1e-5, max_grad_norm=1.0,
...                    train_batch_size=8, on_gpu=False, precision="fp32")
>>> cfg["zero_optimization"]["stage"], cfg["gradient_clipping"], cfg["optimizer"]["params"]["lr"]
(1, 1.0, 1e-05)
>>> build_config(None, 1e-5, max_grad_norm=None, train_batch_size=8, on_gpu=False)["gradient_clipping"]
0.0
>>> build_config({"bf16": {"enabled": False}}, 1e-5, 1.0, 8, on_gpu=False, precision="auto")["bf16"]
{'enabled': False}
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        checks = [
            getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ]
        return any(bool(check()) for check in checks if check is not None)
    return False


def resolve_precision(setting: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for a ``precision`` setting on ``device``."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision={setting!r} is not known; use one of {PRECISIONS}")
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return setting  # an explicit "bf16" also runs where bf16 is emulated (slowly)


CPU_DEFAULTS: dict[str, Any] = {
    "zero_optimization": {"stage": 0},
    "fp16": {"enabled": False},
    "steps_per_print": 10**9,
    "wall_clock_breakdown": False,
}
GPU_DEFAULTS: dict[str, Any] = {
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    "steps_per_print": 10**9,
    "wall_clock_breakdown": False,
}


def load_config(config: str | os.PathLike | dict | None) -> dict[str, Any]:
    """A DeepSpeed config from a dict, a JSON file path or None (empty: defaults only), deep-copied."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(
            f"DeepSpeed config {str(path)!r} does not exist; pass a JSON file path or a dict"
        )
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed config {str(path)!r} is not valid JSON ({err}); fix the file") from err
    if not isinstance(loaded, dict):
        raise ValueError(
            f"DeepSpeed config {str(path)!r} must hold a JSON object, got {type(loaded).__name__}"
        )
    return loaded


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def build_config(
    config: str | os.PathLike | dict | None,
    learning_rate: float,
    max_grad_norm: float | None,
    train_batch_size: int,
    on_gpu: bool,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Merge a user config over our defaults and validate it. User keys win, except the batch sizes, which
    follow the agent's minibatch size (one ``engine.step()`` per minibatch, no accumulation).

    ``bf16.enabled`` follows the agent's ``precision`` (see :mod:`agents.precision`): with ``"auto"`` a
    ``bf16`` key in the user's config decides, else the hardware; an explicit ``"bf16"`` or ``"fp32"`` must
    agree with the config's key if it has one."""
    user = load_config(config)
    cfg = _merge(GPU_DEFAULTS if on_gpu else CPU_DEFAULTS, user)
    bf16 = user.get("bf16")
    user_bf16 = bf16.get("enabled") if isinstance(bf16, dict) else None
    if precision == "auto" and user_bf16 is not None:
        precision = "bf16" if user_bf16 else "fp32"
    precision = resolve_precision(precision, torch.device("cuda" if on_gpu else "cpu"))
    if user_bf16 is not None and bool(user_bf16) != (precision == "bf16"):
        raise ValueError(
            f"the DeepSpeed config sets 'bf16.enabled' to {user_bf16} but the agent's precision is "
            f"{precision!r}; pass precision='auto' to let the config decide, or drop 'bf16' from the config"
        )
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": precision == "bf16"}
    if cfg.get("fp16", {}).get("enabled") and not on_gpu:
        raise ValueError(
            "'fp16.enabled' is true in the DeepSpeed config, but fp16 training needs a GPU; on CPU remove "
            "'fp16' from the config and use precision='bf16' (or 'fp32')"
        )
    cfg.setdefault(
        "optimizer", {"type": "AdamW", "params": {"lr": learning_rate, "eps": 1e-8, "weight_decay": 0.0}}
    )
    cfg["optimizer"].setdefault("params", {}).setdefault("lr", learning_rate)
    # None must disable clipping explicitly: DeepSpeed's own default for a missing key is 1.0
    cfg.setdefault("gradient_clipping", max_grad_norm if max_grad_norm is not None else 0.0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        cfg.pop(key, None)
    cfg["train_micro_batch_size_per_gpu"] = max(1, train_batch_size)
    cfg["gradient_accumulation_steps"] = 1
    cfg["train_batch_size"] = max(1, train_batch_size) * world
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the bad key and the fix, for the mistakes DeepSpeed reports obscurely."""
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"'zero_optimization' must be an object like {{'stage': 2}}, got {zero!r}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2):
        raise ValueError(
            f"'zero_optimization.stage' is {stage!r}; use 0, 1 or 2 "
            "(stage 3 partitions parameters, which the KV-cached rollout cannot use)"
        )
    if cfg.get("bf16", {}).get("enabled") and cfg.get("fp16", {}).get("enabled"):
        raise ValueError("both 'bf16.enabled' and 'fp16.enabled' are true; enable at most one of them")
    clip = cfg.get("gradient_clipping", 0.0)
    if not isinstance(clip, (int, float)) or clip < 0:
        raise ValueError(f"'gradient_clipping' must be a number >= 0 (0 disables it), got {clip!r}")
    optimizer = cfg.get("optimizer", {})
    if not isinstance(optimizer, dict) or "type" not in optimizer:
        raise ValueError(f"'optimizer' must be an object with a 'type' such as 'AdamW', got {optimizer!r}")
    lr = optimizer.get("params", {}).get("lr")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"'optimizer.params.lr' must be a positive number, got {lr!r}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@contextlib.contextmanager
def launcher_environment() -> Iterator[None]:
    """The torch.distributed variables a launcher would set, for one process without a launcher.

    Missing ones are set for the duration of the block and removed afterwards, so that creating an agent
    leaves ``os.environ`` as it found it (a child process started later picks its own free port).
    """
    added = {}
    defaults = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    for name in LAUNCHER_VARIABLES:
        if name not in os.environ:
            added[name] = os.environ[name] = defaults.get(name) or str(_free_port())
    try:
        yield
    finally:
        for name, value in added.items():
            if os.environ.get(name) == value:
                del os.environ[name]


def init_distributed() -> None:
    """Start torch.distributed for DeepSpeed once: gloo on CPU, nccl on GPU, no launcher for 1 process."""
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    with launcher_environment():
        deepspeed.init_distributed(
            dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False
        )


SAFE_CHECKPOINT_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""The only non-tensor classes DeepSpeed's ZeRO 0-2 checkpoints hold: plain records and an enum."""


def safe_torch_load(path: str, map_location: Any = None) -> Any:
    """``torch.load`` of a DeepSpeed checkpoint file, without unpickling arbitrary objects (weights only)."""
    import importlib

    allowed = []
    for qualified in SAFE_CHECKPOINT_GLOBALS:
        module, _, name = qualified.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), name))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refused to load {path!r}: it holds objects other than tensors and plain data ({error}). "
            "textenv never unpickles code from a checkpoint; re-save it with a trusted textenv"
        ) from error


def initialize(model: torch.nn.Module, config: dict[str, Any]) -> Any:
    """``deepspeed.initialize`` on the trainable parameters of ``model``; returns the engine.

    The engine builds the optimizer from ``config["optimizer"]``; on CPU a torch AdamW is passed in instead,
    because DeepSpeed's own CPU Adam needs a compiled op. The engine's checkpoint reader is replaced by
    :func:`safe_torch_load`, so loading a checkpoint never unpickles code.
    """
    import deepspeed

    init_distributed()
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = copy.deepcopy(config)
    optimizer = None
    if not torch.cuda.is_available():
        spec = cfg.pop("optimizer")
        if spec["type"].lower() not in ("adam", "adamw"):
            raise ValueError(f"on CPU the optimizer must be Adam or AdamW, got {spec['type']!r}")
        kwargs = {
            k: v for k, v in spec.get("params", {}).items() if k in ("lr", "betas", "eps", "weight_decay")
        }
        optimizer = torch.optim.AdamW(params, **kwargs)
    with launcher_environment():
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, config=cfg
        )
    engine.checkpoint_engine.load = safe_torch_load
    return engine
