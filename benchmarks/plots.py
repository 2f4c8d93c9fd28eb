"""The benchmark report's figures: learning curves with a band over seeds, and proxy against gold reward.

Each run is an object with ``scalars``, a mapping ``tag -> (steps, values)`` (``benchmarks.report.Run``). A
mapping ``algo -> runs`` is drawn in its own order, one colour per algorithm.

- :func:`curve` and :func:`plot`: the mean over seeds with a ± one std band, on the range of x that every run
  covers (so the mean never changes the runs it averages part-way); past it, each longer run goes on as a
  thin line of its own. With x the training wall time, runs end at different times.
- :func:`kl_curves` and :func:`overoptimisation`: the same against the KL to the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

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
    """(x, mean, std) of ``tag`` over ``runs``, on the union of their steps within the range every run covers
    (from the largest first step to the smallest last step; each run interpolated), std with ``ddof=0``.

    >>> class R:
    ...     def __init__(self, s, v): self.scalars = {"r": (np.array(s, float), np.array(v, float))}
    >>> x, mean, std = curve([R([0, 10, 20], [0, 1, 2]), R([0, 5, 12, 30], [2, 2, 2, 2])], "r")
    >>> x.tolist(), mean.tolist(), std.tolist()
    ([0.0, 5.0, 10.0, 12.0, 20.0], [1.0, 1.25, 1.5, 1.6, 2.0], [1.0, 0.75, 0.5, 0.4, 0.0])
    """
    series = [run.scalars[tag] for run in runs if tag in run.scalars and len(run.scalars[tag][0])]
    if not series:
        return None
    low, high = max(float(s.min()) for s, _ in series), min(float(s.max()) for s, _ in series)
    steps = np.unique(np.concatenate([s for s, _ in series]))
    steps = steps[(steps >= low) & (steps <= high)]
    if not len(steps):  # the runs' ranges do not overlap: no point averages every run
        return None
    grid = np.array([np.interp(steps, s, v) for s, v in series])
    return steps, grid.mean(0), grid.std(0)


def plot(env_id: str, by_algo: Mapping[str, Sequence[Scalars]], tag: str, out: Path) -> Path | None:
    """One PNG: a line per algorithm with a ± std band over seeds (:func:`curve`), and the part of each run
    beyond the range all its algorithm's runs cover as a thin line; None if no run logged ``tag``."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    drawn = False
    for index, (algo, runs) in enumerate(by_algo.items()):
        result = curve(runs, tag)
        if result is None:
            continue
        steps, mean, std = result
        color, marker = f"C{index}", "o" if len(steps) < 4 else None
        axis.plot(steps, mean, color=color, label=f"{algo} (n={len(runs)})", marker=marker)
        axis.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        for run in runs:  # what a run logged past the common range, from the common range's end
            if tag in run.scalars:
                s, v = run.scalars[tag]
                if len(s) and s.max() > steps[-1]:
                    tail = s > steps[-1]
                    x = np.concatenate([[steps[-1]], s[tail]])
                    y = np.concatenate([[np.interp(steps[-1], s, v)], v[tail]])
                    axis.plot(x, y, color=color, alpha=0.35, linewidth=0.8)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    xlabel = "training wall time (s)" if tag.startswith(BY_SECONDS) else "env steps (generated tokens)"
    _finish(axis, f"{env_id}: {tag}", xlabel, tag)
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
    on a grid from 0 to the smallest of the runs' largest KLs (so every point averages every run)."""
    series = [kl_series(run, tags) for run in runs]
    top = min(float(per_tag[0][0].max()) for per_tag in series)
    if not np.isfinite(top) or top <= 0:
        return None
    grid = np.linspace(0.0, top, points)
    curves = []
    for index in range(len(tags)):
        rows = np.array([np.interp(grid, *per_tag[index]) for per_tag in series])  # (runs, points)
        curves.append((rows.mean(0), rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(points)))
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
    env_id: str, by_algo: Mapping[str, Sequence[Scalars]], gold: str, out: Path
) -> tuple[Path, list[str]] | None:
    """Proxy reward (the trained-on reward) and ``gold`` against the KL to the reference, every iteration of
    every run: the mean over seeds with a ± std band (:func:`kl_curves`), each run over its own KL range thin
    (smoothed over 5 iterations). A gold curve that falls while the proxy still rises is over-optimisation.
    Returns the PNG and one line per algorithm: the KL where the mean gold peaks (None: not logged)."""
    plt = _pyplot()
    tags = ("rollout/ep_rew_mean", gold)
    groups = {algo: [r for r in by_algo[algo] if {"rollout/kl", *tags} <= set(r.scalars)] for algo in by_algo}
    if not any(groups.values()):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    peaks = []
    for index, (algo, runs) in enumerate(groups.items()):  # colour C<index>, as in :func:`plot`
        result = kl_curves(runs, tags) if runs else None
        if result is None:
            continue
        grid, curves = result
        for axis, (mean, std) in zip(axes, curves, strict=True):
            axis.plot(grid, mean, color=f"C{index}", label=f"{algo} (n={len(runs)})")
            axis.fill_between(grid, mean - std, mean + std, color=f"C{index}", alpha=0.2)
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
    for axis, tag in zip(axes, ("proxy: " + tags[0], "gold: " + gold), strict=True):
        _finish(axis, f"{env_id}: {tag}", "KL to reference (nats per episode)", tag)
    return _save(figure, out / figure_name(env_id, "overoptimisation")), peaks


def _finish(axis: Any, title: str, xlabel: str, ylabel: str) -> None:
    axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axis.grid(alpha=0.3)
    axis.legend()


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
