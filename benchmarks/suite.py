"""Benchmark suites: the published tables as lists of jobs, run in worker processes, resumed, then reported.

    python -m benchmarks.suite cpu --seeds 0 1 2 --workers 2 --logdir runs/cpu   # every published figure
    python -m benchmarks.suite smoke --model tiny-sp --eval-prompts 4 --logdir runs/smoke   # a quick check

A suite runs its (task, algo, budget) jobs for every seed, ``--workers`` at a time in separate processes,
skipping jobs that already have a finished run in ``--logdir`` (so it resumes); then (cpu, gpu) the extras
``benchmarks.vs_trl``, ``throughput``, ``env_overhead``, ``reward_speed`` and ``chat`` (multi-turn); then
``benchmarks.report``, which for ``cpu`` writes ``benchmarks/results/cpu/`` and rewrites the
``benchmarks.report`` block of ``docs/benchmarks.md`` (``RESULTS_PAGE``). Every option of a single run but
``--task``, ``--algo`` and ``--budget`` (``--model``, ``--eval-prompts``, ``--threads``, ...:
:class:`benchmarks.run.RunSettings`) applies to every job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from benchmarks import run
from infra.storage import atomic_directory
from textenv.task_envs import BENCHMARKS

RESULTS_PAGE = "docs/benchmarks.md"
"""The page whose ``benchmarks.report`` block a published suite rewrites (from the repository root)."""
DISTRIBUTED_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Suite:
    """A published table: ``jobs`` are (task, algo, budget), each run for every seed; ``settings`` override
    the command-line defaults of :class:`benchmarks.run.RunSettings` for every job (an option given on the
    command line wins)."""

    jobs: list[tuple[str, str, str]] | list[tuple[str, str, str, dict[str, Any]]]
    """(task, algo, budget), or (task, algo, budget, settings of this job alone)."""
    settings: dict[str, Any] = field(default_factory=dict)
    extras: bool = True
    """After the runs: benchmarks.vs_trl, throughput, env_overhead, reward_speed and chat into the same
    logdir."""
    trl_seconds: int = 240
    """Wall-clock training budget of each contestant of benchmarks.vs_trl."""
    publish: str | None = None
    """Where the report goes (None: ``<logdir>/report``); a published suite also rewrites the
    ``benchmarks.report`` block of docs/benchmarks.md when run from the repository root."""
    results_page: bool = True
    """A published suite rewrites the ``benchmarks.report`` block of ``RESULTS_PAGE`` (the CPU table); False
    for a table published beside it (the ablation)."""

    def __post_init__(self) -> None:
        for task, algo, *_ in self.jobs:
            if task not in BENCHMARKS or algo not in run.ALGOS:
                raise ValueError(
                    f"suite job ({task!r}, {algo!r}): use a task of {', '.join(BENCHMARKS)} and an algorithm "
                    f"of {', '.join(run.ALGOS)}."
                )


#: generated tokens per run, equal for every algorithm of a task: the equivalent of at least 20 PPO
#: iterations of 16 episodes of the task's completion length (48, 40, 32 and 48 tokens: 15,360, 12,800 and
#: 10,240), and at least 20,000 for sentiment; preference runs twice as long, at a lower KL coefficient, so
#: that its proxy reward can be plotted against the gold reward up to a KL of several nats
CPU_BUDGET = {"sentiment": "20480", "error-rate": "12800", "similarity": "10240", "preference": "40960"}
#: preference runs at twice the sweep's learning rate and half its KL coefficient: the sweep's lr 3e-5 run
#: drifted 6.7 nats in 12,288 tokens, its lr 1e-5 runs 1.4 to 2.0, and the over-optimisation curves need 5+
CPU_JOB_SETTINGS: dict[str, dict[str, Any]] = {"preference": {"init_kl_coef": 0.005, "learning_rate": 2e-5}}
TABLE_ALGOS = ("zero-shot", "ppo", "rloo", "dqn", "soft-dqn")
#: the first release's CPU table (2026-11-22): two PPO iterations' worth of tokens per run, REINFORCE with a
#: moving-average baseline, fp32, evaluated before and after only; kept so that its report can be rebuilt
CPU_V1_BUDGET = {"sentiment": "3072", "error-rate": "2560", "similarity": "1536", "preference": "3072"}
V1_ALGOS = ("zero-shot", "ppo", "reinforce", "dqn")
#: the group-relative family against RLOO, on the two cheapest tasks of the CPU table with headroom, at the
#: table's budgets and settings (--init-kl-coef is GRPO's beta); fp32, the one precision every CPU runs
#: natively, because its 30 runs span several sittings and machines (auto picks bf16 only with avx512_bf16)
ABLATION_TASKS = ("error-rate", "similarity")
ABLATION_ALGOS = ("zero-shot", "grpo", "dr-grpo", "dapo", "gspo", "rloo")
SUITES: dict[str, Suite] = {
    "cpu": Suite(
        [
            (task, algo, CPU_BUDGET[task], CPU_JOB_SETTINGS.get(task, {}))
            for task in BENCHMARKS
            for algo in TABLE_ALGOS
        ],
        {"eval_prompts": 32, "heldout_texts": 16, "evals": 10, "episodes_per_rollout": 16},
        publish="benchmarks/results/cpu",
    ),
    "cpu-v1": Suite(
        [(task, algo, CPU_V1_BUDGET[task]) for task in BENCHMARKS for algo in V1_ALGOS],
        {"eval_prompts": 32, "heldout_texts": 16, "evals": 1},
        extras=False,
    ),
    "gpu": Suite([(task, algo, "200000") for task in BENCHMARKS for algo in TABLE_ALGOS], trl_seconds=600),
    "smoke": Suite([("sentiment", "zero-shot", "1it"), ("error-rate", "ppo", "1it")], extras=False),
    # GRPO, Dr. GRPO, DAPO and GSPO against RLOO (issue 34's ablation), 3 seeds at the CPU table's budgets
    "ablation": Suite(
        [(task, algo, CPU_BUDGET[task]) for task in ABLATION_TASKS for algo in ABLATION_ALGOS],
        {
            "eval_prompts": 32,
            "heldout_texts": 16,
            "evals": 10,
            "episodes_per_rollout": 16,
            "precision": "fp32",
        },
        extras=False,
        publish="benchmarks/results/ablation-cpu",
        results_page=False,
    ),
    # the longer single-seed sentiment table of the first release: every algorithm at 4608 generated tokens
    "sentiment-cpu": Suite(
        [("sentiment", algo, "4608") for algo in V1_ALGOS],
        {"eval_prompts": 32, "heldout_texts": 16, "evals": 1},
        extras=False,
    ),
}
"""Named suites. ``cpu`` is the published table (60 runs of about 10 to 80 minutes each on 2 cores, built up
over several sittings: each finished run is committed under ``benchmarks/results/cpu/runs/``); ``gpu`` the
same at a GPU-sized budget; ``cpu-v1`` and ``sentiment-cpu`` the first release's tables."""


@dataclass(kw_only=True)
class Args(run.RunSettings):
    """A named suite: its jobs for each of --seeds, with every run option applied to each job."""

    suite: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SUITE")]
    """The suite to run: cpu, cpu-v1, gpu, smoke or sentiment-cpu."""
    workers: int = 1
    """Jobs run at once, each in its own process (with --threads 1 unless --threads is given)."""
    tasks: list[str] | None = None
    """Run only these tasks' jobs (e.g. --tasks sentiment), to build a long table up task by task; such a
    partial run skips the extras and writes its report to <logdir>/report, leaving the docs alone."""
    algos: list[str] | None = None
    """Run only these algorithms' jobs (e.g. --algos zero-shot rloo), to build a table cell by cell; partial
    like --tasks."""
    resume: bool = True
    """Skip a job whose run (same task, algo, seed, budget) already has a summary.json in --logdir."""
    extras: bool = True
    """After the runs, also run the suite's extras (vs_trl, throughput, env_overhead, reward_speed)."""
    publish_runs: bool = True
    """A published suite (cpu) copies each finished run's summary.json and event files to
    benchmarks/results/<suite>/runs/ (to be committed) and counts the runs there as finished, so the suite
    resumes on any machine; --no-publish-runs uses --logdir alone."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.suite not in SUITES:
            raise ValueError(f"suite {self.suite!r} is not known; use one of {', '.join(SUITES)}.")
        unknown = sorted(set(self.tasks or ()) - {job[0] for job in SUITES[self.suite].jobs})
        if unknown:
            raise ValueError(f"--tasks {' '.join(unknown)}: not a task of suite {self.suite!r}.")
        unknown = sorted(set(self.algos or ()) - {job[1] for job in SUITES[self.suite].jobs})
        if unknown:
            raise ValueError(f"--algos {' '.join(unknown)}: not an algorithm of suite {self.suite!r}.")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers} must be at least 1, e.g. --workers 2.")


#: run options that change how a run executes but not what it computes; a finished run with other values of
#: these still counts as the same job
EXECUTION_ONLY = ("seeds", "logdir", "threads", "progress_bar", "eval_batch_size")


#: the value an option had in runs recorded before it existed (absent options otherwise match any value)
BEFORE_OPTION = {"dqn_dueling": False, "dqn_soft_q_coef": 0.0, "eval_split": "test"}
BEFORE_OPTION |= {"dqn_td_lambda": None, "dqn_value_expectile": None, "dqn_value_lr_scale": 1.0}


def same_job(recorded: dict[str, Any], job: run.Args) -> bool:
    """Whether a run's recorded ``args`` (its summary.json) are those of ``job``, up to
    :data:`EXECUTION_ONLY` options and the ``dqn_*`` options of other algorithms (so a DQN run with another
    ``--dqn-target`` is another job, a PPO run is not). An option the run did not record matches, unless it
    had a value before it existed (:data:`BEFORE_OPTION`: DQN runs before the dueling Q-values are raw-logit
    runs)."""
    wanted = {k: v for k, v in dataclasses.asdict(job).items() if k not in EXECUTION_ONLY}
    if job.algo not in run.DQN_ALGOS:
        wanted = {k: v for k, v in wanted.items() if not k.startswith("dqn_")}
    return all(recorded.get(k, BEFORE_OPTION.get(k, v)) == v for k, v in wanted.items())


def committed_runs(suite: str) -> Path | None:
    """Where a published suite keeps its finished runs in the repo: ``benchmarks/results/<name>/runs``."""
    publish = SUITES[suite].publish
    return Path(publish) / "runs" if publish else None


def finished(args: run.Args, seed: int, roots: Sequence[Path] = ()) -> Path | None:
    """The newest finished run of this job and seed in ``args.logdir`` or in one of ``roots`` (the runs
    committed under ``benchmarks/results/<suite>/runs``), if any."""
    newest_first: list[Path] = []
    for root in (Path(args.logdir), *roots):
        folder = root / BENCHMARKS[args.task].env_id / args.algo
        newest_first += folder.glob(f"seed{seed}-*/summary.json")
    for summary_path in sorted(newest_first, key=lambda path: path.parent.name, reverse=True):  # by time
        summary = json.loads(summary_path.read_text())
        if summary["seed"] == seed and same_job(summary["args"], args):
            return summary_path.parent
    return None


def publish_run(run_dir: Path, runs_root: Path) -> Path:
    """Copy a finished run's small artefacts (summary.json, config.json, the TensorBoard event files) to
    ``runs_root/<env>/<algo>/<run name>`` in one atomic step, so that it can be committed; checkpoints and
    exported weights stay behind. Returns the copy."""
    env_id, algo = run_dir.parent.parent.name, run_dir.parent.name
    target = runs_root / env_id / algo / run_dir.name
    files = [f for f in run_dir.iterdir() if f.is_file() and (f.suffix == ".json" or "tfevents" in f.name)]
    with atomic_directory(target) as staging:
        for file in files:
            shutil.copy2(file, staging / file.name)
    return target


def job_argv(job: run.Args, seed: int) -> list[str]:
    """The command line that runs ``job`` for ``seed`` alone (every option that differs from its default)."""
    argv = ["--task", job.task, "--algo", job.algo, "--budget", job.budget, "--seeds", str(seed)]
    defaults = run.Args()
    for item in dataclasses.fields(run.Args):
        value = getattr(job, item.name)
        if item.name in ("task", "algo", "budget", "seeds"):
            continue
        if value != getattr(defaults, item.name) and value is not None:
            flag = "--" + item.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else flag.replace("--", "--no-", 1))
            else:
                argv += [flag, str(value)]
    return argv


def job_settings(job: tuple[Any, ...], args: Args) -> dict[str, Any]:
    """A job's own settings (its optional fourth element), except those given on the command line."""
    defaults = run.RunSettings()
    own = job[3] if len(job) > 3 else {}
    return {k: v for k, v in own.items() if getattr(args, k) == getattr(defaults, k)}


def run_suite(args: Args, command: str) -> list[Path]:
    """Every job of ``args.suite`` for every seed (skipping finished ones with ``--resume``), ``args.workers``
    at a time in separate processes; then the suite's extras and the report."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    suite = SUITES[args.suite]
    runs_root = committed_runs(args.suite) if args.publish_runs else None
    committed = [runs_root] if runs_root is not None and runs_root.is_dir() else []
    shared = {item.name: getattr(args, item.name) for item in dataclasses.fields(run.RunSettings)}
    defaults = run.RunSettings()
    shared |= {k: v for k, v in suite.settings.items() if shared[k] == getattr(defaults, k)}
    if args.workers > 1 and args.threads is None:
        shared["threads"] = 1
    plan = [
        (run.Args(task=job[0], algo=job[1], budget=job[2], **(shared | job_settings(job, args))), seed)
        for job in suite.jobs  # every seed of a job before the next job: a table cell is done at a time
        if (args.tasks is None or job[0] in args.tasks) and (args.algos is None or job[1] in args.algos)
        for seed in args.seeds
    ]

    def launch(item: tuple[run.Args, int]) -> Path | None:
        job, seed = item
        done = finished(job, seed, committed) if args.resume else None
        if done is not None:
            print(f"{job.task} {job.algo} seed {seed}: already in {done}", flush=True)
            return done
        if args.workers == 1:
            return published(run.run_one(job, seed, command))
        argv = [sys.executable, "-m", "benchmarks.run", *job_argv(job, seed), "--no-progress-bar"]
        # each job is its own single-process DeepSpeed world: drop a parent's torch.distributed rendezvous
        # (a parent that initialised DeepSpeed still listens on its MASTER_PORT)
        env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "", flush=True)
        if result.returncode:
            print(f"FAILED: {' '.join(argv)}\n{result.stderr[-3000:]}", flush=True)
            return None
        return published(finished(job, seed))

    def published(run_dir: Path | None) -> Path | None:
        if run_dir is not None and runs_root is not None and runs_root not in run_dir.parents:
            publish_run(run_dir, runs_root)
        return run_dir

    if args.workers == 1:  # in this process, one after the other, each with its own progress bar
        run_dirs = [d for d in map(launch, plan) if d is not None]
    else:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            results = pool.map(launch, plan)
            if args.progress_bar:  # one bar over the jobs (each job's own bar is off)
                from tqdm import tqdm

                results = tqdm(results, total=len(plan), desc=f"suite {args.suite}", unit="run")
            run_dirs = [d for d in results if d is not None]
    if len(run_dirs) < len(plan):
        raise SystemExit(
            f"{len(plan) - len(run_dirs)} of {len(plan)} runs failed (see above); run the same command "
            "again to resume (finished runs are skipped)."
        )
    partial = args.tasks is not None or args.algos is not None
    if suite.extras and args.extras and not partial:
        from benchmarks import chat, env_overhead, reward_speed, throughput, vs_trl

        logdir = Path(args.logdir)
        trl_json = str(logdir / "vs_trl.json")
        vs_trl.main(["--model", args.model, "--seconds", str(suite.trl_seconds), "--json", trl_json])
        throughput.main(["--model", args.model, "--json", str(logdir / "throughput.json")])
        env_overhead.main(["--model", args.model, "--json", str(logdir / "env_overhead.json")])
        reward_speed.main(["--json", str(logdir / "reward_speed.json")])
        seeds = [str(seed) for seed in args.seeds]  # multi-turn: the guessing game before and after PPO
        chat.main(["--model", args.model, "--seeds", *seeds, "--out", str(logdir / "chat")])
    from benchmarks import report

    argv = [args.logdir, *map(str, committed)]
    if suite.publish and not partial:
        page = ["--readme", RESULTS_PAGE] if suite.results_page and Path(RESULTS_PAGE).is_file() else []
        argv += ["--out", suite.publish, *page]
    report.main(argv)
    return run_dirs


def main(argv: list[str] | None = None) -> list[Path]:
    """``python -m benchmarks.suite``: parse the command line, then :func:`run_suite`."""
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.suite", description=__doc__)
    command = " ".join(["python -m benchmarks.suite", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_suite(args, command)


if __name__ == "__main__":
    main()
