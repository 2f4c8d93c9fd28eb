"""The DeepSpeed config every engine is built from: the precision, our CPU and GPU defaults, the user's config
merged over them, and the checks that name a bad key and its fix before DeepSpeed reports it obscurely.

:func:`build_config` is what :func:`infra.engine.initialize` is given; :func:`zero_stage` and
:func:`offloads` read a built config.

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

import copy
import json
import os
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
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"deepspeed_config={config!r} ({type(config).__name__}) is not a DeepSpeed config; pass a JSON "
            "file path, a dict, or None for the defaults"
        )
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
    if cfg.get("hybrid_engine", {}).get("enabled"):
        import warnings

        # DeepSpeed's Hybrid Engine swaps in inference kernels behind the module's generate(); our rollouts
        # step the policy through its own KV cache instead. On an H200 (2026-11-26) deepspeed.initialize with
        # it on failed on the actor-critic ("no attribute 'generate'"); on CPU its kernels do not exist.
        warnings.warn(
            "'hybrid_engine.enabled' is switched off: textenv's rollouts do not go through generate(), which "
            "is what DeepSpeed's Hybrid Engine accelerates. They act on a bf16 copy of the trained weights "
            "instead (agents.precision.RolloutCopy; under ZeRO-3 the copy gathered once per rollout); "
            "remove 'hybrid_engine' from the config to silence this",
            stacklevel=2,
        )
        cfg["hybrid_engine"] = {**cfg["hybrid_engine"], "enabled": False}
    zero = cfg.get("zero_optimization")
    if not on_gpu and isinstance(zero, dict) and zero.get("overlap_comm"):
        # a CPU has no streams to overlap on, and with gloo the overlapped reduction raced the optimizer step:
        # under load a rank's ZeRO-3 step read half-reduced gradients and its weights became NaN
        # (DeepSpeed issue #5545 reports overlap_comm data races on GPUs too)
        cfg["zero_optimization"] = {**zero, "overlap_comm": False}
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
    if stage not in ZERO_STAGES:
        raise ValueError(f"'zero_optimization.stage' is {stage!r}; use one of {ZERO_STAGES}")
    for key, stages in (("offload_optimizer", (1, 2, 3)), ("offload_param", (3,))):
        validate_offload(zero.get(key), key, stage, stages)
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


ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def zero_stage(cfg: dict[str, Any]) -> int:
    """The ZeRO stage of a built config (0 when it has none).

    >>> zero_stage({"zero_optimization": {"stage": 3}}), zero_stage({})
    (3, 0)
    """
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def offloads(cfg: dict[str, Any]) -> bool:
    """Whether a config offloads the optimizer state or the parameters (to CPU or NVMe)."""
    zero = cfg.get("zero_optimization", {})
    return any(
        isinstance(zero.get(key), dict) and zero[key].get("device", "none") != "none"
        for key in ("offload_optimizer", "offload_param")
    )


def validate_offload(offload: Any, key: str, stage: int, stages: tuple[int, ...]) -> None:
    """Check ``zero_optimization.<key>`` (``offload_optimizer`` / ``offload_param``) against the stage.

    >>> validate_offload({"device": "cpu"}, "offload_param", 2, (3,))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 'zero_optimization.offload_param' needs ZeRO stage 3, the config has stage 2; ...
    """
    if offload is None:
        return
    name = f"'zero_optimization.{key}'"
    if not isinstance(offload, dict):
        raise ValueError(f'{name} must be an object like {{"device": "cpu"}}, got {offload!r}')
    device = offload.get("device", "none")
    if device not in OFFLOAD_DEVICES:
        raise ValueError(f"{name}.device is {device!r}; use one of {OFFLOAD_DEVICES}")
    if device != "none" and stage not in stages:
        raise ValueError(
            f"{name} needs ZeRO stage {' or '.join(map(str, stages))}, the config has stage {stage}; "
            f"set \"stage\": {stages[-1]} or remove '{key}'"
        )
    if device == "nvme" and not offload.get("nvme_path"):
        raise ValueError(f'{name} offloads to NVMe but sets no "nvme_path"; add the path of a local disk')
