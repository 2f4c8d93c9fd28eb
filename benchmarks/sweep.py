"""A one-seed hyperparameter sweep of one task and algorithm: which settings the benchmark presets use.

    python -m benchmarks.sweep --task sentiment --algo ppo --budget 12288 --seeds 0

The sweep varies one setting at a time around the base run (every other option as given on the command
line): ``--learning-rates``, ``--kl-coefs``, ``--epochs`` (PPO) and ``--episodes`` (episodes per
iteration), at the same generated-token budget. Each run is an ordinary :mod:`benchmarks.run` run;
finished runs in ``--logdir`` or under ``<out>/runs/`` (where each finished run's summary and event files
are copied, to be committed) are not run again, so an interrupted sweep resumes on any machine.

Every run is evaluated on the task's validation prompts (:data:`SPLIT`), never on the test prompts that the
benchmark table reports: a setting chosen here has not seen the test split.

``<out>/sweep.json`` and ``<out>/sweep.md`` list every run: the setting it changes, the validation reward
before and after on the same prompts and sampling seed (the paired change), the KL to the reference, the
held-out perplexity (where the task has one) and the training time (evaluations excluded). The pick is the
run with the largest paired change among those whose held-out perplexity rose by at most
``--max-perplexity-rise`` (a fraction); one seed ranks settings only roughly, so the README states the pick
with the sweep beside it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tyro

from benchmarks import run, suite
from benchmarks.table import run_times
from infra.storage import atomic_write_text

SPLIT = "validation"
"""The only prompts a sweep scores: settings are chosen on validation, never on the test prompts the table
reports (:data:`textenv.tasks.SPLITS`)."""
SWEPT = {"learning_rates": "learning_rate", "kl_coefs": "init_kl_coef", "epochs": "n_epochs"}
SWEPT["episodes"] = "episodes_per_rollout"
"""Sweep option -> the run setting it varies."""


@dataclass
class Args(run.RunSettings):
    """One-at-a-time sweep around the base settings (the other options of :class:`benchmarks.run.Args`)."""

    task: str = "sentiment"
    """Benchmark task."""
    algo: str = "ppo"
    """Algorithm (ppo, reinforce, rloo, dqn)."""
    budget: str = "12288"
    """Generated-token budget of every run (the same for every setting)."""
    learning_rates: list[float] = field(default_factory=lambda: [3e-6, 3e-5])
    """Learning rates tried besides the base --learning-rate."""
    kl_coefs: list[float] = field(default_factory=lambda: [0.01, 0.2])
    """KL coefficients tried besides the base --init-kl-coef."""
    epochs: list[int] = field(default_factory=lambda: [2])
    """PPO epochs tried besides the base --n-epochs (ignored for other algorithms)."""
    episodes: list[int] = field(default_factory=lambda: [16])
    """Episodes per iteration tried besides the base --episodes-per-rollout."""
    max_perplexity_rise: float = 0.10
    """The pick's held-out perplexity may rise by at most this fraction."""
    out: Path = Path("benchmarks/results/sweep-cpu")
    """Where sweep.json, sweep.md and the committed runs (runs/) go."""
    publish_runs: bool = True
    """Copy each finished run's small artefacts to <out>/runs/ and count the runs there as finished."""

    def __post_init__(self) -> None:
        super().__post_init__()
        run.Args(task=self.task, algo=self.algo, budget=self.budget)  # same checks as a single run
        if len(self.seeds) != 1:
            raise ValueError(f"--seeds {self.seeds}: a sweep runs one seed, e.g. --seeds 0.")


def plan(args: Args) -> list[tuple[str, run.Args]]:
    """(label, job) of the base run and of each one-at-a-time variation, without duplicates.

    >>> [label for label, _ in plan(Args(learning_rates=[1e-5, 2e-5], kl_coefs=[], epochs=[], episodes=[]))]
    ['base', 'learning_rate=2e-05']
    """
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(run.RunSettings)}
    base = run.Args(task=args.task, algo=args.algo, budget=args.budget, eval_split=SPLIT, **settings)
    jobs, seen = [("base", base)], {json.dumps(dataclasses.asdict(base), sort_keys=True, default=str)}
    for option, name in SWEPT.items():
        if name == "n_epochs" and args.algo != "ppo":
            continue
        for value in getattr(args, option):
            job = dataclasses.replace(base, **{name: value})
            key = json.dumps(dataclasses.asdict(job), sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                jobs.append((f"{name}={value:g}", job))
    if args.episodes and min(job.episodes_per_rollout for _, job in jobs) < args.minibatch_size:
        raise ValueError(
            f"--episodes {min(args.episodes)} is below --minibatch-size {args.minibatch_size}; "
            "lower --minibatch-size or drop that value."
        )
    return jobs


def row(label: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One line of the sweep table from a run's summary.json (a run evaluated on validation).

    >>> row("base", {"args": {"eval_split": "test"}})
    Traceback (most recent call last):
    ...
    ValueError: base: the run was evaluated on the test split; a sweep reads validation runs only (rerun it).
    """
    split = summary["args"].get("eval_split", "test")  # runs before --eval-split evaluated on test
    if split != SPLIT:
        raise ValueError(
            f"{label}: the run was evaluated on the {split} split; a sweep reads {SPLIT} runs only "
            "(rerun it)."
        )
    before, after = summary["eval_before"], summary["eval_after"]
    result = {
        "setting": label,
        "reward_before": before["reward"],
        "reward_after": after["reward"],
        "reward_change": after["reward"] - before["reward"],
        "kl_to_reference": after.get("kl_to_reference"),
        "train_time_s": run_times(summary)[0],
    }
    if "heldout_perplexity" in after:
        result["perplexity_rise"] = after["heldout_perplexity"] / before["heldout_perplexity"] - 1
    return result


def pick(rows: list[dict[str, Any]], max_rise: float) -> dict[str, Any] | None:
    """The row with the largest paired change among those within the perplexity limit.

    >>> pick([{"reward_change": 0.3, "perplexity_rise": 0.2}, {"reward_change": 0.1}], 0.1)
    {'reward_change': 0.1}
    """
    allowed = [r for r in rows if r.get("perplexity_rise", 0.0) <= max_rise]
    return max(allowed, key=lambda r: r["reward_change"]) if allowed else None


def markdown(rows: list[dict[str, Any]], chosen: dict[str, Any] | None) -> str:
    lines = [
        "| setting | reward before | reward after | change (paired) | KL | perplexity rise | "
        "training time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **(pick)**" if r is chosen else ""
        rise = f"{r['perplexity_rise']:+.1%}" if "perplexity_rise" in r else "–"
        lines.append(
            f"| {r['setting']}{mark} | {r['reward_before']:.3f} | {r['reward_after']:.3f} | "
            f"{r['reward_change']:+.3f} | {r['kl_to_reference']:.2f} | {rise} | {r['train_time_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.sweep", description=__doc__)
    command = " ".join(["python -m benchmarks.sweep", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runs_root = args.out / "runs"
    seed, rows = args.seeds[0], []
    for label, job in plan(args):
        done = suite.finished(job, seed, [runs_root] if args.publish_runs and runs_root.is_dir() else [])
        if done is None:
            done = run.run_one(job, seed, command)
        if args.publish_runs and runs_root not in done.parents:
            suite.publish_run(done, runs_root)
        rows.append(row(label, json.loads((done / "summary.json").read_text())))
    chosen = pick(rows, args.max_perplexity_rise)
    payload = {"args": json.loads(json.dumps(dataclasses.asdict(args), default=str)), "rows": rows}
    payload["pick"] = chosen["setting"] if chosen else None
    atomic_write_text(args.out / "sweep.json", json.dumps(payload, indent=2) + "\n")
    table = markdown(rows, chosen)
    atomic_write_text(args.out / "sweep.md", f"`{command}`\n\n{table}\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
