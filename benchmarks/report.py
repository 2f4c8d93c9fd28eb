"""Comparison report of benchmark runs: markdown tables (mean ± std over seeds) and learning curves.

    python -m benchmarks.report runs/                  # writes runs/report/report.md and its PNG curves
    python -m benchmarks.report runs/ --out docs/results --tags rollout/ep_rew_mean eval/reward

Every directory below the given paths that holds TensorBoard event files is one run; it belongs to the group
``<env-id>/<algo>`` named by its ``summary.json`` (written by :mod:`benchmarks.run`) or, without one, by its
path ``.../<env-id>/<algo>/seed<k>-<time>/``. Scalars are read with TensorBoard's ``EventAccumulator``.

- Table per env id (:mod:`benchmarks.table`): one row per scalar tag, one column per algorithm; each cell
  is the mean ± sample std over seeds of the run's last value of that tag (for ``eval/*``, the evaluation
  after training), and ``(n=k)``.
- Curves per env id and tag (:mod:`benchmarks.plots`): one line per algorithm (the mean over seeds on the
  range every seed covers, interpolated; each longer run's rest thin) with a band of ± one std; x is env
  steps (generated tokens). The held-out reward is also
  plotted against the training wall time (``eval_vs_seconds/reward``, from each summary's
  ``eval_history``; the evaluations' own time excluded).
- ``table.json``: every cell of the headline table as a row (:func:`benchmarks.table.headline_rows`), with
  the values per seed, so other tools need not parse markdown.
- Provenance: the model, budget, machine and package versions of every group, from the summaries.
- ``vs_trl.json`` directly in a given path (from :mod:`benchmarks.vs_trl`) becomes the "vs TRL" table
  (:func:`vs_trl_table`, which ``benchmarks.vs_trl`` also prints).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from benchmarks.plots import BY_SECONDS, figure_name, overoptimisation, plot
from benchmarks.table import CHANGE as CHANGE  # re-exported: the paired change's metric name
from benchmarks.table import Run, commit_of, group, headline, headline_rows, ordered, run_times, table
from infra.storage import atomic_write_text

CURVE_TAGS = ("rollout/ep_rew_mean", "rollout/kl", "eval/reward", "eval_vs_seconds/reward")
"""Tags plotted by default, beside every ``rollout/<side metric>`` a run logged."""


@dataclass
class Args:
    """Markdown tables and learning curves of the benchmark runs under the given paths."""

    paths: Annotated[list[str], tyro.conf.Positional, tyro.conf.arg(metavar="PATH")]
    """Run directories or roots to search (e.g. runs/)."""
    out: str | None = None
    """Output directory; None: <first path>/report."""
    tags: list[str] | None = None
    """Scalar tags to plot; None: the reward, the KL and every side metric."""
    readme: str | None = None
    """Also put the summary table and the reward curves into this markdown file (any page: the published
    table is docs/benchmarks.md's), between its '<!-- benchmarks.report: begin -->' and
    '<!-- benchmarks.report: end -->' lines; its links are written relative to that file."""


def load_run(path: Path) -> Run:
    """Read every scalar of the event files in ``path`` (all events kept, not TensorBoard's sample)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=float))
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    history = summary.get("eval_history") or []
    if len(history) > 1:  # held-out reward against training wall time (evaluations excluded)
        seconds = np.array([point["train_seconds"] for point in history], dtype=float)
        scalars[BY_SECONDS + "reward"] = (seconds, np.array([p["reward"] for p in history], dtype=float))
    env_id = summary.get("env_id") or path.parent.parent.name
    algo = summary.get("args", {}).get("algo") or path.parent.name
    return Run(path, env_id, algo, scalars, summary)


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """All run directories (those holding ``events.out.tfevents*``) below ``paths``, sorted by path."""
    directories = sorted(
        {event.parent for root in paths for event in Path(root).rglob("events.out.tfevents*")}
    )
    return [load_run(directory) for directory in directories]


def provenance(by_algo: dict[str, list[Run]]) -> list[str]:
    """Lines saying which model, budget, machine and versions produced each group's runs."""
    lines = []
    for algo in ordered(by_algo):
        for run in by_algo[algo]:
            summary = run.summary
            if not summary:
                lines.append(f"- {algo} `{run.path.name}`: no summary.json")
                continue
            nested = summary.get("provenance", {})
            args = summary.get("args", {})
            machine = summary.get("machine") or nested.get("machine", {})
            versions = summary.get("versions") or nested.get("versions", {})
            trained, evaluated = run_times(summary)
            times = f"{trained or 0:.0f} s training + {evaluated or 0:.0f} s evaluation"
            lines.append(
                f"- {algo} seed {summary.get('seed')}: model `{args.get('model')}`, "
                f"budget `{args.get('budget')}`, {summary.get('timesteps')} steps in {times} on "
                f"{machine.get('gpu') or machine.get('processor')} ({machine.get('cpu_count')} CPUs, "
                f"{machine.get('torch_threads')} torch threads); "
                f"commit {commit_of(summary) or 'not recorded'}; "
                + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
                + f"; `{summary.get('command', '')}`"
            )
    return lines


README_BEGIN, README_END = "<!-- benchmarks.report: begin -->", "<!-- benchmarks.report: end -->"


def extras(root: Path) -> list[str]:
    """Sections for the JSON results of the suite's extras found directly in ``root``."""
    sections = []
    comparison = root / "vs_trl.json"
    if comparison.is_file():
        payload = json.loads(comparison.read_text())
        settings = ", ".join(f"{k}={v}" for k, v in payload["args"].items())
        sections += ["", f"## vs TRL ({comparison})", "", vs_trl_table(payload["results"]), "", settings]
    for name, title in [
        ("throughput.json", "Throughput ratios (benchmarks.throughput)"),
        ("env_overhead.json", "Environment overhead (benchmarks.env_overhead)"),
        ("reward_speed.json", "Reward speed (benchmarks.reward_speed)"),
    ]:
        path = root / name
        if path.is_file():
            payload = json.loads(path.read_text())
            flat = payload.get("samples_per_s", payload)  # reward_speed nests its figures
            flat = {k: v for k, v in flat.items() if k != "provenance"}
            rows = [
                f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in flat.items()
            ]
            sections += ["", f"## {title}", "", "| measure | value |", "|---|---|", *rows]
    return sections


def vs_trl_table(results: list[dict]) -> str:
    """Markdown table of :mod:`benchmarks.vs_trl`'s contestants, one row each."""
    lines = [
        "| contestant | precision | iterations | s / iteration (median) | completion tokens / s | "
        "last train reward | eval reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['contestant']} | {r.get('precision', 'fp32')} | {r['iterations']} | "
            f"{r['seconds_per_iteration']:.2f} "
            f"({r.get('median_seconds_per_iteration', float('nan')):.2f}) | "
            f"{r['completion_tokens_per_s']:.1f} | {r['last_train_reward']:.4f} | {r['eval_reward']:.4f} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    """Replace the text between README_BEGIN and README_END in ``readme`` (written to a temporary name, then
    renamed, so an interrupted write leaves the old file)."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_BEGIN} ... {README_END} block; add the two markers first.")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    atomic_write_text(readme, f"{head}{README_BEGIN}\n{block}\n{README_END}{tail}")


def write_report(
    paths: Sequence[str | Path], out: Path, tags: list[str] | None = None, readme: Path | None = None
) -> Path:
    """Write ``out/report.md`` and the PNG curves for every run under ``paths``; returns the markdown path."""
    runs = find_runs(paths)
    if not runs:
        raise SystemExit(
            f"No TensorBoard event files under {', '.join(map(str, paths))}; run benchmarks.run first."
        )
    out.mkdir(parents=True, exist_ok=True)
    groups = group(runs)
    summary = headline(groups)
    atomic_write_text(out / "table.json", json.dumps(headline_rows(groups), indent=2) + "\n")
    sections = [
        "# Benchmark report",
        "",
        f"{len(runs)} runs read from {', '.join(map(str, paths))}. "
        "Cells: mean ± sample std over seeds of each "
        "run's last value (eval/*: after training). Regenerate with "
        f"`python -m benchmarks.report {' '.join(map(str, paths))}`.",
        "",
        "## Summary",
        "",
        summary,
    ]
    for env_id, unordered in sorted(groups.items()):
        by_algo = {algo: unordered[algo] for algo in ordered(unordered)}
        sections += ["", f"## {env_id}", "", table(by_algo), ""]
        logged = {tag for runs_ in by_algo.values() for run in runs_ for tag in run.scalars}
        reward = trained_reward(by_algo)
        wanted = tags or [
            t for t in logged if t in CURVE_TAGS or (t.startswith("rollout/") and t[8:].isalpha())
        ]
        for tag in sorted(set(wanted)):
            png = plot(env_id, by_algo, tag, out, reward=reward)
            if png is not None:
                sections.append(f"![{env_id} {tag}]({png.name})")
        found = overoptimisation(env_id, by_algo, GOLD, out, reward=reward)
        if found is not None:
            png, peaks = found
            sections += [f"![{env_id} proxy vs gold]({png.name})", "", *[f"- {line}" for line in peaks]]
        sections += ["", "Produced by:", *provenance(by_algo)]
    extra_sections = [line for root in paths for line in extras(Path(root))]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(sections + extra_sections) + "\n")
    if readme is not None:
        update_readme(readme, readme_block(groups, paths, Path(os.path.relpath(out, readme.parent))))
    return report


def trained_reward(by_algo: dict[str, list[Run]]) -> str | None:
    """The name of the reward the runs trained on (``--reward``, else the task's own), None if unrecorded.

    >>> trained_reward({"ppo": [Run(Path("."), "e", "ppo", {}, {"benchmark": {"reward": "wer"}})]})
    'wer'
    """
    for runs in by_algo.values():
        for run in runs:
            name = run.summary.get("args", {}).get("reward") or run.summary.get("benchmark", {}).get("reward")
            if name:
                return str(name)
    return None


GOLD = "rollout/classifier"
"""The gold scorer of the over-optimisation plot (the preference task's held-out classifier)."""


def readme_figures(groups: dict[str, dict[str, list[Run]]]) -> list[str]:
    """File names of the figures the README block shows: each task's held-out reward against env steps and
    against training time, and its over-optimisation plot where the runs logged the gold scorer."""
    names = []
    for env_id, by_algo in sorted(groups.items()):
        runs = [run for runs_ in by_algo.values() for run in runs_]
        logged = {tag for run in runs for tag in run.scalars}
        names += [figure_name(env_id, tag) for tag in ("eval/reward", BY_SECONDS + "reward") if tag in logged]
        if any({"rollout/kl", "rollout/ep_rew_mean", GOLD} <= set(run.scalars) for run in runs):
            names.append(figure_name(env_id, "overoptimisation"))
    return names


def readme_block(groups: dict[str, dict[str, list[Run]]], paths: Sequence[str | Path], where: Path) -> str:
    """The text ``--readme`` puts between the README markers: the summary table, a link to the full report
    in ``where`` (relative to the README), the headline figures and the extras' sections."""
    return "\n".join(
        [
            headline(groups),
            "",
            f"Full tables, every curve and provenance: [{where}/report.md]({where}/report.md).",
            "",
        ]
        + [f"![{Path(name).stem}]({where / name})" for name in readme_figures(groups)]
        + [line for root in paths for line in extras(Path(root))]
    )


def main(argv: list[str] | None = None) -> Path:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.report", description=__doc__)
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    report = write_report(args.paths, out, args.tags, Path(args.readme) if args.readme else None)
    print(f"wrote {report}")
    return report


if __name__ == "__main__":
    main()
