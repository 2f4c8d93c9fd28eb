"""Multi-turn RL on a real chat model: success rate on held-out conversations before and after training.

    python -m benchmarks.chat --task guess --algo ppo --seeds 0 1 2   # the README's result, ~15 min

For each seed the model (SmolLM2-135M-Instruct by default) plays the same held-out episodes of the task's
test split (``--eval-episodes``, episode i in a fixed order, sampled at temperature 1 under a fixed torch
seed), trains for ``--rollouts`` rollouts of ``--episodes-per-rollout`` conversations on ``TextChat-v0``,
and plays them again. ``summary.json`` (written atomically under ``--out``) holds each seed's success
rates, the mean change with its 95 % t-interval over seeds, the settings, package versions and the machine.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3.common.callbacks import BaseCallback

import textenv  # noqa: F401  (registers the envs)
from agents import ALGORITHMS
from benchmarks import provenance
from benchmarks.metrics import mean_interval
from infra.cli import check_options
from infra.storage import atomic_write_text

ALGOS = {name: entry for name, entry in ALGORITHMS.items() if entry.policy_gradient}
"""The algorithms that train on multi-turn envs: the policy-gradient ones of :data:`agents.ALGORITHMS`."""


@dataclass
class Args:
    task: str = "guess"
    """Chat task: guess, calculator or usersim (textenv.chat_tasks)."""
    algo: str = "ppo"
    """A policy-gradient algorithm of agents.ALGORITHMS: ppo, reinforce or rloo (with --group-size)."""
    group_size: int = 4
    """rloo: conversations per episode index (the env's group_size), compared by its baseline."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One run per seed (agent, env sampling and evaluation samples)."""
    model: str = "smollm2-135m-instruct"
    """Policy model: a textenv model name or a local HF directory."""
    rollouts: int = 8
    """Rollout/update iterations per seed."""
    episodes_per_rollout: int = 16
    """Conversations per rollout."""
    num_envs: int = 8
    """Conversations played at once."""
    eval_episodes: int = 32
    """Held-out test episodes played before and after training (the first ones of the test split)."""
    precision: str = "auto"
    """The agent's precision: 'auto' (bf16 where the hardware runs it natively), 'bf16' or 'fp32'."""
    learning_rate: float = 3e-5
    """Policy learning rate."""
    n_epochs: int = 2
    """PPO: passes over each rollout."""
    init_kl_coef: float = 0.02
    """Initial KL penalty coefficient to the frozen reference."""
    max_turn_tokens: int = 4
    """Token limit of one agent message."""
    max_turns: int = 4
    """Agent messages per conversation."""
    max_prompt_tokens: int = 64
    """P: slots of the system prompt and the opening."""
    max_new_tokens: int = 96
    """N: slots of the rest of the conversation."""
    task_kwargs: str = '{"high": 5, "invalid_cost": 0.1}'
    """JSON object of task settings (e.g. the guessing game's range; a message without a number costs 0.1)."""
    threads: int = 2
    """torch CPU threads."""
    out: Path = Path("benchmarks/results/chat-cpu/guess-ppo")
    """Directory of summary.json."""

    def __post_init__(self) -> None:
        check_options(
            self,
            positive=(
                "rollouts",
                "episodes_per_rollout",
                "num_envs",
                "eval_episodes",
                "learning_rate",
                "n_epochs",
                "max_turn_tokens",
                "max_turns",
                "max_prompt_tokens",
                "max_new_tokens",
                "threads",
            ),
        )


class StopAfterRollouts(BaseCallback):
    """Stops ``learn`` after ``count`` rollouts and their updates; keeps each rollout's mean return."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count, self.done = count, 0
        self.returns: list[float] = []

    def _on_rollout_end(self) -> None:
        self.done += 1
        self.returns.append(float(self.model.rollout_batch.rewards.mean()))  # type: ignore[attr-defined]

    def _on_step(self) -> bool:
        return self.done < self.count


def env_kwargs(args: Args, split: str) -> dict[str, Any]:
    return {
        "model": args.model,
        "task": args.task,
        "task_kwargs": json.loads(args.task_kwargs),
        "split": split,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": args.max_new_tokens,
        "max_turn_tokens": args.max_turn_tokens,
        "max_turns": args.max_turns,
    }


def success_rate(agent: Any, args: Args, seed: int) -> tuple[float, float]:
    """(success rate, mean return) of the first ``eval_episodes`` test episodes, ``num_envs`` at a time."""
    env = gym.make_vec(
        "TextChat-v0",
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        **env_kwargs(args, "test"),
    )
    successes, returns = [], []
    torch.manual_seed(seed)
    for start in range(0, args.eval_episodes, args.num_envs):
        indices = [min(start + row, args.eval_episodes - 1) for row in range(args.num_envs)]
        obs, _ = env.reset(seed=seed, options={"indices": indices})
        state, total = None, np.zeros(args.num_envs)
        finished: dict[int, tuple[bool, float]] = {}
        while len(finished) < args.num_envs:
            actions, state = agent.predict(obs, state=state)
            obs, rewards, terminated, truncated, info = env.step(actions)
            total += rewards
            for row in np.flatnonzero(terminated | truncated).tolist():
                if row not in finished:  # only each row's first episode counts
                    finished[row] = (bool(info["final_info"]["success"][row]), float(total[row]))
            total[terminated | truncated] = 0.0
        for row_index in range(min(args.num_envs, args.eval_episodes - start)):
            successes.append(finished[row_index][0])
            returns.append(finished[row_index][1])
    return float(np.mean(successes)), float(np.mean(returns))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.chat``: every seed's before/after evaluation, and ``summary.json``."""
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.chat", description=__doc__)
    if args.algo not in ALGOS:
        raise SystemExit(f"--algo {args.algo!r} is not known; use one of {', '.join(ALGOS)}")
    entry = ALGOS[args.algo]
    if entry.group_prompts and args.group_size < 2:
        raise SystemExit(f"--algo {args.algo} needs --group-size 2 or more (got {args.group_size}), e.g. 4.")
    group: dict[str, Any] = {"group_size": args.group_size} if entry.group_prompts else {}
    torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        env = gym.make_vec(
            "TextChat-v0",
            num_envs=args.num_envs,
            vectorization_mode="vector_entry_point",
            **env_kwargs(args, "train"),
            **group,
        )
        names = {item.name for item in dataclasses.fields(entry.config_class)}
        extra: dict[str, Any] = {"n_epochs": args.n_epochs} if "n_epochs" in names else {}
        # the KL to the reference: a reward penalty (PPO, REINFORCE), or GRPO's loss term beta
        extra |= {"beta": args.init_kl_coef} if "beta" in names else {"init_kl_coef": args.init_kl_coef}
        agent = entry.agent(
            env,
            model=args.model,
            episodes_per_rollout=args.episodes_per_rollout,
            minibatch_size=args.episodes_per_rollout,
            learning_rate=args.learning_rate,
            seed=seed,
            precision=args.precision,
            **extra,
            **entry.settings,
        )
        before = success_rate(agent, args, seed)
        stop = StopAfterRollouts(args.rollouts)
        agent.learn(total_timesteps=10**9, callback=stop)
        after = success_rate(agent, args, seed)
        runs.append(
            {
                "seed": seed,
                "success_before": before[0],
                "success_after": after[0],
                "return_before": before[1],
                "return_after": after[1],
                "train_return_per_rollout": stop.returns,
                "seconds": time.perf_counter() - start,
            }
        )
        print(json.dumps(runs[-1]), flush=True)
        write_summary(args, runs)  # after every seed, so that a run cut short keeps what it measured
    return write_summary(args, runs)


def write_summary(args: Args, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: the seeds so far, their mean success before and after, the change with 95 % CIs."""
    changes = [run["success_after"] - run["success_before"] for run in runs]
    summary = {
        "env": "TextChat-v0",
        "task": args.task,
        "algo": args.algo,
        "success_before": float(np.mean([run["success_before"] for run in runs])),
        "success_after": float(np.mean([run["success_after"] for run in runs])),
        "success_before_ci95": mean_interval([run["success_before"] for run in runs]),
        "success_after_ci95": mean_interval([run["success_after"] for run in runs]),
        "change": float(np.mean(changes)),
        "change_ci95": mean_interval(changes),
        "runs": runs,
        "settings": {key: str(value) for key, value in dataclasses.asdict(args).items()},
        "provenance": provenance.record(),
    }
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
