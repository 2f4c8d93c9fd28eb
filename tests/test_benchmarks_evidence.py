"""The evidence behind the published results: settings are chosen on validation prompts only, the test prompts
never change, every paired change carries both intervals and the runs' provenance, and the README's results
block is the report's output."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import provenance, report, sweep
from textenv import tasks

ROOT = Path(__file__).resolve().parent.parent
CPU_RUNS = Path("benchmarks/results/cpu/runs")
TINY = ["--model", "tiny-sp", "--threads", "1", "--no-progress-bar", "--eval-prompts", "4"]
TEST_PROMPTS = {
    "drugs-sentiment": (379, "7b16fa91a420"),
    "shakespeare": (903, "34106e315855"),
    "error-correction": (300, "46613a73db43"),
    "review-keywords": (300, "747e869717c2"),
    "drugs-turnaround": (146, "64fab86704d0"),
}
"""Size and fingerprint of every task's test split, as the committed benchmark runs scored it."""


def fingerprint(dataset: Any) -> str:
    rows = [(e.prompt, e.reference, e.metadata) for e in dataset]
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:12]


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_test_split_is_unchanged_and_validation_is_disjoint(task: str) -> None:
    """The validation split is carved from train: the test prompts are those of the committed results, and
    no prompt is in two splits."""
    test = tasks.load_task(task, "test")
    assert (len(test), fingerprint(test)) == TEST_PROMPTS[task]
    prompts = {split: {e.prompt for e in tasks.load_task(task, split)} for split in tasks.SPLITS}
    assert len(prompts["validation"]) >= 58
    assert not prompts["validation"] & prompts["test"] and not prompts["validation"] & prompts["train"]
    assert not prompts["train"] & prompts["test"]


def test_sweep_never_scores_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every prompt dataset a sweep builds is train (to train on) or validation (to score); it has no option
    that evaluates on test, and it refuses a finished run that was scored on test."""
    torch.set_num_threads(1)
    asked: list[str] = []
    for name, build in list(tasks.TASKS.items()):

        def recording(split: str = "train", build: Any = build) -> Any:
            asked.append(split)
            return build(split)

        monkeypatch.setitem(tasks.TASKS, name, recording)
    argv = ["--task", "error-rate", "--budget", "1it", "--num-envs", "2", "--episodes-per-rollout", "2"]
    argv += ["--minibatch-size", "2", "--max-new-tokens", "3", "--evals", "1", "--learning-rates"]
    argv += ["--kl-coefs", "--epochs", "--episodes", "--out", str(tmp_path / "sweep"), *TINY]
    rows = sweep.main([*argv, "--logdir", str(tmp_path / "runs")])
    assert [r["setting"] for r in rows] == ["base"]
    assert "validation" in asked and "test" not in asked
    (summary_path,) = (tmp_path / "sweep" / "runs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["args"]["eval_split"] == "validation"
    with pytest.raises(SystemExit):  # no such option
        sweep.main([*argv, "--eval-split", "test", "--logdir", str(tmp_path / "runs")])
    summary["args"]["eval_split"] = "test"
    with pytest.raises(ValueError, match="evaluated on the test split"):
        sweep.row("base", summary)


def test_run_records_provenance_and_times(tmp_path: Path) -> None:
    """A run's summary.json holds the git commit, versions and machine, training time without the
    evaluations, and every prompt's score."""
    torch.set_num_threads(1)
    from benchmarks import run

    argv = ["--task", "error-rate", "--algo", "reinforce", "--budget", "1it", "--num-envs", "2"]
    argv += ["--episodes-per-rollout", "2", "--minibatch-size", "2", "--max-new-tokens", "3", "--evals", "2"]
    (run_dir,) = run.main([*argv, "--logdir", str(tmp_path), *TINY])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["git"]) == {"commit", "dirty"} and summary["versions"]["torch"] and summary["machine"]
    assert summary["train_time_s"] > 0 and summary["eval_time_s"] > 0
    assert summary["train_time_s"] + summary["eval_time_s"] == pytest.approx(summary["wall_time_s"])
    assert len(summary["eval_after"]["_scores"]) == 4 and summary["args"]["eval_split"] == "test"


def test_provenance_names_the_commit_of_this_checkout() -> None:
    found = provenance.git()
    if (ROOT / ".git").exists():
        assert found["commit"] and len(found["commit"]) == 40 and isinstance(found["dirty"], bool)


@pytest.fixture(scope="module")
def committed() -> dict[str, dict[str, list[report.Run]]]:
    return report.group(report.find_runs([ROOT / CPU_RUNS]))


def test_table_json_carries_both_intervals_and_commits(committed: Any) -> None:
    """The committed table.json is what the report makes of the committed runs, and each paired change of
    three seeds has both intervals; a one-seed change has neither and prints n = 1."""
    rows = report.headline_rows(committed)
    assert rows == json.loads((ROOT / "benchmarks/results/cpu/table.json").read_text())
    changes = {(r["env_id"], r["algo"]): r for r in rows if r["metric"] == report.CHANGE}
    sentiment_rloo = changes[("TextGen-Sentiment-v0", "rloo")]
    low, high = sentiment_rloo["seeds_and_prompts_interval"]
    assert sentiment_rloo["t_interval"][0] > 0 and low < 0 < high and sentiment_rloo["significant"] is False
    assert changes[("TextGen-Similarity-v0", "dqn")]["significant"] is True  # significantly negative
    one_seed = changes[("TextGen-ErrorRate-v0", "dqn")]
    assert one_seed["n"] == 1 and one_seed["t_interval"] is None and one_seed["significant"] is None
    assert all(r["commits"] for r in rows)
    assert "(n = 1)" in report.headline(committed) and "± 0 (n = 1)" not in report.headline(committed)


def results_blocks() -> list[Path]:
    """The markdown files (README.md, docs/**/*.md) that hold a report block between the markers."""
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [path for path in candidates if path.is_file() and report.README_BEGIN in path.read_text()]


def test_readme_results_block_is_the_reports_output(committed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results block is regenerated (python -m benchmarks.report benchmarks/results/cpu/runs --out
    benchmarks/results/cpu --readme <file>), never edited by hand."""
    monkeypatch.chdir(ROOT)  # the report names its inputs relative to the repository
    files = results_blocks()
    assert files, f"no {report.README_BEGIN} block in README.md or docs/*.md"
    for path in files:
        text = path.read_text()
        block = text.split(report.README_BEGIN, 1)[1].split(report.README_END, 1)[0].strip("\n")
        where = Path(os.path.relpath(ROOT / "benchmarks/results/cpu", path.parent))
        expected = report.readme_block(committed, [CPU_RUNS], where)
        assert block == expected, (
            f"{path.name}'s results block is not the report's output; regenerate it with python -m "
            f"benchmarks.report {CPU_RUNS} --out benchmarks/results/cpu --readme {path.relative_to(ROOT)}"
        )
