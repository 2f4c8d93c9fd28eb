"""Smoke run of benchmarks/reward_speed.py."""

from __future__ import annotations

import json

from benchmarks.reward_speed import main


def test_reward_speed_smoke(tmp_path) -> None:
    out = tmp_path / "speed.json"
    argv = ["--batch-size", "4", "--tokens", "16", "--repeats", "1", "--threads", "1", "--json", str(out)]
    results = main([*argv, "--only", "ErrorRate(word)", "VaderSentiment", "Classifier"])
    assert set(results) == {"ErrorRate(word)", "VaderSentiment", "ClassifierRewardModel(MiniLM)"}
    assert all(value > 0 for value in results.values())
    assert json.loads(out.read_text())["settings"]["batch_size"] == 4
