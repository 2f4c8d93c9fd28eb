"""Run a benchmark task with an algorithm over several seeds; every number lands in TensorBoard and JSON.

    python -m benchmarks.run --task sentiment --algo ppo --seeds 0 1 2 --budget 20it

A whole table (every task x algorithm x seed, in worker processes, resumable): :mod:`benchmarks.suite`.

Tasks (``textenv.task_envs``): ``sentiment``, ``error-rate``, ``similarity``, ``preference``.
Algorithms: ``zero-shot`` (the untrained model), ``ppo``, ``reinforce`` (moving-average baseline), ``rloo``
(REINFORCE with a leave-one-out baseline over ``--group-size`` samples per prompt), ``dqn`` (its TD target:
``--dqn-target`` double_q, q_learning, sarsa or expected_sarsa).

Budget: ``--budget 20000`` is env steps, i.e. generated tokens summed over all envs (``total_timesteps``);
``--budget 20it`` is rollout/update iterations of ``--episodes-per-rollout`` episodes each.

Each seed writes ``<logdir>/<env-id>/<algo>/seed<k>-<time>/``: TensorBoard events (the agent's ``rollout/``,
``train/``, ``time/`` scalars; ``rollout/<metric>`` for every side metric of the task on the training
samples, logged each iteration; ``eval/*`` on the fixed test prompts before training and ``--evals`` times
over the budget, the last after training) and ``summary.json`` (the full config, the seed, package versions,
the machine, wall time, the evaluations before and after, and ``eval_history``: every evaluation with its
env steps and the training wall time before it, evaluations excluded).
Evaluation samples ``--eval-prompts`` test prompts (the first ones of the test split) at the task's sampling
temperature (``Benchmark.temperature``, which the rollouts use too; 1.0, pure sampling, unless the task sets
one), with no top-k/top-p, under ``torch.manual_seed(seed)``, so before and after use the same seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tyro

from agents.q_learning import TARGETS as DQN_TARGETS
from agents.sampling import Sampling
from benchmarks.evaluation import evaluate
from benchmarks.provenance import machine, versions
from infra.cli import check_options
from infra.engine import cast_parameters, resolve_precision
from infra.storage import atomic_write_text
from textenv import task_envs
from textenv.task_envs import BENCHMARKS, REWARD_NAMES

ALGOS = ("zero-shot", "ppo", "reinforce", "rloo", "dqn", "soft-dqn")
#: DQN's algorithms (their runs take the --dqn-* options); soft-dqn, DQN with soft Q-learning, is a column
DQN_ALGOS = ("dqn", "soft-dqn")
#: --algo soft-dqn's beta unless --dqn-soft-q-coef sets one: the two-seed similarity pilot's setting
SOFT_DQN_COEF = 0.05


@dataclass
class RunSettings:
    """Every option of a run but its table cell (task, algo, budget); a suite passes them on to its jobs."""

    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds; one run each (seeds the agent, the prompt sampler and the evaluation samples)."""
    model: str = "smollm2-135m-instruct"
    """Policy model: a textenv model name or a local HF directory."""
    reward: str | None = None
    """Override the task's reward (e.g. 'vader' for sentiment); None keeps the task's own."""
    reward_model: str | None = None
    """Preference task: directory of a trained PreferenceRewardModel; None uses (or trains) the cached one."""
    num_envs: int = 16
    """Environments stepped in one batch."""
    episodes_per_rollout: int = 16
    """Finished episodes per iteration (rollout + update)."""
    minibatch_size: int = 8
    """Episodes per gradient step."""
    n_epochs: int = 4
    """ppo: passes over each rollout."""
    learning_rate: float = 1e-5
    """AdamW learning rate."""
    init_kl_coef: float = 0.01
    """KL penalty coefficient against the reference (initial value of the adaptive controller). 0.01, lr 1e-5,
    4 epochs and 16 episodes are the presets the one-seed sweep picked (benchmarks/results/sweep-cpu/)."""
    group_size: int = 4
    """rloo: samples per prompt."""
    dqn_target: str = "double_q"
    """dqn: the TD target: double_q, q_learning, sarsa or expected_sarsa (agents.q_learning defines them)."""
    dqn_dueling: bool = True
    """dqn: Q(s, a) = V(s) + logit(s, a) - max logit(s, .), V from the value head (DQNConfig.dueling);
    --no-dqn-dueling reads the raw logits as Q (the table's DQN runs until 2026-11-26)."""
    dqn_soft_q_coef: float = 0.0
    """dqn: beta > 0 runs soft (KL-regularised) Q-learning instead (DQNConfig.soft_q_coef, agents.soft_q):
    Q = V(s) + beta log(pi / pi_ref), acting with the policy's own samples, no CQL term. With the preset's
    reward_scale 5, beta 0.05 is the KL coefficient 0.01 of the other agents."""
    max_new_tokens: int | None = None
    """Completion length N; None keeps the task's."""
    eval_prompts: int = 64
    """Held-out test prompts evaluated before, during and after training."""
    evals: int = 10
    """Held-out evaluations over the run, evenly spaced over the budget, the last one after training (plus
    one before training); 1 evaluates only before and after. They run under a forked torch RNG, so their
    number does not change the training run."""
    eval_batch_size: int = 16
    """Prompts per generate() call in evaluation."""
    heldout_texts: int = 32
    """Held-out human reviews whose perplexity under the policy measures drift (sentiment, preference)."""
    logdir: str = "runs"
    """Root directory of the runs."""
    precision: str = "auto"
    """The agents' precision: 'auto' (bf16 where the hardware runs it natively), 'bf16' or 'fp32'."""
    threads: int | None = None
    """torch intra-op threads; None keeps torch's default."""
    progress_bar: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_options(self, types_only=True)  # the ranges below, then any option they leave out
        if not self.seeds:
            raise ValueError("--seeds is empty; give at least one seed, e.g. --seeds 0 1 2.")
        seeds = " ".join(map(str, self.seeds))
        if min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds {seeds}: give distinct seeds >= 0, e.g. --seeds 0 1 2.")
        minimums = {
            "num_envs": 1,
            "episodes_per_rollout": 1,
            "minibatch_size": 1,
            "group_size": 1,
            "n_epochs": 1,
        }
        minimums |= {
            "eval_prompts": 1,
            "evals": 1,
            "eval_batch_size": 1,
            "heldout_texts": 0,
            "max_new_tokens": 1,
        }
        for name, minimum in {**minimums, "threads": 1}.items():
            value, flag = getattr(self, name), "--" + name.replace("_", "-")
            if value is not None and value < minimum:  # None (max_new_tokens, threads): the default
                example = getattr(RunSettings, name) or 8
                raise ValueError(f"{flag} {value} must be at least {minimum}, e.g. {flag} {example}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning-rate {self.learning_rate} must be > 0, e.g. --learning-rate 1e-5.")
        if not (math.isfinite(self.init_kl_coef) and self.init_kl_coef >= 0):
            raise ValueError(f"--init-kl-coef {self.init_kl_coef} must be >= 0, e.g. --init-kl-coef 0.05.")
        if self.reward is not None and self.reward not in REWARD_NAMES:
            raise ValueError(f"--reward {self.reward!r} is not known; use one of {', '.join(REWARD_NAMES)}.")
        if self.dqn_target not in DQN_TARGETS:
            choices = ", ".join(DQN_TARGETS)
            raise ValueError(f"--dqn-target {self.dqn_target!r} is not known; use one of {choices}.")
        if not (math.isfinite(self.dqn_soft_q_coef) and self.dqn_soft_q_coef >= 0):
            flag = "--dqn-soft-q-coef"
            raise ValueError(f"{flag} {self.dqn_soft_q_coef} must be >= 0 (0: off), e.g. {flag} 0.05.")
        check_options(self)


@dataclass
class Args(RunSettings):
    """One cell of a benchmark table: --algo trained on --task for --budget, once for each of --seeds."""

    task: str = "sentiment"
    """Benchmark task: sentiment, error-rate, similarity or preference."""
    algo: str = "zero-shot"
    """zero-shot, ppo, reinforce, rloo, dqn or soft-dqn (DQN with soft Q-learning, --dqn-soft-q-coef 0.05
    unless given)."""
    budget: str = "10it"
    """Training budget: '<n>' env steps (generated tokens over all envs) or '<n>it' iterations."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in BENCHMARKS:
            raise ValueError(f"--task {self.task!r} is not known; use one of {', '.join(BENCHMARKS)}.")
        if self.algo not in ALGOS:
            raise ValueError(f"--algo {self.algo!r} is not known; use one of {', '.join(ALGOS)}.")
        if self.algo == "rloo" and self.group_size < 2:
            raise ValueError(
                f"--algo rloo needs --group-size 2 or more (got {self.group_size}): its baseline is the mean "
                "of the other samples of the same prompt. Use e.g. --group-size 4, or --algo reinforce."
            )
        if self.algo == "soft-dqn" and self.dqn_soft_q_coef == 0:
            self.dqn_soft_q_coef = SOFT_DQN_COEF  # recorded in summary.json's args as it ran
        parse_budget(self.budget)


def parse_budget(budget: str) -> tuple[int, str]:
    """``'20000'`` -> ``(20000, 'steps')``; ``'20it'`` -> ``(20, 'iterations')``.

    >>> parse_budget("20it"), parse_budget("4096")
    ((20, 'iterations'), (4096, 'steps'))
    """
    text = budget.strip().lower()
    unit = "iterations" if text.endswith("it") else "steps"
    try:
        value = int(text.removesuffix("it"))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"--budget {budget!r} is not valid; use e.g. 20000 (env steps) or 20it (iterations)."
        )
    return value, unit


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line as :class:`Args` (each field's docstring is its ``--help``)."""
    return tyro.cli(Args, args=argv, prog="python -m benchmarks.run", description=__doc__)


# ---- training -------------------------------------------------------------------------------------------
def agent_class(algo: str) -> Any:
    """The agent class that trains ``algo`` (rloo: REINFORCE with a leave-one-out baseline; soft-dqn: DQN)."""
    import agents

    classes: dict[str, Any] = {
        "ppo": agents.PPO, "reinforce": agents.REINFORCE, "rloo": agents.REINFORCE,
        "dqn": agents.DQN, "soft-dqn": agents.DQN,
    }  # fmt: skip
    return classes[algo]


def step_cap(iterations: int, episodes: int, num_envs: int, max_new_tokens: int) -> int:
    """An env-step bound that ``iterations`` iterations never reach (each collects at most ``episodes`` plus
    ``num_envs`` in-flight episodes of ``max_new_tokens`` tokens), so an iteration budget is what stops
    training and the progress bar has a finite total.

    >>> step_cap(2, 8, 4, 10)
    240
    """
    return iterations * (episodes + num_envs) * max_new_tokens


def make_callbacks(budget: str, metrics: dict[str, Any]) -> list[Any]:
    """Per-iteration side metrics on the training samples, and the iteration budget of ``budget``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RolloutMetrics(BaseCallback):
        """Logs ``rollout/<name>`` (mean over the iteration's finished episodes) for each side metric."""

        def _on_rollout_start(self) -> None:
            self.samples: list[tuple[str, str, str | None]] = []

        def _on_step(self) -> bool:
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
                if done and "completion" in info:
                    self.samples.append((info["prompt"], info["completion"], info.get("reference")))
            return True

        def _on_rollout_end(self) -> None:
            if self.samples:
                prompts, completions, references = map(list, zip(*self.samples, strict=True))
                for name, metric in metrics.items():
                    self.logger.record(
                        f"rollout/{name}", float(np.mean(metric(prompts, completions, references)))
                    )

    class IterationBudget(BaseCallback):
        """Stops training after ``limit`` rollout/update iterations."""

        def __init__(self, limit: int) -> None:
            super().__init__()
            self.limit, self.done = limit, 0

        def _on_rollout_end(self) -> None:
            self.done += 1

        def _on_step(self) -> bool:
            return self.done < self.limit

    limit, unit = parse_budget(budget)
    return [RolloutMetrics()] + ([IterationBudget(limit)] if unit == "iterations" else [])


def periodic_evaluation(budget: str, evals: int, evaluate_now: Callable[[int], Any]) -> Any:
    """A callback that calls ``evaluate_now(num_timesteps)`` at the start of the first rollout after each of
    the fractions ``1/evals, ..., (evals-1)/evals`` of ``budget`` (iterations or env steps) is done, i.e.
    after that many updates; the evaluation after training (fraction 1) is the caller's."""
    from stable_baselines3.common.callbacks import BaseCallback

    limit, unit = parse_budget(budget)

    class PeriodicEvaluation(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.iterations, self.next = 0, 1

        def _on_rollout_start(self) -> None:
            done = self.iterations if unit == "iterations" else self.num_timesteps
            if self.next < evals and done * evals >= self.next * limit:
                evaluate_now(self.num_timesteps)
                while self.next < evals and done * evals >= self.next * limit:  # one per crossing
                    self.next += 1

        def _on_rollout_end(self) -> None:
            self.iterations += 1

        def _on_step(self) -> bool:
            return True

    return PeriodicEvaluation()


def environment(args: Args) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": args.model, "reward": args.reward, "reward_model": args.reward_model}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.algo == "rloo":
        kwargs["group_size"] = args.group_size
    return kwargs


def log_eval(logger: Any, results: dict[str, Any], step: int) -> None:
    for name, value in results.items():
        if not name.startswith("_"):
            logger.record(f"eval/{name}", value)
    logger.dump(step=step)


def claim_run_dir(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``name-2``, ``name-3``... when a run started in the same second
    already has it (two runs never share a directory).

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> [claim_run_dir(root, "seed0-1").name for _ in range(3)]
    ['seed0-1', 'seed0-1-2', 'seed0-1-3']
    """
    parent.mkdir(parents=True, exist_ok=True)
    for count in range(1, 10_000):
        path = parent / (name if count == 1 else f"{name}-{count}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{parent} holds 10,000 runs named {name}*; use another --logdir.")


def run_seed(args: Args, seed: int, command: str = "") -> Path:
    """One run: evaluate, train (unless zero-shot), evaluate again; returns the run directory."""
    from stable_baselines3.common.logger import configure

    import textenv

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    spec = BENCHMARKS[args.task]
    run_dir = claim_run_dir(
        Path(args.logdir) / spec.env_id / args.algo, f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    logger = configure(str(run_dir), ["tensorboard"])
    env_kwargs = environment(args)
    eval_env = gym.make(spec.env_id, split="test", **env_kwargs)
    metrics = task_envs.side_metrics(args.task, args.reward)
    agent, hparams = None, {}
    if args.algo == "zero-shot":  # evaluated in the precision the agents train in, so the columns compare
        lm = reference = textenv.load_model(args.model)
        precision = resolve_precision(args.precision, next(lm.parameters()).device)
        if precision == "bf16":
            lm = reference = cast_parameters(lm, torch.bfloat16)  # as DeepSpeed casts the agents' LM
    else:
        algo = agent_class(args.algo)
        train_env = gym.make_vec(
            spec.env_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point", **env_kwargs
        )
        wanted = {
            "learning_rate": args.learning_rate,
            "episodes_per_rollout": args.episodes_per_rollout,
            "minibatch_size": args.minibatch_size,
            "init_kl_coef": args.init_kl_coef,
            "n_epochs": args.n_epochs,
            "baseline": "rloo" if args.algo == "rloo" else "moving_average",
            "temperature": spec.temperature,  # the task's sampling, as in evaluation
        }
        names = {f.name for f in dataclasses.fields(algo.config_class)}
        settings = {k: v for k, v in wanted.items() if k in names}
        if args.algo in DQN_ALGOS:
            # DQN's preset for a 135M model: a few replay updates per round of episodes, learning from the
            # second round on (so it trains at every budget), target synced every 2 rounds
            preset = algo.config_class.smollm2_sentiment(**settings)
            freq = preset.train_freq[0] if isinstance(preset.train_freq, tuple) else 1
            round_tokens = freq * int(eval_env.get_wrapper_attr("max_new_tokens"))
            warmup = {"learning_starts": round_tokens, "target_update_interval": 2 * round_tokens}
            dqn: dict[str, Any] = {"target": args.dqn_target, "dueling": args.dqn_dueling}
            if args.dqn_soft_q_coef > 0:  # soft Q-learning acts with its policy; log(pi/pi_ref) anchors it
                dqn |= {"soft_q_coef": args.dqn_soft_q_coef, "exploration": "policy", "conservative_coef": 0}
            settings = {"config": dataclasses.replace(preset, **warmup, **dqn)}
        agent = algo(train_env, model=args.model, seed=seed, precision=args.precision, **settings)
        agent.set_logger(logger)
        lm, reference, precision = agent.policy.lm, agent.reference.lm, agent.precision
        hparams = agent._hparams()

    def evaluation() -> dict[str, Any]:
        heldout = args.heldout_texts if spec.heldout_text else 0
        return evaluate(
            lm,
            reference,
            eval_env,
            seed=seed,
            num_prompts=args.eval_prompts,
            batch_size=args.eval_batch_size,
            heldout_texts=heldout,
            metrics=metrics,
            sampling=Sampling(temperature=spec.temperature),
        )

    start, eval_seconds = time.perf_counter(), 0.0
    history: list[dict[str, Any]] = []

    def evaluate_now(timesteps: int) -> dict[str, Any]:
        """Evaluate under a forked RNG (training's random stream is left as it was), log ``eval/*`` at
        ``timesteps``, and keep the point, with the training wall time so far, in ``history``."""
        nonlocal eval_seconds
        began = time.perf_counter()
        trained = began - start - eval_seconds
        with torch.random.fork_rng():
            results = evaluation()
        log_eval(logger, results, step=timesteps)
        eval_seconds += time.perf_counter() - began
        point = {k: v for k, v in results.items() if not k.startswith("_")}
        history.append({"timesteps": timesteps, "train_seconds": trained, **point})
        return results

    before = after = evaluate_now(0)
    timesteps = 0
    if agent is not None:
        budget, unit = parse_budget(args.budget)
        n_new = int(eval_env.get_wrapper_attr("max_new_tokens"))
        callbacks = make_callbacks(args.budget, metrics)
        if args.evals > 1:
            callbacks.append(periodic_evaluation(args.budget, args.evals, evaluate_now))
        agent.learn(
            total_timesteps=budget
            if unit == "steps"
            else step_cap(budget, args.episodes_per_rollout, args.num_envs, n_new),
            callback=callbacks,
            tb_log_name=args.algo,
            progress_bar=args.progress_bar,
        )
        timesteps = agent.num_timesteps
        after = evaluate_now(timesteps)
    logger.close()
    summary = {
        "env_id": spec.env_id,
        "benchmark": dataclasses.asdict(spec),
        "args": dataclasses.asdict(args),
        "seed": seed,
        "agent": hparams,
        "env_kwargs": env_kwargs,
        "timesteps": timesteps,
        "precision": precision,
        "wall_time_s": time.perf_counter() - start,
        "eval_before": before,
        "eval_after": after,
        "eval_history": history,
        "versions": versions(),
        "machine": machine(),
        "command": command,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return run_dir


def run_one(job: Args, seed: int, command: str) -> Path:
    run_dir = run_seed(job, seed, command)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"{job.task} {job.algo} seed {seed}: eval reward {summary['eval_before']['reward']:.4f} -> "
        f"{summary['eval_after']['reward']:.4f} ({summary['wall_time_s']:.0f} s) in {run_dir}",
        flush=True,
    )
    return run_dir


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    command = " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    return [run_one(args, seed, command) for seed in args.seeds]


if __name__ == "__main__":
    main()
