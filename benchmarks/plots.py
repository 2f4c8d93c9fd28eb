"""The benchmark report's figures: learning curves with a band over seeds, and proxy against gold reward.

Each run is an object with ``scalars``, a mapping ``tag -> (steps, values)`` (``benchmarks.table.Run``). A
mapping ``algo -> runs`` is drawn in its own order, one colour per algorithm.

Every figure says what it shows without the text: a title in words (the task, then the quantity), axis
labels with units or ranges (the task's reward by name, :data:`REWARD_LABELS`), and a legend that defines
the band.

- :func:`curve` and :func:`plot`: the mean over seeds with a band of ± one sample std over seeds, the runs
  aligned by iteration (or evaluation) index up to the shortest run; a cell of one seed is drawn dashed with
  markers and no band.
- :func:`scaling`: :mod:`benchmarks.throughput`'s sweep, tokens/s against the batch and the completion length.
- :func:`kl_curves` and :func:`overoptimisation`: proxy and gold reward against the KL to the reference, on
  a symmetric-log KL axis (linear below 1 nat), so a run that stays within a few nats is not squeezed
  against one that drifts by 50.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

BY_SECONDS = "eval_vs_seconds/"
"""Prefix of the series read from a summary's ``eval_history`` with the training wall time as x."""


def figure_name(env_id: str, tag: str) -> str:
    """The PNG file name of ``tag``'s figure for ``env_id`` (``"overoptimisation"``: the proxy-vs-gold plot).

    >>> figure_name("TextGen-Sentiment-v0", "eval/reward")
    'TextGen-Sentiment-v0__eval_reward.png'
    """
    return f"{env_id}__{tag.replace('/', '_')}.png"


class Scalars(Protocol):
    """A run as the figures read it: ``tag -> (steps, values)``."""

    scalars: dict[str, tuple[np.ndarray, np.ndarray]]


def curve(runs: Sequence[Scalars], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(x, mean, std) of ``tag`` over ``runs``, aligned by the index of the logged point (the k-th iteration
    or evaluation of every run; x is the mean of the runs' x there), up to the shortest run's length, so
    that every point averages every run and no run's last point hangs alone past the others. std is the
    sample std (``ddof=1``; 0 for one run).

    >>> class R:
    ...     def __init__(self, s, v): self.scalars = {"r": (np.array(s, float), np.array(v, float))}
    >>> x, mean, std = curve([R([0, 10, 20], [0, 1, 2]), R([0, 12, 22, 30], [2, 2, 4, 9])], "r")
    >>> x.tolist(), mean.tolist(), std.round(3).tolist()
    ([0.0, 11.0, 21.0], [1.0, 1.5, 3.0], [1.414, 0.707, 1.414])
    """
    series = [run.scalars[tag] for run in runs if tag in run.scalars and len(run.scalars[tag][0])]
    if not series:
        return None
    length = min(len(s) for s, _ in series)
    xs = np.array([s[:length] for s, _ in series], dtype=float)  # (runs, points)
    ys = np.array([v[:length] for _, v in series], dtype=float)  # (runs, points)
    std = ys.std(0, ddof=1) if len(series) > 1 else np.zeros(length)
    return xs.mean(0), ys.mean(0), std


TASK_TITLES = {
    "TextGen-Sentiment-v0": "Sentiment: turn a complaint around",
    "TextGen-ErrorRate-v0": "Error rate: correct a corrupted sentence",
    "TextGen-Similarity-v0": "Similarity: a review sentence from given words",
    "TextGen-Preference-v0": "Preference: continue a review (learned reward)",
}
"""A title in words for each task environment."""
REWARD_LABELS = {
    "review": "P(positive) of the whole review (0 to 1)",
    "continuation": "P(positive) of the completion (0 to 1)",
    "classifier": "gold: P(positive) of the completion (0 to 1)",
    "vader": "VADER compound sentiment (-1 to 1)",
    "wer": "-WER, negated word error rate (0 = perfect)",
    "cer": "-CER, negated character error rate (0 = perfect)",
    "minilm": "MiniLM cosine similarity to the reference (-1 to 1)",
    "chrf": "chrF to the reference (0 to 1)",
    "preference": "proxy: reward-model score (logit)",
}
"""The axis label, with its range or unit, of each reward and side metric by name."""
KL_LABEL = "KL to the reference (nats per episode)"
SECONDS_LABEL = "training time (s; evaluations excluded)"
STEPS_LABEL = "env steps (generated tokens)"


def describe(env_id: str, tag: str, reward: str | None) -> tuple[str, str, str]:
    """(title, x label, y label) in words of ``tag``'s figure; ``reward`` is the name of the task's trained
    reward (:data:`REWARD_LABELS`).

    >>> title, xlabel, ylabel = describe("TextGen-ErrorRate-v0", "eval/reward", "wer")
    >>> title.splitlines()
    ['Error rate: correct a corrupted sentence', 'held-out test reward']
    >>> xlabel, ylabel
    ('env steps (generated tokens)', '-WER, negated word error rate (0 = perfect)')
    """
    task = TASK_TITLES.get(env_id, env_id)
    reward_label = REWARD_LABELS.get(reward or "", "reward")
    name = tag.split("/", 1)[-1]
    what, ylabel = {
        "rollout/ep_rew_mean": ("training reward (each iteration's episodes)", reward_label),
        "rollout/kl": ("KL to the reference on the training samples", KL_LABEL),
        "eval/reward": ("held-out test reward", reward_label),
        BY_SECONDS + "reward": ("held-out test reward against training time", reward_label),
    }.get(tag, (f"side metric {name} on the training samples" if tag.startswith("rollout/") else tag, ""))
    ylabel = ylabel or REWARD_LABELS.get(name, tag)
    return f"{task}\n{what}", SECONDS_LABEL if tag.startswith(BY_SECONDS) else STEPS_LABEL, ylabel


def plot(
    env_id: str, by_algo: Mapping[str, Sequence[Scalars]], tag: str, out: Path, reward: str | None = None
) -> Path | None:
    """One PNG: per algorithm, the mean over seeds with a band of ± one sample std (:func:`curve`), or a
    single run drawn dashed with markers; titles and labels in words (:func:`describe`); None if no run
    logged ``tag``."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    drawn = banded = False
    for index, (algo, runs) in enumerate(by_algo.items()):
        result = curve(runs, tag)
        if result is None:
            continue
        steps, mean, std = result
        count = sum(tag in run.scalars for run in runs)
        color = f"C{index}"
        if count == 1:
            axis.plot(steps, mean, color=color, linestyle="--", marker=".", label=f"{algo}: 1 seed (no band)")
        else:
            marker = "o" if len(steps) < 4 else None
            axis.plot(steps, mean, color=color, marker=marker, label=f"{algo}: mean of {count} seeds")
            axis.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            banded = True
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    _finish(axis, *describe(env_id, tag, reward), band=banded)
    return _save(figure, out / figure_name(env_id, tag))


def kl_series(run: Scalars, tags: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each of ``tags`` of one run at the KL of their step (``rollout/kl`` interpolated), sorted by KL."""
    kl = run.scalars["rollout/kl"]
    per_tag = []
    for tag in tags:
        steps, values = run.scalars[tag]
        x = np.interp(steps, kl[0], kl[1])  # KL at the steps the metric was logged
        order = np.argsort(x, kind="stable")
        per_tag.append((x[order], values[order]))
    return per_tag


def kl_curves(
    runs: Sequence[Scalars], tags: tuple[str, ...], points: int = 25
) -> tuple[np.ndarray, list[Any]] | None:
    """Each of ``tags`` against the KL, (grid, [(mean, std) per tag]) over ``runs``: every :func:`kl_series`
    on a grid from 0 to the smallest of the runs' largest KLs (so every point averages every run), even on
    the symmetric-log axis the figure uses: ``points`` steps from 0 to 1 nat, ``points`` more spaced
    geometrically beyond."""
    series = [kl_series(run, tags) for run in runs]
    top = min(float(per_tag[0][0].max()) for per_tag in series)
    if not np.isfinite(top) or top <= 0:
        return None
    grid = np.linspace(0.0, min(top, 1.0), points)
    if top > 1.0:
        grid = np.concatenate([grid, np.geomspace(1.0, top, points + 1)[1:]])
    curves = []
    for index in range(len(tags)):
        rows = np.array([np.interp(grid, *per_tag[index]) for per_tag in series])  # (runs, points)
        curves.append((rows.mean(0), rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(len(grid))))
    return grid, curves


def moving_average(values: np.ndarray, window: int = 5) -> np.ndarray:
    """The mean of each value and the ``window // 2`` on either side (fewer at the ends).

    >>> moving_average(np.array([0.0, 3.0, 0.0, 3.0]), window=3).tolist(), moving_average(np.ones(2)).tolist()
    ([1.5, 1.0, 2.0, 1.5], [1.0, 1.0])
    """
    index, total = np.arange(len(values)), np.concatenate([[0.0], np.cumsum(values)])
    low, high = np.maximum(index - window // 2, 0), np.minimum(index + window // 2 + 1, len(values))
    return (total[high] - total[low]) / (high - low)


def overoptimisation(
    env_id: str, by_algo: Mapping[str, Sequence[Scalars]], gold: str, out: Path, reward: str | None = None
) -> tuple[Path, list[str]] | None:
    """Proxy reward (the trained-on reward, named ``reward``) and ``gold`` against the KL to the reference,
    every iteration of every run: the mean over seeds with a band of ± one sample std (:func:`kl_curves`),
    each run over its own KL range thin (smoothed over 5 iterations), on a symmetric-log KL axis. A gold curve
    that falls while the proxy still rises is over-optimisation. Returns the PNG and one line per algorithm:
    the KL where the mean gold peaks (None: not logged)."""
    plt = _pyplot()
    tags = ("rollout/ep_rew_mean", gold)
    groups = {algo: [r for r in by_algo[algo] if {"rollout/kl", *tags} <= set(r.scalars)] for algo in by_algo}
    if not any(groups.values()):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    peaks, banded = [], False
    for index, (algo, runs) in enumerate(groups.items()):  # colour C<index>, as in :func:`plot`
        result = kl_curves(runs, tags) if runs else None
        if result is None:
            continue
        grid, curves = result
        label = f"{algo}: mean of {len(runs)} seeds" if len(runs) > 1 else f"{algo}: 1 seed (no band)"
        for axis, (mean, std) in zip(axes, curves, strict=True):
            axis.plot(grid, mean, color=f"C{index}", label=label, linestyle="-" if len(runs) > 1 else "--")
            if len(runs) > 1:
                axis.fill_between(grid, mean - std, mean + std, color=f"C{index}", alpha=0.2, linewidth=0)
                banded = True
        for run in runs:  # each run over its own KL range (a moving average of 5 iterations), thin
            for axis, (x, y) in zip(axes, kl_series(run, tags), strict=True):
                axis.plot(x, moving_average(y), color=f"C{index}", alpha=0.35, linewidth=0.8)
        gold_mean = curves[1][0]
        best = int(np.argmax(gold_mean))
        points = min(len(r.scalars[gold][0]) for r in runs)
        reached = " / ".join(f"{float(r.scalars['rollout/kl'][1].max()):.2f}" for r in runs)
        peaks.append(
            f"{env_id} {algo}: mean gold {gold} peaks at KL {grid[best]:.2f} nats ({gold_mean[best]:.3f}; "
            f"{gold_mean[0]:.3f} at the start, {gold_mean[-1]:.3f} at {grid[-1]:.2f}, the largest KL all "
            f"{len(runs)} runs reached; each run's largest: {reached}); at least {points} points per run"
        )
    task = TASK_TITLES.get(env_id, env_id)
    gold_name = gold.split("/", 1)[-1]
    labels = [
        ("proxy (trained) reward, training samples", REWARD_LABELS.get(reward or "", "proxy reward")),
        ("gold (held-out scorer), training samples", REWARD_LABELS.get(gold_name, gold)),
    ]
    for axis, (what, ylabel) in zip(axes, labels, strict=True):
        axis.set_xscale("symlog", linthresh=1.0)  # linear up to 1 nat, logarithmic beyond
        _finish(axis, f"{task}\n{what}", KL_LABEL + ", symlog axis", ylabel, band=banded, thin=True)
    return _save(figure, out / figure_name(env_id, "overoptimisation")), peaks


def scaling(sweep: dict[str, list[dict[str, object]]], path: str | Path) -> Path:
    """The scaling sweep as one figure: rollout (each decode) and update tokens/s against the batch size and
    against the completion length."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (name, key, label) in zip(
        axes,
        (("batch", "num_envs", "batch (envs)"), ("length", "max_new_tokens", "completion length N")),
        strict=True,
    ):
        rows = sweep[name]
        xs = [row[key] for row in rows]
        for decode in ("eager", "compiled"):
            ys = [cast("dict", row["rollout_tokens_per_s_by_decode"]).get(decode) for row in rows]
            if all(y is not None for y in ys):
                axis.plot(xs, ys, marker="o", label=f"rollout, {decode} decode")
        axis.plot(xs, [row["ppo_update_tokens_per_s"] for row in rows], marker="s", label="PPO update")
        axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [str(x) for x in xs])
        _finish(axis, f"throughput against the {label.split(' (')[0]}", label, "tokens/s")
    return _save(figure, Path(path))


def _finish(axis: Any, title: str, xlabel: str, ylabel: str, band: bool = False, thin: bool = False) -> None:
    """Title, labels, grid, and a legend whose extra entries define the band and the thin lines."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    if band:
        handles.append(Patch(color="grey", alpha=0.3, linewidth=0))
        labels.append("band: mean ± 1 sample std over seeds")
    if thin:
        handles.append(Line2D([], [], color="grey", alpha=0.5, linewidth=0.8))
        labels.append("thin: each seed (5-iteration moving average)")
    axis.legend(handles, labels, fontsize="small")


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: the report's tables need
    no matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
