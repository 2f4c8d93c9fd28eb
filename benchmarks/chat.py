"""Multi-turn RL on a real chat model: success rate on held-out conversations over training, against the floor
a strategy must beat.

    python -m benchmarks.chat --task guess --algo ppo --seeds 0 1 2   # the README's result, ~15 min

For each seed the model (SmolLM2-135M-Instruct by default) plays the same held-out episodes of the task's test
split (``--eval-split validation`` to choose settings: the validation split; ``--eval-episodes``, episode i in
a fixed order, sampled at temperature 1 under a fixed torch seed) ``--evals`` times: before training, after
it, and spread in between (:mod:`benchmarks.chat_eval`), while it trains for ``--rollouts`` rollouts of
``--episodes-per-rollout`` conversations on ``TextChat-v0``. Each evaluation keeps success, return, agent
turns used and (tasks with tools) tool calls and bad tool calls, per episode; ``eval/*`` goes to TensorBoard
under ``--out``/tensorboard. The **floor** is the best success of a policy that ignores the other party's
turns (the guessing game: distinct random guesses, exact; the same model is also scored with the host's hints
hidden; the calculator task: the same model without the tool, measured). ``summary.json`` (written atomically
under ``--out``, after every seed) holds each seed's evaluations, the training KL to the reference per update,
the mean change with its 95 % t-interval over seeds, and the intervals that treat seeds and episodes both as
random (:func:`benchmarks.metrics.seeds_and_prompts_interval`) for the change and for success after training
minus the floor, with the verdict whether it excludes the floor. Settings are chosen on ``--eval-split
validation`` runs, never on the test episodes' curves; a pilot whose settings were not chosen that way says
so.
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

import textenv  # noqa: F401  (registers the envs)
from agents import ALGORITHMS
from benchmarks import provenance
from benchmarks.chat_eval import (
    FLOOR_EVALS,
    EvalDuringTraining,
    eval_points,
    evaluate,
    interval_summary,
    means,
    task_floor,
)
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
    evals: int = 10
    """Held-out evaluations per run, spread over training (the first before it, the last after it; at most
    one per rollout)."""
    floor_eval: bool = True
    """Also score the model before and after training on the same episodes with the other party's help
    removed (guess: the host's hints hidden; calculator: no tool), its own floor."""
    turn_level_credit: bool = False
    """One advantage per agent turn (agents.turn_credit), not token-level credit (PPO, REINFORCE, GRPO)."""
    turn_gamma: float = 1.0
    """--turn-level-credit: discount per agent turn."""
    turn_baseline: str = "leave_one_out"
    """--turn-level-credit: baseline per turn index, leave_one_out or batch_norm."""
    eval_split: str = "test"
    """The split of the held-out evaluations: test (reported results) or validation (choosing settings)."""
    tensorboard: bool = True
    """Write the training logs and eval/* to TensorBoard under --out/tensorboard."""
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
                "evals",
                "turn_gamma",
            ),
        )
        eval_points(self.rollouts, self.evals)  # a clear error for --evals out of range
        if self.eval_split not in ("test", "validation"):
            raise ValueError(
                f"--eval-split {self.eval_split!r} is not known; use test (reported results) or validation "
                "(to choose settings), e.g. --eval-split validation."
            )


def env_kwargs(args: Args, split: str, **task_kwargs: Any) -> dict[str, Any]:
    """``TextChat-v0``'s arguments for ``split``, with ``task_kwargs`` over ``--task-kwargs``."""
    return {
        "model": args.model,
        "task": args.task,
        "task_kwargs": json.loads(args.task_kwargs) | task_kwargs,
        "split": split,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": args.max_new_tokens,
        "max_turn_tokens": args.max_turn_tokens,
        "max_turns": args.max_turns,
    }


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
    runs = finished_runs(args)
    for seed in args.seeds:
        if any(run["seed"] == seed for run in runs):
            print(f"seed {seed}: finished in {args.out / 'summary.json'}, kept", flush=True)
            continue
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
        if args.turn_level_credit:  # every policy-gradient config has it (agents.config)
            extra |= {
                "turn_level_credit": True,
                "turn_gamma": args.turn_gamma,
                "turn_baseline": args.turn_baseline,
            }
        logs: dict[str, Any] = {"tensorboard_log": str(args.out / "tensorboard")} if args.tensorboard else {}
        agent = entry.agent(
            env,
            model=args.model,
            episodes_per_rollout=args.episodes_per_rollout,
            minibatch_size=args.episodes_per_rollout,
            learning_rate=args.learning_rate,
            seed=seed,
            precision=args.precision,
            **logs,
            **extra,
            **entry.settings,
        )
        runs.append(train_and_evaluate(args, agent, seed) | {"seconds": time.perf_counter() - start})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "evals"}), flush=True)
        write_summary(args, runs)  # after every seed, so that a run cut short keeps what it measured
    return write_summary(args, runs)


def finished_runs(args: Args) -> list[dict[str, Any]]:
    """The seeds of ``args.seeds`` that ``--out``/summary.json already holds from a run with the same settings
    (all but ``--seeds`` and ``--threads``), so that a run cut short resumes at its first unfinished seed. A
    summary from other settings is an error, never overwritten: pick another ``--out``."""
    path = args.out / "summary.json"
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
        settings, runs = old["settings"], old["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SystemExit(f"{path} is not a benchmarks.chat summary ({err}); pick another --out") from err
    ignored = {"seeds", "threads"}
    new = {key: str(value) for key, value in dataclasses.asdict(args).items() if key not in ignored}
    # an option added since the summary was written ran at its default
    default = {item.name: str(item.default) for item in dataclasses.fields(Args)}
    differs = sorted(key for key in new if settings.get(key, default.get(key)) != new[key])
    if differs:
        raise SystemExit(
            f"{path} holds runs with other settings ({', '.join(differs)} differ); pick another --out "
            "or rerun with the same settings to resume"
        )
    return [run for run in runs if run["seed"] in args.seeds]


def train_and_evaluate(args: Args, agent: Any, seed: int) -> dict[str, Any]:
    """One seed's run: ``--evals`` evaluations over ``--rollouts`` rollouts of training (and the floor
    evaluations of :data:`~benchmarks.chat_eval.FLOOR_EVALS` before and after); its summary.json record."""
    test = env_kwargs(args, args.eval_split)
    callback = EvalDuringTraining(
        args.rollouts,
        eval_points(args.rollouts, args.evals),
        lambda: evaluate(agent, test, args.eval_episodes, args.num_envs, seed),
    )
    name, blind_kwargs = FLOOR_EVALS.get(args.task, ("", {}))
    blind = bool(name) and args.floor_eval
    blind_env = env_kwargs(args, args.eval_split, **blind_kwargs)
    blind_before = evaluate(agent, blind_env, args.eval_episodes, args.num_envs, seed) if blind else None
    agent.learn(total_timesteps=10**9, callback=callback)
    callback.finish()
    blind_after = evaluate(agent, blind_env, args.eval_episodes, args.num_envs, seed) if blind else None
    before, after = callback.evals[0], callback.evals[-1]
    run: dict[str, Any] = {
        "seed": seed,
        "success_before": before["success"],
        "success_after": after["success"],
        "return_before": before["return"],
        "return_after": after["return"],
        "turns_before": before["turns"],
        "turns_after": after["turns"],
        "train_return_per_rollout": callback.returns,
        "train_kl_per_rollout": callback.kl.values,
        "train_kl_last": callback.kl.values[-1] if callback.kl.values else None,
    }
    run |= {f"{key}_after": after[key] for key in ("tool_calls", "bad_tool_calls") if key in after}
    if blind_before is not None and blind_after is not None:
        run |= {
            f"success_{name}_before": means(blind_before)["success"],
            f"success_{name}_after": means(blind_after)["success"],
            f"episode_success_{name}_after": blind_after["success"],
        }
    return run | {"evals": callback.evals}


def write_summary(args: Args, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: the seeds so far, their mean success before and after, the change with 95 % CIs
    (over seeds; over seeds and episodes), the floor and success after training minus the floor."""
    changes = [run["success_after"] - run["success_before"] for run in runs]
    after = [run["evals"][-1]["episodes"]["success"] for run in runs]  # (S, P)
    before = [run["evals"][0]["episodes"]["success"] for run in runs]
    floor, floor_note = task_floor(args.task, json.loads(args.task_kwargs), args.max_turns)
    summary: dict[str, Any] = {
        "env": "TextChat-v0",
        "task": args.task,
        "algo": args.algo,
        "credit": "turn" if args.turn_level_credit else "token",
        "eval_split": args.eval_split,
        "success_before": float(np.mean([run["success_before"] for run in runs])),
        "success_after": float(np.mean([run["success_after"] for run in runs])),
        "success_before_ci95": mean_interval([run["success_before"] for run in runs]),
        "success_after_ci95": mean_interval([run["success_after"] for run in runs]),
        "change": float(np.mean(changes)),
        "change_ci95": mean_interval(changes),
        "change_seeds_and_prompts": interval_summary((np.asarray(after) - np.asarray(before)).tolist()),
        "turns_before": float(np.mean([run["turns_before"] for run in runs])),
        "turns_after": float(np.mean([run["turns_after"] for run in runs])),
        "train_kl_last": _mean_of(runs, "train_kl_last"),
        "kl_note": "train_kl_*: the training rollouts' mean per-episode KL to the reference (summed over "
        "agent tokens), logged after each update; the evaluated episodes' KL is not measured",
        "floor": floor,
        "floor_note": floor_note,
        "eval_success_curve": _curve(runs),
    }
    summary |= {
        key: _mean_of(runs, key) for key in ("tool_calls_after", "bad_tool_calls_after") if key in runs[0]
    }
    if floor is not None:
        above = interval_summary((np.asarray(after) - floor).tolist())
        summary["after_minus_floor"] = above
        summary["beats_floor"] = (
            None if above["excludes_zero"] is None else bool(above["ci95_seeds_and_prompts"][0] > 0)
        )
        summary["verdict"] = (
            "one seed: no interval over seeds (run 2 or more)"
            if above["excludes_zero"] is None
            else (
                "beats the floor: the 95 % seeds-and-prompts interval of success after training minus the "
                "floor lies above 0"
            )
            if summary["beats_floor"]
            else "does not beat the floor: the 95 % seeds-and-prompts interval includes or lies below it"
        )
    name = FLOOR_EVALS.get(args.task, ("",))[0]
    if f"episode_success_{name}_after" in runs[0]:  # the model with the other party's help removed
        blind = [run[f"episode_success_{name}_after"] for run in runs]
        summary[f"success_{name}_before"] = _mean_of(runs, f"success_{name}_before")
        summary[f"success_{name}_after"] = _mean_of(runs, f"success_{name}_after")
        summary[f"after_minus_{name}"] = interval_summary((np.asarray(after) - np.asarray(blind)).tolist())
    summary |= {
        "runs": runs,
        "settings": {key: str(value) for key, value in dataclasses.asdict(args).items()},
        "provenance": provenance.record(),
    }
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _mean_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return float(np.mean(values)) if values else None


def _curve(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Mean success (and turns) over seeds at each evaluation point (the seeds share the points)."""
    points = [[(e["rollout"], e["success"], e["turns"]) for e in run["evals"]] for run in runs]
    return [
        {
            "rollout": row[0][0],
            "success": float(np.mean([p[1] for p in row])),
            "turns": float(np.mean([p[2] for p in row])),
        }
        for row in zip(*points, strict=True)
    ]


if __name__ == "__main__":
    main()
