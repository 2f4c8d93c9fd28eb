"""Run a benchmark task with an algorithm over several seeds; every number lands in TensorBoard and JSON.

    python -m benchmarks.run --task sentiment --algo ppo --seeds 0 1 2 --budget 20it

A whole table (every task x algorithm x seed, in worker processes, resumable): :mod:`benchmarks.suite`.

Tasks (``textenv.task_envs``): ``sentiment``, ``error-rate``, ``similarity``, ``preference``.
Algorithms: ``zero-shot`` (the untrained model) and the entries of :data:`agents.ALGORITHMS`: ``ppo``,
``reinforce``, ``rloo`` (over ``--group-size`` samples per prompt), ``dqn`` (its TD target: ``--dqn-target``
double_q, q_learning, sarsa or expected_sarsa; lambda-returns: ``--dqn-td-lambda``; its value head:
``--dqn-value-expectile``, ``--dqn-value-lr-scale``) and ``soft-dqn``.

Budget: ``--budget 20000`` is env steps, i.e. generated tokens summed over all envs (``total_timesteps``);
``--budget 20it`` is rollout/update iterations of ``--episodes-per-rollout`` episodes each.

Each seed writes ``<logdir>/<env-id>/<algo>/seed<k>-<time>/``: TensorBoard events (the agent's ``rollout/``,
``train/``, ``time/`` scalars; ``rollout/<metric>`` for every side metric of the task on the training
samples, logged each iteration; ``eval/*`` on the fixed ``--eval-split`` prompts (test unless told; a sweep
evaluates on validation) before training and ``--evals`` times
over the budget, the last after training) and ``summary.json`` (the full config, the seed, package versions,
the git commit, the machine (:func:`benchmarks.provenance.record`), the times, the evaluations before and
after, and ``eval_history``: every evaluation with its env steps and the training wall time before it,
evaluations excluded). Times: ``train_time_s`` is training only (None for zero-shot), ``eval_time_s`` the
held-out evaluations, ``wall_time_s`` both. The evaluations keep every prompt's score (``_scores``), so a
report can treat the test prompts as random too (:func:`benchmarks.metrics.seeds_and_prompts_interval`).
Evaluation samples ``--eval-prompts`` prompts (the first ones of the split) at the task's sampling
temperature (:func:`textenv.recommended_agent_kwargs`, which the rollouts use too; 1.0 unless the task sets
one), with no top-k/top-p, under ``torch.manual_seed(seed)``, so before and after use the same seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import gymnasium as gym
import numpy as np
import torch
import tyro

from agents.algorithms import ALGORITHMS
from agents.dqn import DQNConfig
from agents.q_learning import TARGETS as DQN_TARGETS
from agents.sampling import Sampling
from benchmarks import named_rewards, provenance
from benchmarks.budget import make_callbacks, parse_budget, periodic_evaluation, step_cap
from benchmarks.evaluation import evaluate
from benchmarks.named_rewards import REWARD_NAMES
from infra.cli import check_options
from infra.engine import cast_parameters, resolve_precision
from infra.storage import atomic_write_text
from textenv.task_envs import BENCHMARKS, recommended_agent_kwargs

#: the table's columns: the untrained model, then agents.ALGORITHMS; DQN's take the --dqn-* options
ALGOS = ("zero-shot", *ALGORITHMS)
DQN_ALGOS = tuple(name for name, entry in ALGORITHMS.items() if issubclass(entry.config_class, DQNConfig))
#: soft Q-learning (the soft-dqn entry's settings), which --dqn-soft-q-coef > 0 applies with its own beta
SOFT_Q_SETTINGS = dict(ALGORITHMS["soft-dqn"].settings)
SOFT_DQN_COEF = SOFT_Q_SETTINGS["soft_q_coef"]
ALGO_HELP = "zero-shot: the untrained model; " + "; ".join(f"{k}: {v.summary}" for k, v in ALGORITHMS.items())
#: The splits a run may evaluate on (textenv.tasks.SPLITS but the one it trains on)
EVAL_SPLITS = ("test", "validation")


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
    4 epochs and 16 episodes are the presets the one-seed sweep picked (benchmarks/results/sweep-cpu/). For
    the GRPO family it is ``beta``, the weight of the k3 KL term in the loss."""
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
    dqn_td_lambda: float | None = None
    """dqn: 0 <= lambda <= 1: lambda-returns instead of the preset's 8-step ones (DQNConfig.td_lambda; 1 is
    the Monte Carlo return, with soft Q-learning the path consistency target); None keeps n-step returns."""
    dqn_value_expectile: float | None = None
    """dqn: 0 < tau < 1: V(s) learns on its own expectile loss towards the TD targets, which bootstrap from
    V(s'), and the TD loss reaches only the logits (ILQL; DQNConfig.value_expectile), e.g. 0.7; None: off."""
    dqn_value_lr_scale: float = 1.0
    """dqn: the value head's learning rate is --learning-rate times this (DQNConfig.value_lr_scale), e.g.
    100; 1: the same rate as the LM."""
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
        lam, tau, scale = self.dqn_td_lambda, self.dqn_value_expectile, self.dqn_value_lr_scale
        if lam is not None and not 0 <= lam <= 1:  # NaN too
            flag = "--dqn-td-lambda"
            raise ValueError(f"{flag} {lam} must be in [0, 1] (1: Monte Carlo returns), e.g. {flag} 0.9.")
        if tau is not None and not 0 < tau < 1:
            raise ValueError(
                f"--dqn-value-expectile {tau} must be in (0, 1), e.g. --dqn-value-expectile 0.7."
            )
        if not (math.isfinite(scale) and scale > 0):
            flag = "--dqn-value-lr-scale"
            raise ValueError(f"{flag} {scale} must be > 0 (1: off), e.g. {flag} 100.")
        check_options(self)


@dataclass
class Args(RunSettings):
    """One cell of a benchmark table: --algo trained on --task for --budget, once for each of --seeds."""

    task: str = "sentiment"
    """Benchmark task: sentiment, error-rate, similarity or preference."""
    algo: Annotated[str, tyro.conf.arg(help=ALGO_HELP, metavar="{" + ",".join(ALGOS) + "}")] = "zero-shot"
    """The untrained model or an agents.ALGORITHMS entry (soft-dqn: --dqn-soft-q-coef 0.05 unless given)."""
    budget: str = "10it"
    """Training budget: '<n>' env steps (generated tokens over all envs) or '<n>it' iterations."""
    eval_split: str = "test"
    """The prompts evaluated: 'test' for reported results (the table reads only these), 'validation' to
    choose settings on (benchmarks.sweep always evaluates on it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(
                f"--eval-split {self.eval_split!r} is not known; use test (to report) or validation "
                "(to choose settings on)."
            )
        if self.task not in BENCHMARKS:
            raise ValueError(f"--task {self.task!r} is not known; use one of {', '.join(BENCHMARKS)}.")
        if self.algo not in ALGOS:
            raise ValueError(f"--algo {self.algo!r} is not known; use one of {', '.join(ALGOS)}.")
        if groups_prompts(self.algo) and self.group_size < 2:
            raise ValueError(
                f"--algo {self.algo} needs --group-size 2 or more (got {self.group_size}): its baseline is "
                "the mean of the other samples of its prompt. Use e.g. --group-size 4, or --algo reinforce."
            )
        if self.algo == "soft-dqn" and self.dqn_soft_q_coef == 0:
            self.dqn_soft_q_coef = SOFT_DQN_COEF  # recorded in summary.json's args as it ran
        value_options = self.dqn_value_expectile is not None or self.dqn_value_lr_scale != 1
        if self.algo in DQN_ALGOS and value_options and not self.dqn_dueling and self.dqn_soft_q_coef == 0:
            raise ValueError(
                "--dqn-value-expectile and --dqn-value-lr-scale act on the value head, which raw-logit Q "
                "(--no-dqn-dueling) lacks: drop --no-dqn-dueling, or add e.g. --dqn-soft-q-coef 0.05."
            )
        parse_budget(self.budget)


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line as :class:`Args` (each field's docstring is its ``--help``)."""
    return tyro.cli(Args, args=argv, prog="python -m benchmarks.run", description=__doc__)


# ---- training -------------------------------------------------------------------------------------------
def groups_prompts(algo: str) -> bool:
    """Whether ``algo``'s env repeats each prompt ``--group-size`` times (rloo)."""
    return algo in ALGORITHMS and ALGORITHMS[algo].group_prompts


def environment(args: Args) -> dict[str, Any]:
    """The run's env settings as summary.json records them (:func:`make_env_kwargs` makes the reward)."""
    kwargs: dict[str, Any] = {"model": args.model, "reward": args.reward, "reward_model": args.reward_model}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if groups_prompts(args.algo):
        kwargs["group_size"] = args.group_size
    return kwargs


def make_env_kwargs(args: Args) -> dict[str, Any]:
    """The keyword arguments of one env of the run: :func:`environment` with its own reward object."""
    settings = environment(args)
    reward, reward_model = settings.pop("reward"), settings.pop("reward_model")
    return settings | named_rewards.reward_kwargs(args.task, reward, reward_model)


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
    eval_env = gym.make(spec.env_id, split=args.eval_split, **make_env_kwargs(args))
    metrics = named_rewards.side_metrics(args.task, args.reward)
    agent, hparams = None, {}
    if args.algo == "zero-shot":  # evaluated in the precision the agents train in, so the columns compare
        lm = reference = textenv.load_model(args.model)
        precision = resolve_precision(args.precision, next(lm.parameters()).device)
        if precision == "bf16":
            lm = reference = cast_parameters(lm, torch.bfloat16)  # as DeepSpeed casts the agents' LM
    else:
        entry = ALGORITHMS[args.algo]
        train_env = gym.make_vec(spec.env_id, args.num_envs, "vector_entry_point", **make_env_kwargs(args))
        wanted = {
            "learning_rate": args.learning_rate,
            "episodes_per_rollout": args.episodes_per_rollout,
            "minibatch_size": args.minibatch_size,
            "init_kl_coef": args.init_kl_coef,
            "n_epochs": args.n_epochs,
            **recommended_agent_kwargs(spec.env_id),  # the task's sampling, as in evaluation
        }
        names = {f.name for f in dataclasses.fields(entry.config_class)}
        if "beta" in names:  # GRPO's KL to the reference is a loss term (k3): --init-kl-coef sets its beta
            wanted["beta"] = wanted.pop("init_kl_coef")
        settings = {k: v for k, v in wanted.items() if k in names}
        if args.algo not in DQN_ALGOS:
            settings |= entry.settings  # e.g. rloo's baseline; soft-dqn's go into the DQN config below
        else:
            # DQN's preset for a 135M model: a few replay updates per round of episodes, learning from the
            # second round on (so it trains at every budget), target synced every 2 rounds
            preset = DQNConfig.smollm2_sentiment(**settings)
            freq = preset.train_freq[0] if isinstance(preset.train_freq, tuple) else 1
            round_tokens = freq * int(eval_env.get_wrapper_attr("max_new_tokens"))
            dqn: dict[str, Any] = {"target": args.dqn_target, "dueling": args.dqn_dueling}
            dqn |= {"td_lambda": args.dqn_td_lambda, "value_expectile": args.dqn_value_expectile}
            dqn |= {"value_lr_scale": args.dqn_value_lr_scale}
            dqn |= {"learning_starts": round_tokens, "target_update_interval": 2 * round_tokens}  # warm-up
            if args.dqn_soft_q_coef > 0:  # soft Q-learning acts with its policy; log(pi/pi_ref) anchors it
                dqn |= SOFT_Q_SETTINGS | {"soft_q_coef": args.dqn_soft_q_coef}
            settings = {"config": dataclasses.replace(preset, **dqn)}
        agent = entry.agent(train_env, model=args.model, seed=seed, precision=args.precision, **settings)
        agent.set_logger(logger)
        lm, reference, precision = agent.policy.lm, agent.reference.lm, agent.precision
        hparams = agent._hparams()

    def evaluation() -> dict[str, Any]:
        heldout = args.heldout_texts if named_rewards.task_report(args.task).heldout_text else 0
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
    total_seconds = time.perf_counter() - start
    summary = {
        "env_id": spec.env_id,
        "benchmark": named_rewards.benchmark_record(args.task),
        "args": dataclasses.asdict(args),
        "seed": seed,
        "agent": hparams,
        "env_kwargs": env_kwargs,
        "timesteps": timesteps,
        "precision": precision,
        "wall_time_s": total_seconds,
        "train_time_s": total_seconds - eval_seconds if agent is not None else None,
        "eval_time_s": eval_seconds,
        "eval_before": before,
        "eval_after": after,
        "eval_history": history,
        **provenance.record(),
        "command": command,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return run_dir


def run_one(job: Args, seed: int, command: str) -> Path:
    run_dir = run_seed(job, seed, command)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"{job.task} {job.algo} seed {seed}: eval reward {summary['eval_before']['reward']:.4f} -> "
        f"{summary['eval_after']['reward']:.4f} ({summary['wall_time_s']:.0f} s with evaluations) "
        f"in {run_dir}",
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
