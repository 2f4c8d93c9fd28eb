"""Quickstart: PPO makes SmolLM2-135M-Instruct continue drugs.com reviews more positively, in ~10 CPU minutes.

    python -m benchmarks.quickstart                      # the default model and task, 10 minutes of training
    python -m benchmarks.quickstart --model tiny-sp --iterations 1 --eval-prompts 4   # a few seconds

It trains :class:`agents.PPO` on ``TextGen-v0`` (task ``drugs-sentiment``: the first half of a real review is
the prompt; reward: VADER sentiment of the continuation, or ``--reward classifier`` for the learned drugs.com
classifier). Before and after training it prints the mean reward on the first ``--eval-prompts`` held-out
test prompts, sampled with the same seed, and finally the command that opens TensorBoard on the run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
import tyro
from stable_baselines3.common.callbacks import BaseCallback

import textenv  # noqa: F401  (registers TextGen-v0)
from agents import PPO
from benchmarks import run
from benchmarks.evaluation import evaluate
from textenv.task_envs import build_reward


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
    max_new_tokens: int = 32
    """Completion length."""
    eval_prompts: int = 32
    """Held-out test prompts scored before and after."""
    seed: int = 0
    """Seed of the agent, the prompt sampler and the evaluation samples."""
    logdir: str = "runs"
    """TensorBoard root; the run lands in <logdir>/TextGen-v0/ppo/seed<k>-<time>/."""


class TimeBudget(BaseCallback):
    """Stops training at the first iteration boundary after ``seconds`` of training."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.new_rollout, self.iterations = seconds, False, 0

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_rollout_start(self) -> None:
        self.new_rollout = True

    def _on_rollout_end(self) -> None:
        self.iterations += 1

    def _on_step(self) -> bool:
        first_step, self.new_rollout = self.new_rollout, False
        return not (first_step and time.perf_counter() - self.start > self.seconds)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.quickstart", description=__doc__)
    torch.manual_seed(args.seed)
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
    )
    policy, reference = agent.policy.lm, agent.reference.lm

    before = evaluate(policy, reference, test_env, seed=args.seed, num_prompts=args.eval_prompts)
    print(f"before training: mean {args.reward} reward {before['reward']:.4f} on {args.eval_prompts} prompts")
    print(f"  sample: {before['_samples'][0]!r}")

    start = time.perf_counter()
    iterations = args.iterations or 10_000
    clock = TimeBudget(float("inf") if args.iterations else args.minutes * 60)  # iterations replace minutes
    budget = [*run.make_callbacks(f"{iterations}it", {}), clock]
    steps = run.step_cap(iterations, args.episodes_per_rollout, args.num_envs, args.max_new_tokens)
    agent.learn(total_timesteps=steps, callback=budget, tb_log_name="ppo", progress_bar=args.iterations > 0)
    minutes = (time.perf_counter() - start) / 60

    after = evaluate(policy, reference, test_env, seed=args.seed, num_prompts=args.eval_prompts)
    print(
        f"after {clock.iterations} PPO iterations ({minutes:.1f} min, {agent.num_timesteps} tokens): "
        f"mean {args.reward} reward {after['reward']:.4f} (was {before['reward']:.4f}), "
        f"KL to the start {after['kl_to_reference']:.3f}"
    )
    print(f"  sample: {after['_samples'][0]!r}")
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the venv's own, also when it is not activated
    print(f"open TensorBoard with:  {tensorboard} --logdir {agent.run_dir}")
    return before["reward"], after["reward"]


if __name__ == "__main__":
    main()
