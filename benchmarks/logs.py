"""What an agent logs, kept in memory: one more output format of SB3's logger, and the time breakdown.

:class:`LoggedHistory` is appended to an agent's ``logger.output_formats``; every ``dump`` (one per
iteration for the policy-gradient agents) adds the numeric values to ``history``. :func:`seconds_per_phase`
sums the time breakdown the agents log under ``time/*_s`` (see ``agents.on_policy``: ``act_s``, ``reward_s``,
``env_s``, ``score_s``, ``update_s``, ``other_s``).
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.logger import KVWriter

RATES = ("time/tokens_per_s", "time/train_tokens_per_s")
"""``time/`` keys ending in ``_s`` that are rates, not seconds."""


class LoggedHistory(KVWriter):
    """Keeps the numeric values of every logger dump, in order, in ``history``."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.history.append({k: float(v) for k, v in key_values.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        pass


def seconds_per_phase(history: list[dict[str, float]]) -> dict[str, float]:
    """Total seconds of each logged phase (``time/<phase>_s``) over ``history``.

    >>> seconds_per_phase([{"time/act_s": 1.0, "time/tokens_per_s": 50.0}, {"time/act_s": 2.5}])
    {'time/act_s': 3.5}
    """
    phases = sorted(
        {k for row in history for k in row if k.startswith("time/") and k.endswith("_s")} - set(RATES)
    )
    return {k: round(sum(row.get(k, 0.0) for row in history), 2) for k in phases}
