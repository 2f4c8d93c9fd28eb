"""The records of a training run, on Stable-Baselines3's logger: run directory, settings, sample texts.

A run with ``tensorboard_log`` set writes to ``<tensorboard_log>/<env-id>/<algo>/seed<k>-<time>/``: the
TensorBoard events and ``config.json`` (all settings). The scalar settings also go to TensorBoard's HParams
table, and a few (prompt, completion) pairs of each rollout to its text tab.

>>> from stable_baselines3.common.logger import Logger
>>> logger = Logger(None, [])
>>> record_hparams(logger, {"learning_rate": 1e-5, "deepspeed": {"train_batch_size": 4}, "algo": "PPO"})
>>> logger.name_to_value["hparams"].hparam_dict
{'learning_rate': 1e-05, 'algo': 'PPO'}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import HParam, Logger, TensorBoardOutputFormat, configure

from infra.storage import atomic_write_text


def make_run_dir(tensorboard_log: str, env_id: str, tb_log_name: str, seed: int | None) -> Path:
    """Create ``<tensorboard_log>/<env_id>/<tb_log_name>/seed<seed>-<YYYYmmdd-HHMMSS>/`` and return it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tensorboard_log) / env_id / tb_log_name / f"seed{seed}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def configure_run(run_dir: Path, hparams: dict[str, Any], verbose: int) -> Logger:
    """Write ``hparams`` to ``run_dir/config.json``; a TensorBoard (plus stdout if verbose) logger there."""
    atomic_write_text(run_dir / "config.json", json.dumps(hparams, indent=2, default=str))
    return configure(str(run_dir), ["stdout", "tensorboard"] if verbose else ["tensorboard"])


def record_hparams(logger: Logger, hparams: dict[str, Any]) -> None:
    """The scalar entries of ``hparams`` as TensorBoard's HParams table (metric: ``rollout/ep_rew_mean``)."""
    scalars = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
    logger.record(
        "hparams", HParam(scalars, {"rollout/ep_rew_mean": 0.0}), exclude=("stdout", "log", "json", "csv")
    )


def log_samples(logger: Logger, samples: list[tuple[str, str]], step: int) -> None:
    """(prompt, completion) pairs as the TensorBoard text ``rollout/samples`` at ``step``."""
    for fmt in logger.output_formats:
        if isinstance(fmt, TensorBoardOutputFormat) and samples:
            text = "\n\n".join(f"**prompt:** {p}  \n**completion:** {c}" for p, c in samples)
            fmt.writer.add_text("rollout/samples", text, step)
