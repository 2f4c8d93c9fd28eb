"""Smoke run of benchmarks/env_overhead.py on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.env_overhead import main


def test_env_overhead_smoke(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    results = main(
        [
            "--model",
            "tiny-sp",
            "--num-envs",
            "2",
            "--max-new-tokens",
            "4",
            "--episodes",
            "2",
            "--forward-steps",
            "2",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["num_envs"] == 2
    assert 0 < results["vector_env_step_ms"] and 0 < results["forward_step_ms"]
