"""Quickstart: PPO makes SmolLM2-135M-Instruct continue drugs.com reviews more positively, in ~10 CPU minutes.

    python -m benchmarks.quickstart                      # the default model and task, 10 minutes of training
    python -m benchmarks.quickstart --model tiny-sp --iterations 1 --eval-prompts 4   # a few seconds

It trains :class:`agents.PPO` on ``TextGen-v0`` (task ``drugs-sentiment``: the first half of a real review is
the prompt; reward: VADER sentiment of the continuation, or ``--reward classifier`` for the learned drugs.com
classifier). Before and after training it prints the mean reward on the first ``--eval-prompts`` held-out
test prompts, sampled with the same seed, and finally the command that opens TensorBoard on the run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import transformers
import tyro
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

import textenv  # noqa: F401  (registers TextGen-v0)
from agents import PPO
from benchmarks import metrics, provenance
from benchmarks.budget import make_callbacks, step_cap
from benchmarks.evaluation import evaluate
from benchmarks.logs import LoggedHistory, seconds_per_phase
from benchmarks.named_rewards import build_reward
from infra.cli import check_options
from infra.storage import atomic_write_text


@dataclass
class Args:
    """PPO on TextGen-v0 with a sentiment reward for a wall-clock budget, evaluated before and after."""

    model: str = "smollm2-135m-instruct"
    """Policy model (textenv name or local HF directory)."""
    reward: str = "vader"
    """'vader' (instant) or 'classifier' (the learned drugs.com sentiment model; trained once, ~10 min)."""
    minutes: float = 10.0
    """Training wall-clock budget; training stops at the first iteration boundary after it."""
    iterations: int = 0
    """If > 0, stop after this many PPO iterations (rollout + update) instead of after --minutes."""
    episodes_per_rollout: int = 16
    """Finished episodes per iteration (rollout + update)."""
    num_envs: int = 16
    """Environments stepped together."""
    minibatch_size: int = 8
    """Episodes per gradient step."""
    n_epochs: int = 2
    """PPO epochs over each rollout."""
    learning_rate: float = 2e-5
    """AdamW learning rate."""
    init_kl_coef: float = 0.01
    """KL penalty coefficient against the reference (the sweep's pick, benchmarks/results/sweep-cpu/)."""
    max_new_tokens: int = 32
    """Completion length."""
    eval_prompts: int = 32
    """Held-out test prompts scored before and after."""
    seed: int = 0
    """Seed of the agent, the prompt sampler and the evaluation samples."""
    precision: str = "auto"
    """The agent's precision: 'auto' (bf16 where the hardware runs it natively), 'bf16' or 'fp32'."""
    decode: str = "eager"
    """Rollout decoding: 'eager', 'compiled' (a static KV cache and one torch.compile'd step) or 'auto'."""
    logdir: str = "runs"
    """TensorBoard root; the run lands in <logdir>/TextGen-v0/ppo/seed<k>-<time>/."""

    def __post_init__(self) -> None:
        check_options(
            self,
            positive=(
                "minutes",
                "episodes_per_rollout",
                "num_envs",
                "minibatch_size",
                "n_epochs",
                "learning_rate",
                "max_new_tokens",
                "eval_prompts",
            ),
        )


class Progress(BaseCallback, LoggedHistory):
    """A progress bar over the training budget (seconds, or iterations with ``--iterations``) that shows the
    iteration, the running reward of the training episodes and the KL to the reference, and stops training at
    the first iteration boundary after the time budget.

    It reads what the agent logs through SB3's logger (it is one more output format of it), so it shows the
    same numbers as TensorBoard's ``rollout/ep_rew_mean`` and ``rollout/kl``.
    """

    def __init__(self, seconds: float, iterations: int) -> None:
        BaseCallback.__init__(self)
        LoggedHistory.__init__(self)  # self.history: what the agent logged, one entry per iteration
        self.seconds, self.limit = seconds, iterations
        self.new_rollout, self.iterations = False, 0
        self.reward: list[float] = []

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()
        by_time = not self.limit
        self.bar = tqdm(
            total=round(self.seconds) if by_time else self.limit,
            unit="s" if by_time else "it",
            desc="PPO iteration 0",
            bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {unit} "
            "[{elapsed}<{remaining}]",
            dynamic_ncols=True,
        )
        self.model.logger.output_formats.append(self)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        LoggedHistory.write(self, key_values, key_excluded, step)
        if "rollout/ep_rew_mean" in key_values:
            self.reward.append(float(key_values["rollout/ep_rew_mean"]))
        status = [f"PPO iteration {self.iterations}"]
        if self.reward:
            status.append(f"reward {np.mean(self.reward[-5:]):.3f}")  # running mean of the last 5 iterations
        if "rollout/kl" in key_values:
            status.append(f"KL {float(key_values['rollout/kl']):.2f}")
        self.bar.set_description_str(" | ".join(status), refresh=False)
        self._advance()

    def _advance(self) -> None:
        done = self.iterations if self.limit else min(self.seconds, time.perf_counter() - self.start)
        self.bar.update(round(done) - self.bar.n)

    def _on_rollout_start(self) -> None:
        self.new_rollout = True

    def _on_rollout_end(self) -> None:
        self.iterations += 1

    def _on_step(self) -> bool:
        first_step, self.new_rollout = self.new_rollout, False
        return not (first_step and time.perf_counter() - self.start > self.seconds)

    def _on_training_end(self) -> None:
        self._advance()
        self.bar.close()
        self.model.logger.output_formats.remove(self)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.quickstart", description=__doc__)
    torch.manual_seed(args.seed)
    transformers.utils.logging.disable_progress_bar()  # the weights load in a second; the bar is noise here
    reward_fn = build_reward(args.reward)
    env_kwargs = {"model": args.model, "reward_fn": reward_fn, "max_new_tokens": args.max_new_tokens}

    # Training environments (native vector env) and one held-out test environment for evaluation.
    env = gym.make_vec(
        "TextGen-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point", **env_kwargs
    )
    test_env = gym.make("TextGen-v0", split="test", **env_kwargs)

    agent = PPO(
        env,
        model=args.model,
        seed=args.seed,
        tensorboard_log=args.logdir,
        learning_rate=args.learning_rate,
        episodes_per_rollout=args.episodes_per_rollout,
        minibatch_size=args.minibatch_size,
        n_epochs=args.n_epochs,
        init_kl_coef=args.init_kl_coef,
        precision=args.precision,
        decode=args.decode,
    )
    policy, reference = agent.policy.lm, agent.reference.lm

    before = evaluate(policy, reference, test_env, seed=args.seed, num_prompts=args.eval_prompts)
    print(f"before training: mean {args.reward} reward {before['reward']:.4f} on {args.eval_prompts} prompts")
    print(f"  sample: {before['_samples'][0]!r}")

    start = time.perf_counter()
    iterations = args.iterations or 10_000
    clock = Progress(float("inf") if args.iterations else args.minutes * 60, args.iterations)
    callbacks = [*make_callbacks(f"{iterations}it", {}), clock]
    steps = step_cap(iterations, args.episodes_per_rollout, args.num_envs, args.max_new_tokens)
    agent.learn(total_timesteps=steps, callback=callbacks, tb_log_name="ppo")
    minutes = (time.perf_counter() - start) / 60

    after = evaluate(policy, reference, test_env, seed=args.seed, num_prompts=args.eval_prompts)
    print(
        f"after {clock.iterations} PPO iterations ({minutes:.1f} min, {agent.num_timesteps} tokens): "
        f"mean {args.reward} reward {after['reward']:.4f} (was {before['reward']:.4f}), "
        f"KL to the start {after['kl_to_reference']:.3f}"
    )
    change = metrics.paired_change(before["_scores"], after["_scores"])
    verdict = "a real gain" if change.low > 0 else "not distinguishable from noise"
    print(f"  held-out change, paired on the same prompts: {change}: {verdict}")
    print(f"  sample: {after['_samples'][0]!r}")
    assert agent.run_dir is not None  # learn() made it under --logdir
    summary_path = agent.run_dir / "summary.json"
    write_summary(summary_path, args, before, after, change, clock.history, minutes, agent.precision)
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the venv's own, also when it is not activated
    print(f"open TensorBoard with:  {tensorboard} --logdir {agent.run_dir}")
    return before["reward"], after["reward"]


def decay(history: list[dict[str, float]], key: str = "time/tokens_per_s", window: int = 10) -> float | None:
    """Mean of ``key`` over the last ``window`` iterations over its mean over the first ``window`` (None
    before ``2 * window`` iterations): 1 means the rollout kept its speed.

    >>> decay([{"time/tokens_per_s": v} for v in [100.0] * 10 + [90.0] * 10])
    0.9
    """
    values = [row[key] for row in history if key in row]
    if len(values) < 2 * window:
        return None
    return round(float(np.mean(values[-window:]) / np.mean(values[:window])), 3)


def write_summary(
    path: Path,
    args: Args,
    before: dict[str, Any],
    after: dict[str, Any],
    change: metrics.PairedChange,
    history: list[dict[str, float]],
    minutes: float,
    precision: str,
) -> None:
    """The run's ``summary.json``: settings, evaluations, the paired change, and per iteration what the
    agent logged (rewards, KL, tokens/s and the time breakdown ``time/*_s``)."""
    summary = {
        "args": dataclasses.asdict(args),
        "precision": precision,
        "training_minutes": round(minutes, 2),
        "iterations": len(history),
        "eval_before": {k: v for k, v in before.items() if k != "_samples"},
        "eval_after": {k: v for k, v in after.items() if k != "_samples"},
        "reward_change": change._asdict(),
        "rollout_last10_over_first10": decay(history),
        "seconds_per_phase": seconds_per_phase(history),
        "history": history,
        **provenance.record(),
    }
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
