"""Side by side with TRL: the same task, model, reward, batch and lengths, on the same machine, in one run.

    python -m benchmarks.vs_trl                                   # SmolLM2-135M, sentiment, 10 minutes each
    python -m benchmarks.vs_trl --model tiny-sp --seconds 5 --max-new-tokens 8 --eval-prompts 4   # smoke
    python -m benchmarks.vs_trl --contestants trl-grpo ours-rloo --json runs/grpo_vs_rloo.json

Contestants, each given the same wall-clock budget (``--seconds``; training stops at the first iteration
boundary after it):

- ``trl-grpo``: ``trl.GRPOTrainer`` at its best setting, ``bf16=True`` (also on the CPU, with ``use_cpu``),
  with ``--batch-size`` completions per step in groups of ``--group-size`` per prompt (``num_generations``),
  one gradient step per generation batch, ``beta`` = our KL coefficient, pure sampling (temperature 1, no
  top-k/top-p), prompts left-truncated to ``P`` tokens beforehand (GRPOConfig has no prompt length limit).
- ``trl-grpo-fp32``: the same in fp32.
- ``ours-rloo``: :class:`agents.REINFORCE` with the leave-one-out baseline on the same groups, in
  ``--precision`` (``auto``: bf16 where the hardware runs it natively).
- ``ours-ppo``: :class:`agents.PPO` with ``--batch-size`` episodes per rollout, in ``--precision``.
- ``ours-grpo``: :class:`agents.GRPO` with TRL's own GRPO defaults (``loss_type="dapo"``, group-scaled
  rewards, epsilon 0.2, one pass per batch) and ``beta`` = the KL coefficient, so that speed and held-out
  reward compare like with like.

Reported per contestant: iterations, wall time per iteration (mean, and median: robust to a slow first step
and to other load on the machine), completion tokens per second (generated tokens,
counted up to EOS, over total training wall time: generation plus update), the training reward of the last
iteration and the mean reward on the same held-out test prompts after training, sampled with the same seed by
:func:`benchmarks.evaluation.evaluate`. Written as JSON (``--json``, with the package versions and the
machine) and printed as a markdown table (:func:`benchmarks.report.vs_trl_table`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3.common.callbacks import BaseCallback

from agents import ALGORITHMS
from benchmarks import named_rewards, provenance
from benchmarks.evaluation import evaluate
from benchmarks.logs import LoggedHistory, seconds_per_phase
from benchmarks.report import vs_trl_table
from infra import engine
from infra.cli import check_options
from infra.storage import atomic_write_text
from textenv.models import no_hf_progress_bars
from textenv.task_envs import BENCHMARKS

Contestant = Literal["trl-grpo", "trl-grpo-fp32", "ours-rloo", "ours-ppo", "ours-grpo"]
#: ours-grpo's settings: TRL 1.16's GRPOConfig defaults, which the trl-grpo contestant runs with
TRL_GRPO_DEFAULTS = {"loss_type": "dapo", "scale_rewards": "group", "epsilon": 0.2, "n_epochs": 1}


@dataclass
class Args:
    """TRL's GRPOTrainer and our agents on one task, each for the same wall-clock budget."""

    model: str = "smollm2-135m-instruct"
    """Policy model (textenv name or local HF directory)."""
    task: str = "sentiment"
    """Benchmark task: sentiment, error-rate, similarity or preference."""
    reward: str | None = None
    """Override the task's reward (e.g. 'vader'); None keeps the task's own."""
    seconds: float = 600.0
    """Wall-clock training budget of each contestant."""
    batch_size: int = 16
    """Completions per iteration (TRL: per_device_train_batch_size = generation_batch_size)."""
    group_size: int = 4
    """Completions per prompt (TRL num_generations; our RLOO group)."""
    minibatch_size: int | None = None
    """Our completions per optimizer step; None: --batch-size, one step per iteration as TRL takes (its
    per_device_train_batch_size is the whole batch, without gradient accumulation)."""
    max_new_tokens: int = 48
    """Completion length N."""
    learning_rate: float = 1e-5
    """AdamW learning rate for all."""
    kl_coef: float = 0.05
    """KL coefficient to the reference (TRL beta; our init_kl_coef, fixed)."""
    eval_prompts: int = 32
    """Held-out test prompts scored after training."""
    seed: int = 0
    """Seed of every contestant and of the evaluation samples."""
    contestants: tuple[Contestant, ...] = ("trl-grpo", "trl-grpo-fp32", "ours-rloo", "ours-ppo")
    """The contestants to run, in this order."""
    precision: str = "auto"
    """Our agents' precision: auto (bf16 where native), bf16 or fp32."""
    decode: str = "eager"
    """Our agents' rollout decoding: eager, compiled (a static KV cache, one torch.compile'd step) or auto."""
    keep_freed_memory: bool = True
    """Tune glibc's malloc for every contestant, TRL included, as our agents do on CPU
    (:func:`infra.engine.keep_freed_memory`); with --no-keep-freed-memory nobody gets it."""
    json: str = "runs/vs_trl.json"
    """Where the JSON results go."""

    def __post_init__(self) -> None:
        check_options(
            self,
            positive=(
                "seconds",
                "batch_size",
                "group_size",
                "minibatch_size",
                "max_new_tokens",
                "learning_rate",
                "eval_prompts",
            ),
        )


def env_kwargs(args: Args) -> dict[str, Any]:
    """One env's keyword arguments (each env gets its own reward object)."""
    reward = named_rewards.reward_kwargs(args.task, args.reward)
    return {"model": args.model, "max_new_tokens": args.max_new_tokens} | reward


def finish(
    name: str, precision: str, lm: Any, reference: Any, args: Args, history: list[tuple[float, float, int]]
) -> dict:
    """Summary of a contestant from its per-iteration (elapsed s, mean reward, completion tokens) history."""
    eval_env = gym.make(BENCHMARKS[args.task].env_id, split="test", **env_kwargs(args))
    evaluation = evaluate(lm, reference, eval_env, seed=args.seed, num_prompts=args.eval_prompts)
    seconds = history[-1][0] if history else 0.0
    tokens = sum(h[2] for h in history)
    return {
        "contestant": name,
        "precision": precision,
        "iterations": len(history),
        "seconds": seconds,
        "seconds_per_iteration": seconds / max(1, len(history)),
        "median_seconds_per_iteration": float(np.median(np.diff([0.0] + [h[0] for h in history])))
        if history
        else float("nan"),
        "completion_tokens_per_s": tokens / max(seconds, 1e-9),
        "last_train_reward": history[-1][1] if history else float("nan"),
        "eval_reward": evaluation["reward"],
        "eval_kl_to_reference": evaluation["kl_to_reference"],
        "history": history,
    }


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Run TRL's trainer without the libraries' noise: the FutureWarnings transformers raises about its own
    renames (``gradient_checkpointing`` -> ``activation_checkpointing``, from inside TRL and transformers,
    not from anything we pass) and its "Loading weights" progress bar. Other warnings still show."""
    with warnings.catch_warnings(), no_hf_progress_bars():
        warnings.filterwarnings(
            "ignore", category=FutureWarning, module=r"(transformers|trl|accelerate)(\.|$)"
        )
        yield


def train_trl(args: Args, bf16: bool) -> dict:
    """GRPOTrainer on the task's train prompts (left-truncated to P tokens), stopped after ``seconds``."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    import textenv
    from textenv.models import model_dir
    from textenv.task_envs import benchmark_dataset

    spec = BENCHMARKS[args.task]
    tokenizer = textenv.load_tokenizer(args.model)
    dataset = benchmark_dataset(spec.task, "train")
    prompts = [
        tokenizer.decode(
            tokenizer(e.prompt, add_special_tokens=False)["input_ids"][-spec.max_prompt_tokens :]
        )
        for e in dataset
    ]
    train_data = Dataset.from_dict({"prompt": prompts, "reference": [e.reference or "" for e in dataset]})
    reward_fn = named_rewards.build_reward(args.reward) if args.reward else spec.reward()

    def reward(
        prompts: list[str], completions: list[str], reference: list[str], **_: Any
    ) -> list[float | None]:
        return [float(x) for x in reward_fn(prompts, completions, reference)]

    history: list[tuple[float, float, int]] = []
    budget = args  # the callback's own `args` parameter is TRL's config

    class Clock(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs") or {}
            if "reward" in logs:
                tokens = int(round(logs.get("completions/mean_length", 0.0) * budget.batch_size))
                history.append((time.perf_counter() - self.start, float(logs["reward"]), tokens))
                control.should_training_stop = history[-1][0] >= budget.seconds

    use_gpu = torch.cuda.is_available()
    engine.name_cpu_accelerator()  # DeepSpeed's "Setting accelerator to CPU" warning, through accelerate
    with quiet_libraries():
        config = GRPOConfig(
            output_dir=str(Path(args.json).parent / "trl-grpo"),
            per_device_train_batch_size=args.batch_size,
            generation_batch_size=args.batch_size,
            num_generations=args.group_size,
            max_completion_length=args.max_new_tokens,
            num_iterations=1,
            learning_rate=args.learning_rate,
            beta=args.kl_coef,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_steps=10**6,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not use_gpu,
            bf16=bf16,
            seed=args.seed,
            disable_tqdm=True,
        )
        model = str(model_dir(args.model))  # a local HF directory: TRL builds its reference model from it too
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=train_data,
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        trainer.train()
    lm = trainer.accelerator.unwrap_model(trainer.model)
    reference = textenv.load_model(args.model)
    name, precision = ("trl-grpo", "bf16") if bf16 else ("trl-grpo-fp32", "fp32")
    return finish(name, precision, lm, reference, args, history)


def train_ours(args: Args, algo: str) -> dict:
    """Our agent on the registered benchmark env, stopped after ``seconds``; with its time breakdown
    (``seconds_per_phase``: act, reward, env, score, update, other, summed over the iterations)."""
    spec, entry = BENCHMARKS[args.task], ALGORITHMS[algo]
    kwargs = env_kwargs(args) | ({"group_size": args.group_size} if entry.group_prompts else {})
    env = gym.make_vec(
        spec.env_id, num_envs=args.batch_size, vectorization_mode="vector_entry_point", **kwargs
    )
    settings: dict[str, Any] = {
        "learning_rate": args.learning_rate,
        "episodes_per_rollout": args.batch_size,
        "minibatch_size": args.minibatch_size or args.batch_size,
        "init_kl_coef": args.kl_coef,
        "target_kl_ref": None,
        "decode": args.decode,
        **entry.settings,
    }
    if algo == "grpo":  # the KL is GRPO's loss term, as in TRL
        settings |= TRL_GRPO_DEFAULTS | {"beta": settings.pop("init_kl_coef"), "target_kl_ref": None}
    agent = entry.agent(env, model=args.model, seed=args.seed, precision=args.precision, **settings)
    history: list[tuple[float, float, int]] = []
    logged = LoggedHistory()  # the agent's per-iteration log, for its time breakdown

    class Clock(BaseCallback):
        def _on_training_start(self) -> None:
            self.start, self.tokens = time.perf_counter(), 0
            self.rewards: list[float] = []

        def _on_step(self) -> bool:
            self.tokens += int(self.training_env.num_envs)
            self.rewards += [
                float(r) for r, d in zip(self.locals["rewards"], self.locals["dones"], strict=True) if d
            ]
            return not history or history[-1][0] < args.seconds

        def _on_rollout_start(self) -> None:  # the previous iteration (rollout + update) has finished
            if self.rewards:
                history.append((time.perf_counter() - self.start, float(np.mean(self.rewards)), self.tokens))
            self.rewards, self.tokens = [], 0

    agent.learn(total_timesteps=10**12, callback=[Clock(), Logged(logged)])
    result = finish(f"ours-{algo}", agent.precision, agent.policy.lm, agent.reference.lm, args, history)
    totals = seconds_per_phase(logged.history)
    result["seconds_per_phase"] = {k.removeprefix("time/"): v for k, v in totals.items()}
    return result


class Logged(BaseCallback):
    """Adds ``writer`` to the agent's logger outputs while it trains."""

    def __init__(self, writer: LoggedHistory) -> None:
        super().__init__()
        self.writer = writer

    def _on_training_start(self) -> None:
        self.model.logger.output_formats.append(self.writer)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.model.logger.output_formats.remove(self.writer)


def main(argv: list[str] | None = None) -> list[dict]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.vs_trl", description=__doc__)
    if args.keep_freed_memory:  # process-wide: the same allocator for TRL and for us
        engine.keep_freed_memory()
    else:
        os.environ["TEXTENV_MALLOC_TUNING"] = "0"
    results = []
    for name in args.contestants:
        torch.manual_seed(args.seed)
        if name.startswith("trl-grpo"):
            results.append(train_trl(args, bf16=name == "trl-grpo"))
        else:
            results.append(train_ours(args, name.removeprefix("ours-")))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": dataclasses.asdict(args),
        "results": results,
        "malloc_tuned": engine.keep_freed_memory() if args.keep_freed_memory else False,
        **provenance.record(),
    }
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(vs_trl_table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
