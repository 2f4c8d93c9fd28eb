"""DeepSpeed engine for the trainable actor-critic: process group, launcher variables and initialisation.

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
against one process on the whole batch, for ZeRO stages 0, 1 and 2 and with gradient clipping.

ZeRO stages 0 to 3 are supported. Under stage 3 (parameters partitioned across ranks) the agents gather the
weights once per rollout into a whole-weights acting copy (:mod:`agents.distributed`), so the KV-cached
rollout never gathers per token and module. ``offload_optimizer`` (stages 1-3) and ``offload_param`` (stage 3)
are read from the config as DeepSpeed defines them (``{"device": "cpu"}`` or ``{"device": "nvme",
"nvme_path": ...}``); on the CPU accelerator they run with a torch AdamW (there is nothing to offload to) and
are checked, not measured.

The config the engine is built from (precision, defaults, the user's keys, their checks) is
:mod:`infra.ds_config`'s; this module re-exports :func:`~infra.ds_config.build_config`,
:func:`~infra.ds_config.load_config`, :func:`~infra.ds_config.zero_stage`, :func:`~infra.ds_config.offloads`,
:func:`~infra.ds_config.resolve_precision` and :data:`~infra.ds_config.PRECISIONS` for its callers.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import os
import pickle
import socket
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import torch

from infra.ds_config import PRECISIONS as PRECISIONS  # re-exported: the config's names, by their old address
from infra.ds_config import build_config as build_config
from infra.ds_config import load_config as load_config
from infra.ds_config import offloads as offloads
from infra.ds_config import resolve_precision as resolve_precision
from infra.ds_config import zero_stage as zero_stage


def cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``module``'s floating-point parameters to ``dtype`` in place and leave its buffers as they are,
    as DeepSpeed's engine casts the module it trains (rotary ``inv_freq`` stays float32). A frozen copy cast
    this way (the reference, a rollout copy, the zero-shot model) computes what the trained module computes;
    ``module.to(dtype)`` would also round the rotary frequencies. Returns ``module``."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


MALLOC_THRESHOLD = 1 << 30
"""Bytes: glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` set by :func:`keep_freed_memory`."""


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep and reuse freed memory instead of handing it back to the kernel (CPU runs).

    By default glibc serves large blocks with ``mmap`` and returns them with ``munmap`` (and trims the heap),
    so every KV-cache step, which reallocates the cache, faults in and zeroes fresh pages: about 235,000 minor
    page faults per 32-token rollout of SmolLM2 with 16 rows. Raising the mmap and trim thresholds to 1 GiB
    (``mallopt``) cut that to about 3,000 and the rollout time by about 30 % on the 2-core CPU (one torch
    thread, measured on a shared machine; docs/agents.md, "Speed", has the idle-machine figures). It costs
    resident memory: freed blocks stay mapped for reuse. The setting is process-wide, applied once, and
    only on Linux with glibc; ``TEXTENV_MALLOC_TUNING=0`` turns it off. Returns whether it is in effect.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        _MALLOC_TUNED = False
        if sys.platform.startswith("linux") and os.environ.get("TEXTENV_MALLOC_TUNING", "1") != "0":
            try:
                libc = ctypes.CDLL("libc.so.6")
            except OSError:  # not glibc (e.g. musl): leave its allocator alone
                return False
            m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
            _MALLOC_TUNED = bool(
                libc.mallopt(m_mmap_threshold, MALLOC_THRESHOLD)
                and libc.mallopt(m_trim_threshold, MALLOC_THRESHOLD)
            )
    return _MALLOC_TUNED


_MALLOC_TUNED: bool | None = None


def import_deepspeed() -> Any:
    """``import deepspeed``, without the two lines it prints on a machine without a GPU.

    DeepSpeed warns on import that it fell back to its CPU accelerator, and prints a line when it builds its
    shared-memory op; neither is something a user can act on. Where torch sees no CUDA device, the CPU
    accelerator is named explicitly (``DS_ACCELERATOR=cpu``, unless the user set it), which is exactly what
    DeepSpeed would pick, and the op-build line is dropped from stdout (see :func:`quiet_stdout`).
    """
    name_cpu_accelerator()
    import deepspeed

    return deepspeed


def name_cpu_accelerator() -> None:
    """Set ``DS_ACCELERATOR=cpu`` (unless the user set it) where torch sees no CUDA device: what DeepSpeed
    would pick itself, minus its warning. Call it before anything that may import DeepSpeed indirectly
    (transformers' ``save_pretrained`` does, through accelerate)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


@contextlib.contextmanager
def quiet_stdout(drop: str = " built successfully") -> Iterator[None]:
    """Run a block with its stdout lines that end with ``drop`` removed (DeepSpeed prints one when it builds
    an op); every other line is passed through unchanged."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        lines = buffer.getvalue().splitlines(keepends=True)
        sys.stdout.write("".join(line for line in lines if not line.rstrip().endswith(drop)))


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
    deepspeed = import_deepspeed()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    with launcher_environment():
        with quiet_stdout():
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


def initialize(
    model: torch.nn.Module, config: dict[str, Any], param_groups: list[dict[str, Any]] | None = None
) -> Any:
    """``deepspeed.initialize`` on the trainable parameters of ``model``; returns the engine.

    The engine builds the optimizer from ``config["optimizer"]``; on CPU a torch AdamW is passed in instead,
    because DeepSpeed's own CPU Adam needs a compiled op. The engine's checkpoint reader is replaced by
    :func:`safe_torch_load`, so loading a checkpoint never unpickles code. ``param_groups`` (torch optimizer
    groups, e.g. a head with its own ``"lr"``) replaces the default single group of trainable parameters.
    """
    deepspeed = import_deepspeed()

    if zero_stage(config) == 3:
        # ZeRO-3 reads LOCAL_RANK on every step, not only in deepspeed.initialize: one process without a
        # launcher keeps the default "0" for the rest of its life
        os.environ.setdefault("LOCAL_RANK", "0")
    if not torch.cuda.is_available():
        keep_freed_memory()
    init_distributed()
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if param_groups:
        params = param_groups
    cfg = copy.deepcopy(config)
    optimizer = None
    if not torch.cuda.is_available():
        if offloads(cfg):  # the CPU accelerator has nowhere to offload to: a torch AdamW takes the step
            cfg["zero_force_ds_cpu_optimizer"] = False
        spec = cfg.pop("optimizer")
        if spec["type"].lower() not in ("adam", "adamw"):
            raise ValueError(f"on CPU the optimizer must be Adam or AdamW, got {spec['type']!r}")
        kwargs = {
            k: v for k, v in spec.get("params", {}).items() if k in ("lr", "betas", "eps", "weight_decay")
        }
        optimizer = torch.optim.AdamW(params, **kwargs)
    with launcher_environment():
        try:
            engine, *_ = deepspeed.initialize(
                model=model, model_parameters=params, optimizer=optimizer, config=cfg
            )
        except ValueError as error:
            hint = op_build_hint(error)
            if hint is None:
                raise
            raise RuntimeError(hint) from error
    engine.checkpoint_engine.load = safe_torch_load
    return engine


def op_build_hint(error: BaseException) -> str | None:
    """How to get past DeepSpeed's failure to JIT-build a CUDA op (FusedAdam) on an arch variant such as
    ``9.0a`` in ``TORCH_CUDA_ARCH_LIST`` (DeepSpeed parses the minor version with ``int()``; open upstream as
    deepspeedai/DeepSpeed PR #8619); ``None`` for any other error."""
    frames = traceback.extract_tb(error.__traceback__)
    if "invalid literal for int()" not in str(error) or not any("op_builder" in f.filename for f in frames):
        return None
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    plain = ";".join(
        dict.fromkeys(
            a.rstrip("abcdefghijklmnopqrstuvwxyz") for a in arch_list.replace(" ", ";").split(";") if a
        )
    )
    if not plain and torch.cuda.is_available():
        plain = "{}.{}".format(*torch.cuda.get_device_capability())
    fix = plain or "<your GPU compute capability, e.g. 9.0>"
    return (
        f"DeepSpeed could not build its CUDA optimizer op ({error}): TORCH_CUDA_ARCH_LIST={arch_list!r} (or, "
        "when it is unset, torch's arch list) names an arch variant such as '9.0a', which this DeepSpeed "
        f"version cannot parse. Fix: run with TORCH_CUDA_ARCH_LIST='{fix}', or set \"torch_adam\": true in "
        'the "optimizer" "params" of the DeepSpeed config to step with torch\'s AdamW instead of FusedAdam.'
    )
