"""The benchmark suites: their jobs and budgets, worker processes, resuming from committed runs, --tasks."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch
from test_benchmarks_scripts import TINY

from benchmarks import run, suite


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_job_argv_repeats_every_changed_option() -> None:
    job = run.Args(task="similarity", algo="ppo", budget="2it", threads=1, progress_bar=False, eval_prompts=4)
    argv = suite.job_argv(job, seed=3)
    assert argv[:8] == ["--task", "similarity", "--algo", "ppo", "--budget", "2it", "--seeds", "3"]
    assert {"--no-progress-bar", "--eval-prompts", "4", "--threads", "1"} <= set(argv)
    assert run.parse_args(argv) == run.Args(**{**vars(job), "seeds": [3]})


def test_suite_names_its_known_suites() -> None:
    with pytest.raises(ValueError, match="'nope' is not known; use one of cpu, cpu-v1, gpu"):
        suite.Args(suite="nope")
    with pytest.raises(SystemExit):  # the suite's name is required
        suite.main([])


def test_suite_runs_in_worker_processes_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [("similarity", "zero-shot", "1it"), ("error-rate", "ppo", "1it")]
    settings = {"max_new_tokens": 2, "num_envs": 2, "episodes_per_rollout": 2, "minibatch_size": 2}
    monkeypatch.setitem(suite.SUITES, "tiny", suite.Suite(jobs, settings, extras=False))
    argv = ["tiny", "--seeds", "0", "--workers", "2", "--logdir", str(tmp_path), *TINY]
    first = suite.main(argv)
    assert sorted(p.parent.name for p in first) == ["ppo", "zero-shot"]
    summary = json.loads((first[1] / "summary.json").read_text())
    assert summary["args"]["max_new_tokens"] == 2 and summary["args"]["threads"] == 1
    assert (tmp_path / "report" / "report.md").is_file()
    capsys.readouterr()
    again = suite.main(argv)  # every job is finished: nothing runs again
    assert again == first and capsys.readouterr().out.count("already in") == 2
    # one worker runs the same jobs in this process, with the same results
    single = suite.main([*argv[:4], "1", "--logdir", str(tmp_path / "one"), *TINY])
    rewards = [
        [json.loads((d / "summary.json").read_text())["eval_after"] for d in dirs] for dirs in (first, single)
    ]
    # equal up to float rounding: the two modes may differ in allocator settings and thread counts, which
    # changes the summation order of the sentence encoder's matmuls (seen: 1e-7)
    for worker, alone in zip(*rewards, strict=True):
        assert worker["_samples"] == alone["_samples"]  # the same sampled completions
        assert worker["_scores"] == pytest.approx(alone["_scores"], rel=1e-5, abs=1e-6)
        numbers = {k: v for k, v in worker.items() if not k.startswith("_")}
        assert numbers == pytest.approx({k: alone[k] for k in numbers}, rel=1e-5, abs=1e-6)


def test_suite_resumes_from_committed_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A published suite copies each finished run's small files to <publish>/runs; on another machine (an
    empty --logdir) those count as finished, and a job with other settings is not taken for them."""
    monkeypatch.chdir(tmp_path)  # a published suite's report would rewrite ./docs/benchmarks.md
    jobs = [("similarity", "zero-shot", "1it")]
    settings = {"max_new_tokens": 2}
    monkeypatch.setitem(suite.SUITES, "tiny", suite.Suite(jobs, settings, extras=False, publish="published"))
    page = tmp_path / suite.RESULTS_PAGE  # the docs page that holds the published table
    page.parent.mkdir()
    page.write_text("intro\n<!-- benchmarks.report: begin -->\nstale\n<!-- benchmarks.report: end -->\n")
    first = suite.main(["tiny", "--seeds", "0", "--logdir", "machine-a", *TINY])
    assert "stale" not in page.read_text() and "| TextGen-Similarity-v0 |" in page.read_text()
    (copy,) = (tmp_path / "published" / "runs" / "TextGen-Similarity-v0" / "zero-shot").iterdir()
    assert copy.name == first[0].name and (copy / "summary.json").is_file()
    assert [f.name for f in copy.iterdir() if "tfevents" in f.name]  # the curves travel with it
    assert (tmp_path / "published" / "table.json").is_file()
    capsys.readouterr()
    again = suite.main(["tiny", "--seeds", "0", "--logdir", "machine-b", *TINY])
    assert capsys.readouterr().out.count("already in") == 1 and again[0].resolve() == copy
    assert not (tmp_path / "machine-b" / "TextGen-Similarity-v0").exists()  # nothing ran again
    recorded = json.loads((copy / "summary.json").read_text())["args"]
    job = suite.run.Args(**(recorded | {"logdir": "machine-c"}))  # a third machine
    assert suite.finished(job, 0, [tmp_path / "published" / "runs"]) == copy
    other = dataclasses.replace(job, learning_rate=job.learning_rate * 2)
    assert suite.finished(other, 0, [tmp_path / "published" / "runs"]) is None  # another job


def test_a_dqn_run_before_dueling_q_values_is_another_job() -> None:
    """DQN runs recorded before --dqn-dueling existed read raw logits as Q: they are not the dueling job, but
    they are the --no-dqn-dueling one; for other algorithms the dqn_* options do not matter."""
    dqn = run.Args(task="error-rate", algo="dqn", budget="12800")
    recorded = {k: v for k, v in dataclasses.asdict(dqn).items() if k != "dqn_dueling"}  # an older run
    assert not suite.same_job(recorded, dqn)
    assert suite.same_job(recorded, dataclasses.replace(dqn, dqn_dueling=False))
    assert suite.same_job(recorded | {"dqn_dueling": True}, dqn)
    ppo = dataclasses.replace(dqn, algo="ppo")
    assert suite.same_job(recorded | {"algo": "ppo"}, ppo)
    assert not suite.same_job(recorded | {"algo": "ppo", "learning_rate": 1.0}, ppo)


def test_a_dqn_run_before_soft_q_learning_is_not_a_soft_job() -> None:
    """Runs recorded before --dqn-soft-q-coef existed are plain DQN (beta 0), not a soft Q-learning job."""
    soft = run.Args(task="sentiment", algo="dqn", budget="20480", dqn_soft_q_coef=0.05)
    older = {k: v for k, v in dataclasses.asdict(soft).items() if k != "dqn_soft_q_coef"}
    assert not suite.same_job(older, soft)
    assert suite.same_job(older, dataclasses.replace(soft, dqn_soft_q_coef=0.0))
    with pytest.raises(ValueError, match="--dqn-soft-q-coef -1.0 must be >= 0"):
        run.Args(task="sentiment", algo="dqn", dqn_soft_q_coef=-1.0)


@pytest.mark.parametrize(
    ("option", "value"), [("dqn_td_lambda", 0.9), ("dqn_value_expectile", 0.7), ("dqn_value_lr_scale", 100.0)]
)
def test_a_dqn_run_before_the_value_options_is_not_a_job_with_them(option: str, value: float) -> None:
    """Runs recorded before --dqn-td-lambda, --dqn-value-expectile, --dqn-value-lr-scale existed ran without
    them: they count for the default job, not for one that sets the option."""
    job = run.Args(task="similarity", algo="soft-dqn", budget="10240")
    older = {k: v for k, v in dataclasses.asdict(job).items() if k != option}
    assert suite.same_job(older, job)
    with_option = dataclasses.replace(job, **{option: value})
    assert not suite.same_job(older, with_option)
    assert suite.same_job(dataclasses.asdict(with_option), with_option)
    argv = suite.job_argv(with_option, seed=0)  # a suite passes it on
    assert argv[argv.index("--" + option.replace("_", "-")) + 1] == str(value)


def test_suite_runs_only_the_given_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--tasks`` builds a long table task by task: only those jobs run (and are committed); the partial
    report goes to <logdir>/report and leaves the published table alone."""
    monkeypatch.chdir(tmp_path)
    jobs = [("similarity", "zero-shot", "1it"), ("error-rate", "zero-shot", "1it")]
    tiny = suite.Suite(jobs, {"max_new_tokens": 2}, extras=False, publish="published")
    monkeypatch.setitem(suite.SUITES, "tiny", tiny)
    done = suite.main(["tiny", "--tasks", "similarity", "--seeds", "0", "--logdir", "a", *TINY])
    assert [d.parent.parent.name for d in done] == ["TextGen-Similarity-v0"]
    assert [p.name for p in (tmp_path / "published" / "runs").iterdir()] == ["TextGen-Similarity-v0"]
    assert (tmp_path / "a" / "report" / "report.md").is_file()
    assert not (tmp_path / "published" / "table.json").exists()
    with pytest.raises(ValueError, match="--tasks sentiment: not a task of suite 'tiny'"):
        suite.Args(suite="tiny", tasks=["sentiment"])


def test_suite_runs_only_the_given_algorithms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--algos`` builds a table cell by cell: only those algorithms' jobs run, and the report is partial."""
    monkeypatch.chdir(tmp_path)
    jobs = [("similarity", "zero-shot", "1it"), ("similarity", "ppo", "1it")]
    tiny = suite.Suite(jobs, {"max_new_tokens": 2}, extras=False, publish="published")
    monkeypatch.setitem(suite.SUITES, "tiny", tiny)
    done = suite.main(["tiny", "--algos", "zero-shot", "--seeds", "0", "--logdir", "a", *TINY])
    assert [d.parent.name for d in done] == ["zero-shot"]
    assert (tmp_path / "a" / "report" / "report.md").is_file()
    assert not (tmp_path / "published" / "table.json").exists()
    with pytest.raises(ValueError, match="--algos dqn: not an algorithm of suite 'tiny'"):
        suite.Args(suite="tiny", algos=["dqn"])


def test_cpu_suite_budgets_and_per_job_settings() -> None:
    """The CPU table's budgets are at least 20 PPO iterations of 16 episodes (sentiment: 20,000 tokens), the
    same for every algorithm of a task; a job's own settings apply unless the command line sets them."""
    from textenv.task_envs import BENCHMARKS

    cpu = suite.SUITES["cpu"]
    assert cpu.settings["evals"] >= 10 and cpu.settings["episodes_per_rollout"] == 16
    for task, spec in BENCHMARKS.items():
        budgets = {job[2] for job in cpu.jobs if job[0] == task}
        assert len(budgets) == 1 and int(budgets.pop()) >= 20 * 16 * spec.max_new_tokens
    assert int(suite.CPU_BUDGET["sentiment"]) >= 20_000
    job = next(job for job in cpu.jobs if job[0] == "preference")
    plain = suite.Args(suite="cpu")
    assert suite.job_settings(job, plain) == {"init_kl_coef": 0.005, "learning_rate": 2e-5}
    assert suite.job_settings(job, suite.Args(suite="cpu", init_kl_coef=0.2)) == {"learning_rate": 2e-5}
    assert suite.job_settings(("sentiment", "ppo", "1it"), plain) == {}


def test_committed_run_directories_are_not_gitignored() -> None:
    """Finished runs are committed under ``benchmarks/results/<suite>/runs/``; the scratch ``runs/`` at the
    top is ignored. (A bare ``runs/`` pattern in .gitignore ignored both: published runs were left out.)"""
    root = Path(__file__).parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for suite_dir in ("cpu", "sweep-cpu"):
        path = f"benchmarks/results/{suite_dir}/runs/a/summary.json"
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode
        assert ignored == 1, f"{path} is ignored by .gitignore (git check-ignore returned {ignored})"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/a/summary.json"], cwd=root).returncode == 0
