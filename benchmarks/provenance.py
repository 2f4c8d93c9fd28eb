"""Where a benchmark number came from: the package versions and the machine, stored beside every result.

>>> sorted(machine()) == ["cpu_count", "gpu", "platform", "processor", "python", "torch_threads"]
True
>>> versions()["torch"] is not None
True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

PACKAGES = ("textenv", "torch", "transformers", "deepspeed", "gymnasium", "stable-baselines3", "numpy", "trl")
"""Packages whose installed versions each result records (None: not installed)."""


def versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES`, None for a missing one."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict[str, Any]:
    """The platform, CPU, torch threads, GPU (None without one) and Python version of this process."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
