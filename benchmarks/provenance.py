"""Where a benchmark number came from, stored beside every result: the code's git commit (and whether the
work tree had uncommitted changes), the package versions and the machine.

Every script's JSON takes :func:`record` (``summary.json`` of a run at its top level, the other scripts
under ``"provenance"``).

>>> sorted(record()) == ["git", "machine", "versions"]
True
>>> sorted(machine()) == ["cpu_count", "gpu", "platform", "processor", "python", "torch_threads"]
True
>>> versions()["torch"] is not None
True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "textenv",
    "torch",
    "transformers",
    "deepspeed",
    "gymnasium",
    "stable-baselines3",
    "peft",
    "numpy",
    "trl",
)
"""Packages whose installed versions each result records (None: not installed)."""
SOURCE = Path(__file__).resolve().parent.parent
"""The checkout whose code ran (the parent of ``benchmarks/``)."""


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


def git(source: Path = SOURCE) -> dict[str, Any]:
    """``{"commit": <HEAD's hash>, "dirty": <uncommitted changes to tracked files>}`` of the checkout at
    ``source``; both None where it is no git checkout or git is missing (an installed wheel).

    >>> import tempfile; git(Path(tempfile.mkdtemp()))
    {'commit': None, 'dirty': None}
    """

    def ask(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = ask("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = ask("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def record() -> dict[str, Any]:
    """The provenance of a result written now: ``{"git": ..., "versions": ..., "machine": ...}``."""
    return {"git": git(), "versions": versions(), "machine": machine()}
