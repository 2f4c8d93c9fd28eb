"""Saving, exporting and loading an agent, and the TRL comparison, print nothing of the libraries' own: no
progress bars of transformers, no FutureWarnings about its renames."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import textenv  # noqa: F401  (registers the envs)
from agents import PPO
from benchmarks.suite import DISTRIBUTED_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
NOISE = ("Writing model shards", "Loading weights", "FutureWarning", "it/s]")


def test_save_export_and_load_print_no_progress_bars(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    env = gym.make_vec(
        "TextGen-v0", num_envs=2, model="tiny-sp", max_new_tokens=4, vectorization_mode="vector_entry_point"
    )
    agent = PPO(env, model="tiny-sp", seed=0, minibatch_size=2, episodes_per_rollout=2)
    capfd.readouterr()
    agent.save(tmp_path / "agent")
    agent.export(tmp_path / "export")
    loaded = PPO.load(tmp_path / "agent", env=env)
    out, err = capfd.readouterr()
    assert loaded.policy is not None
    assert not [word for word in NOISE if word in out + err], out + err


def test_vs_trl_prints_only_its_table(tmp_path: Path) -> None:
    """``python -m benchmarks.vs_trl`` (TRL's GRPOTrainer beside ours) prints its table and nothing of the
    libraries'; checked in a fresh process, where warnings go to the real stderr."""
    argv = ["--model", "tiny-sp", "--reward", "vader", "--seconds", "0.3", "--batch-size", "4"]
    argv += ["--group-size", "2", "--max-new-tokens", "4", "--eval-prompts", "2"]
    argv += ["--contestants", "trl-grpo", "ours-rloo", "--json", str(tmp_path / "vs.json")]
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}  # a fresh single process
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.vs_trl", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    assert "| trl-grpo |" in done.stdout
    assert not [word for word in NOISE if word in printed], printed
