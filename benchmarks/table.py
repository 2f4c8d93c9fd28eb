"""The tables of benchmark runs: mean ± std cells over seeds, the headline rows with the paired change of the
reward and its two intervals (:data:`INTERVALS`), the run times and commits they quote.

:mod:`benchmarks.report` reads the runs (:class:`Run`) and writes these tables into ``report.md`` and
``table.json``; :mod:`benchmarks.sweep` reads :func:`run_times`.

>>> by_algo = {"ppo": [Run(Path("a"), "e", "ppo", {"rollout/kl": (np.array([1]), np.array([0.5]))})]}
>>> print(table(by_algo))
| metric | ppo |
|---|---|
| rollout/kl | 0.5 (n = 1) |
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metrics import SIGNIFICANCE, mean_interval, seeds_and_prompts_interval
from benchmarks.plots import BY_SECONDS


@dataclass
class Run:
    """One run: its group, its scalars ``tag -> (steps, values)`` and its summary (may be empty)."""

    path: Path
    env_id: str
    algo: str
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    summary: dict[str, Any] = field(default_factory=dict)


def mean_std(values: list[float]) -> str:
    """``"mean ± std (n = k)"`` with the sample std; one value has no spread: ``"mean (n = 1)"``.

    >>> mean_std([1.0, 2.0, 3.0]), mean_std([0.5])
    ('2 ± 1 (n = 3)', '0.5 (n = 1)')
    """
    array = np.asarray(values, dtype=float)
    if len(array) == 1:
        return f"{array[0]:.4g} (n = 1)"
    return f"{array.mean():.4g} ± {float(array.std(ddof=1)):.2g} (n = {len(array)})"


def group(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """``env_id -> algo -> runs``."""
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[run.env_id][run.algo].append(run)
    return groups


def table(by_algo: dict[str, list[Run]]) -> str:
    """Markdown table: rows are tags, columns algorithms, cells mean ± std of the last values over seeds."""
    algos = ordered(by_algo)
    tags = sorted(
        {tag for runs in by_algo.values() for run in runs for tag in run.scalars if BY_SECONDS not in tag}
    )
    lines = ["| metric | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for tag in tags:
        cells = []
        for algo in algos:
            finals = [float(run.scalars[tag][1][-1]) for run in by_algo[algo] if tag in run.scalars]
            cells.append(mean_std(finals) if finals else "–")
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SKIPPED = ("reward_std", "completion_tokens", "distinct_1")
"""Evaluation metrics left out of the headline table (they stay in the full per-task tables)."""


def ordered(algos: Any) -> list[str]:
    """Algorithms in table order (``zero-shot``, then :data:`agents.ALGORITHMS`, as
    :data:`benchmarks.run.ALGOS` lists them), then any others alphabetically."""
    from benchmarks.run import ALGOS  # imported here: the agents (torch) load only when a table is made

    return sorted(algos, key=lambda a: (ALGOS.index(a) if a in ALGOS else len(ALGOS), a))


CHANGE = "reward change (paired)"
TRAIN_TIME, EVAL_TIME = "training time (s)", "evaluation time (s)"
INTERVALS = (
    "Reward change (paired): after - before training, on the same test prompts and sampling seed; "
    "mean ± sample std over seeds, then two 95 % intervals of the mean: **t** over seeds (the test "
    "prompts held fixed) and **seeds × prompts**, a two-way bootstrap that treats both the training seeds "
    "and the test prompts as random (benchmarks.metrics.seeds_and_prompts_interval: 10,000 resamples of "
    "seeds and, independently, prompts, with replacement; percentile interval; fixed RNG seed). "
    f"{SIGNIFICANCE}. A cell of one seed shows n = 1 and no interval. Training time excludes the held-out "
    "evaluations, which are timed apart."
)
"""How the report's paired changes, intervals, significance mark and times are read (printed under the
summary table)."""


def run_times(summary: dict[str, Any]) -> tuple[float | None, float | None]:
    """(training seconds, evaluation seconds) of a run: its ``train_time_s`` and ``eval_time_s``, or for a
    run written before those fields, the training time before its last evaluation (``eval_history``) and
    the rest of ``wall_time_s``. A run that did not train (zero-shot) has no training time.

    >>> run_times({"wall_time_s": 10.0, "eval_history": [{"train_seconds": 0.0}, {"train_seconds": 7.0}]})
    (7.0, 3.0)
    """
    if "train_time_s" in summary:
        return summary["train_time_s"], summary.get("eval_time_s")
    history, total = summary.get("eval_history") or [], summary.get("wall_time_s")
    if summary.get("timesteps") == 0 and total is not None:  # zero-shot: evaluation only
        return None, float(total)
    if not history or total is None:
        return None, None
    trained = float(history[-1]["train_seconds"])
    return trained, float(total) - trained


def commit_of(summary: dict[str, Any]) -> str | None:
    """The git commit a run recorded (``"<hash>+dirty"`` for a tree with uncommitted changes), None for a run
    written before provenance recorded it.

    >>> commit_of({"git": {"commit": "abc", "dirty": True}}), commit_of({})
    ('abc+dirty', None)
    """
    git = summary.get("git") or summary.get("provenance", {}).get("git") or {}
    if not git.get("commit"):
        return None
    return git["commit"] + ("+dirty" if git.get("dirty") else "")


def score_changes(summaries: list[dict[str, Any]]) -> np.ndarray | None:
    """The seeds x prompts table of paired per-prompt changes (``eval_after._scores - eval_before._scores``),
    None when a run lacks them or the runs scored different numbers of prompts."""
    rows = []
    for s in summaries:
        after, before = s["eval_after"].get("_scores", []), s["eval_before"].get("_scores", [])
        if not after or len(after) != len(before):
            return None
        rows.append(np.asarray(after, float) - np.asarray(before, float))  # (P,)
    if not rows or len({len(r) for r in rows}) > 1:
        return None
    return np.stack(rows)  # (S, P)


def change_intervals(values: list[float], changes: np.ndarray | None) -> dict[str, Any]:
    """The paired change's two intervals (None where there is one seed or no per-prompt scores) and the
    verdict of the one significance rule (None: no verdict)."""
    t = mean_interval(values) if len(values) > 1 else None
    boot = seeds_and_prompts_interval(changes) if changes is not None else None
    return {
        "t_interval": list(t) if t else None,
        "seeds_and_prompts_interval": list(boot) if boot else None,
        "prompts": int(changes.shape[1]) if changes is not None else None,
        "significant": None if boot is None else bool(boot[0] > 0 or boot[1] < 0),
    }


def headline_rows(groups: dict[str, dict[str, list[Run]]]) -> list[dict[str, Any]]:
    """Every cell of the headline table as a row: ``env_id``, ``algo``, ``metric``, ``values`` (one per
    seed), ``mean``, ``std`` (sample std; None for one value), ``n`` and ``commits`` (the git commits the
    runs recorded; None for a run that predates the record). The paired change of the reward (after -
    before on the same prompts and sampling seed, one value per seed) also gets ``t_interval`` (95 % t over
    seeds), ``seeds_and_prompts_interval`` (the 95 % two-way bootstrap), ``prompts`` and ``significant``
    (:func:`change_intervals`). This is ``table.json``."""
    rows = []
    for env_id, by_algo in sorted(groups.items()):
        summaries = {
            a: [r.summary for r in runs if r.summary.get("eval_after")] for a, runs in by_algo.items()
        }
        names = sorted({k for ss in summaries.values() for s in ss for k in s["eval_after"]})
        metrics: list[tuple[str, Any]] = [("reward", lambda s: s["eval_after"]["reward"])]
        metrics.append((CHANGE, lambda s: s["eval_after"]["reward"] - s["eval_before"]["reward"]))
        metrics += [
            (name, lambda s, name=name: s["eval_after"].get(name))
            for name in names
            if name not in ("reward", *SKIPPED) and not name.startswith("_")
        ]
        metrics += [(TRAIN_TIME, lambda s: run_times(s)[0]), (EVAL_TIME, lambda s: run_times(s)[1])]
        for label, get in metrics:
            for algo in ordered(summaries):
                values = [float(v) for v in (get(s) for s in summaries[algo]) if v is not None]
                if not values:
                    continue
                array = np.asarray(values)
                row: dict[str, Any] = {
                    "env_id": env_id,
                    "algo": algo,
                    "metric": label,
                    "mean": float(array.mean()),
                    "std": float(array.std(ddof=1)) if len(array) > 1 else None,
                    "n": len(values),
                    "values": values,
                    "commits": sorted({commit_of(s) or "not recorded" for s in summaries[algo]}),
                }
                if label == CHANGE:
                    row |= change_intervals(values, score_changes(summaries[algo]))
                rows.append(row)
    return rows


def change_cell(row: dict[str, Any]) -> str:
    """A paired change's cell: mean ± std (n), the t and the seeds-and-prompts intervals, * if significant.

    >>> change_cell({"values": [0.1, 0.3], "t_interval": [-1.07, 1.47],
    ...              "seeds_and_prompts_interval": [0.05, 0.35], "significant": True})
    '0.2 ± 0.14 (n = 2); t [-1.07, +1.47]; seeds × prompts [+0.05, +0.35]*'
    """
    text = mean_std(row["values"])
    for name, key in (("t", "t_interval"), ("seeds × prompts", "seeds_and_prompts_interval")):
        if row.get(key):
            text += f"; {name} [{row[key][0]:+.3g}, {row[key][1]:+.3g}]"
    return text + ("*" if row.get("significant") else "")


def headline(groups: dict[str, dict[str, list[Run]]]) -> str:
    """One table for all tasks, from the runs' summaries: every evaluation metric after training, the paired
    change of the reward (after - before, same seed and prompts) with its two intervals (:data:`INTERVALS`)
    and the training and evaluation times; mean ± sample std over seeds."""
    rows = headline_rows(groups)
    algos = ordered({row["algo"] for row in rows})
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for row in rows:
        text = change_cell(row) if row["metric"] == CHANGE else mean_std(row["values"])
        cells[(row["env_id"], row["metric"])][row["algo"]] = text
    lines = ["| env id | metric | " + " | ".join(algos) + " |", "|---" * (len(algos) + 2) + "|"]
    for (env_id, label), by_algo in cells.items():
        lines.append(f"| {env_id} | {label} | " + " | ".join(by_algo.get(a, "–") for a in algos) + " |")
    return "\n".join(lines + ["", INTERVALS])
