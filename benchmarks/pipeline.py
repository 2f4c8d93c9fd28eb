"""DeepSpeed-Chat's recipe in one command: (1) supervised fine-tuning, (2) a reward model, (3) PPO against it.

    python -m benchmarks.pipeline                                   # SmolLM2-135M-Instruct, offline, on CPU
    python -m benchmarks.pipeline --ema-decay 0.992 --ptx-coef 1.0  # step 3 with an EMA actor and PPO-ptx
    python -m benchmarks.pipeline --steps 2,3 --sft-model runs/pipeline/<run>/sft/model
    python -m benchmarks.pipeline --steps 3 --sft-model DIR --reward-model DIR
    python -m benchmarks.pipeline --model tiny-sp --sft-examples 32 ...   # a seconds-long smoke run

The offline default data are the drugs.com reviews (:mod:`rewards.drugs`):

1. **SFT** (:mod:`agents.sft`) of ``--model`` on positive train reviews, split as in the ``drugs-sentiment``
   task (the first half of the words is the prompt, the rest the completion); held out: positive test reviews.
   Headline: held-out perplexity of the completions before and after.
2. **Reward model** (:func:`rewards.fitting.train_preference`): Bradley-Terry on
   :func:`rewards.drugs_preference_pairs` (a review's first half, the positive continuation preferred);
   ``--rm-backbone minilm`` (all-MiniLM-L6-v2) or ``sft`` (step 1's model with a scalar head on its last
   token, as in DeepSpeed-Chat). Headline: pairwise accuracy on the test pairs.
3. **PPO** (:class:`agents.PPO`) of the SFT model on ``TextGen-Preference-v0``'s prompts, rewarded by step 2's
   model, optionally with ``--ema-decay`` and ``--ptx-coef`` (the pretraining mix: all train reviews).
   Headline: mean reward and KL to the SFT model on held-out test prompts, before and after (and of the EMA
   weights), plus the perplexity of held-out human reviews.

Every artefact lands in one run directory (``--run-dir``, default ``runs/pipeline/<time>``)::

    data/            sft_train.jsonl, sft_eval.jsonl, preference_{train,test}.jsonl, ptx.jsonl
    sft/             step 1: model/ (HF), checkpoint/, tensorboard/, metrics.json
    reward_model/    step 2: the saved PreferenceRewardModel;  reward_model_tb/: its TensorBoard run
    ppo/             step 3: TensorBoard run;  policy/ (HF), policy_ema/ (with --ema-decay)
    pipeline.json    every step's metrics, the settings and provenance
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import tyro

import textenv  # registers the envs
from agents import PPO
from agents.sft import SFTConfig, train_sft
from benchmarks import provenance
from benchmarks.budget import make_callbacks, step_cap
from benchmarks.evaluation import evaluate
from infra.cli import check_options
from infra.corpora import drug_review_rows
from infra.storage import atomic_write_text
from rewards.drugs import drugs_preference_pairs
from rewards.encoder import MINILM
from rewards.fitting import TrainConfig, train_preference
from rewards.models import PreferenceRewardModel

STEPS = (1, 2, 3)


@dataclass
class Args:
    """SFT -> reward model -> PPO (DeepSpeed-Chat's three steps) on drugs.com reviews, offline."""

    steps: str = "1,2,3"
    """Which steps to run, comma-separated; a step that does not run takes its input from the flags below."""
    run_dir: str | None = None
    """Directory of every artefact; None: runs/pipeline/<YYYYmmdd-HHMMSS>."""
    model: str = "smollm2-135m-instruct"
    """Step 1's base model (textenv name or HF directory)."""
    sft_model: str | None = None
    """Step 1's output (an HF directory) when step 1 does not run."""
    reward_model: str | None = None
    """Step 2's output (a saved PreferenceRewardModel directory) when step 2 does not run."""
    seed: int = 0
    """Seed of every step."""
    precision: str = "auto"
    """Engine precision of steps 1 and 3: 'auto' (bf16 where native), 'bf16' or 'fp32'."""
    sft_examples: int = 256
    """Positive train reviews fine-tuned on (0: all 315)."""
    sft_eval_examples: int = 64
    """Positive test reviews held out."""
    sft_epochs: int = 1
    """SFT epochs."""
    sft_batch_size: int = 8
    """SFT examples per step."""
    sft_learning_rate: float = 2e-5
    """SFT peak learning rate."""
    sft_max_length: int = 128
    """SFT tokens per example."""
    sft_resume: bool = False
    """Continue step 1 from <run-dir>/sft/checkpoint."""
    rm_backbone: str = "minilm"
    """'minilm' (all-MiniLM-L6-v2) or 'sft' (step 1's model with a scalar head)."""
    rm_pairs: int = 0
    """Train preference pairs (a seeded sample; 0: all)."""
    rm_eval_pairs: int = 0
    """Held-out test pairs (a seeded sample; 0: all)."""
    rm_epochs: int = 1
    """Reward-model epochs."""
    rm_batch_size: int = 16
    """Pairs per reward-model step."""
    ppo_iterations: int = 4
    """PPO iterations (rollout + update)."""
    num_envs: int = 8
    """Environments stepped together in step 3."""
    episodes_per_rollout: int = 16
    """Episodes per PPO iteration."""
    minibatch_size: int = 8
    """Episodes per PPO gradient step."""
    n_epochs: int = 2
    """PPO epochs over each rollout."""
    ppo_learning_rate: float = 1e-5
    """PPO learning rate."""
    max_new_tokens: int = 32
    """Completion length in step 3."""
    ema_decay: float | None = None
    """Keep an EMA of the actor's weights in step 3 (e.g. 0.992); None: no EMA."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of the LM loss on the train reviews in every PPO step (0: off)."""
    eval_prompts: int = 32
    """Held-out test prompts of step 3's before/after evaluation."""
    heldout_texts: int = 32
    """Held-out human reviews whose perplexity under the policy measures drift (0: skip)."""

    def __post_init__(self) -> None:
        positive = "sft_epochs sft_batch_size sft_learning_rate sft_max_length rm_epochs rm_batch_size"
        positive += " ppo_iterations num_envs episodes_per_rollout minibatch_size n_epochs ppo_learning_rate"
        check_options(self, positive=(*positive.split(), "max_new_tokens", "eval_prompts", "ema_decay"))
        if self.ema_decay is not None and self.ema_decay >= 1:
            raise ValueError(f"--ema-decay {self.ema_decay} must be in (0, 1), e.g. --ema-decay 0.992")
        try:
            self.step_list = sorted({int(part) for part in self.steps.split(",") if part.strip()})
        except ValueError:
            raise ValueError(
                f"--steps {self.steps!r} must list step numbers, e.g. '1,2,3' or '2,3'"
            ) from None
        if not self.step_list or not set(self.step_list) <= set(STEPS):
            raise ValueError(f"--steps {self.steps!r} must be step numbers among 1, 2, 3, e.g. '2,3'")
        if self.rm_backbone not in ("minilm", "sft"):
            raise ValueError(f"--rm-backbone {self.rm_backbone!r} is not known; use 'minilm' or 'sft'")
        needs_sft = 3 in self.step_list or (2 in self.step_list and self.rm_backbone == "sft")
        if 1 not in self.step_list and needs_sft and self.sft_model is None:
            raise ValueError(
                f"--steps {self.steps} without step 1 needs --sft-model DIR (the sft/model directory step 1 "
                "wrote, or any HF model directory)"
            )
        if 3 in self.step_list and 2 not in self.step_list and self.reward_model is None:
            raise ValueError(
                f"--steps {self.steps} without step 2 needs --reward-model DIR (the reward_model directory "
                "step 2 wrote)"
            )


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))
    return path


def review_halves(split: str, count: int) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` of the first ``count`` positive reviews of ``split`` (0: all), split in
    half by words as in the ``drugs-sentiment`` task."""
    records = []
    for row in drug_review_rows(split):
        words = row["review"].split()
        half = max(1, len(words) // 2)
        if row["label"] == "positive" and words[half:]:
            records.append({"prompt": " ".join(words[:half]), "completion": " " + " ".join(words[half:])})
    return records[:count] if count else records


def sample(items: list[Any], count: int, seed: int) -> list[Any]:
    """A seeded sample of ``count`` items in their original order (all when ``count`` is 0)."""
    if not count or count >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), count))]


def step_sft(args: Args, root: Path) -> tuple[Path, dict[str, Any]]:
    data = write_jsonl(root / "data" / "sft_train.jsonl", review_halves("train", args.sft_examples))
    held_out = write_jsonl(root / "data" / "sft_eval.jsonl", review_halves("test", args.sft_eval_examples))
    config = SFTConfig(
        epochs=args.sft_epochs,
        batch_size=args.sft_batch_size,
        learning_rate=args.sft_learning_rate,
        max_length=args.sft_max_length,
        precision=args.precision,
        seed=args.seed,
    )
    metrics = train_sft(args.model, data, root / "sft", config, eval_data=held_out, resume=args.sft_resume)
    print(
        f"step 1 SFT: held-out perplexity {metrics['eval_perplexity_before']:.2f} -> "
        f"{metrics['eval_perplexity']:.2f} ({metrics['steps']} steps, {metrics['precision']})"
    )
    return Path(metrics["model_dir"]), {k: v for k, v in metrics.items() if k != "history"}


def step_reward_model(args: Args, root: Path, sft_model: Path | None) -> tuple[Path, dict[str, Any]]:
    train = sample(drugs_preference_pairs("train", seed=args.seed), args.rm_pairs, args.seed)
    test = sample(drugs_preference_pairs("test", seed=args.seed), args.rm_eval_pairs, args.seed)
    for name, triples in (("preference_train", train), ("preference_test", test)):
        records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples]
        write_jsonl(root / "data" / f"{name}.jsonl", records)
    backbone = MINILM if args.rm_backbone == "minilm" else str(sft_model)
    config = TrainConfig(
        base_model=backbone,
        epochs=args.rm_epochs,
        batch_size=args.rm_batch_size,
        seed=args.seed,
        logdir=str(root / "reward_model_tb"),
    )
    start = time.perf_counter()
    precision = args.precision if args.rm_backbone == "sft" else "fp32"  # MiniLM: as the shipped models
    model = train_preference(train, test, config, backbone=backbone, precision=precision)
    path = model.save(root / "reward_model")
    metrics = {
        "pairwise_accuracy": model.metrics["eval_accuracy"],
        **{f"rm_{key}": value for key, value in model.metrics.items()},  # score statistics, train loss
        "train_pairs": len(train),
        "test_pairs": len(test),
        "backbone": backbone,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"step 2 reward model ({args.rm_backbone}): pairwise accuracy {metrics['pairwise_accuracy']:.3f} "
        f"on {len(test)} held-out pairs"
    )
    return Path(path), metrics


def step_ppo(args: Args, root: Path, sft_model: Path, reward_model: Path) -> dict[str, Any]:
    env_kwargs: dict[str, Any] = {"model": str(sft_model), "max_new_tokens": args.max_new_tokens}
    env = gym.make_vec(
        "TextGen-Preference-v0",
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        reward_fn=PreferenceRewardModel.load(reward_model),
        **env_kwargs,
    )
    test_env = gym.make(
        "TextGen-Preference-v0",
        split="test",
        reward_fn=PreferenceRewardModel.load(reward_model),
        **env_kwargs,
    )
    ptx: dict[str, Any] = {}
    if args.ptx_coef > 0:
        texts = [{"text": row["review"]} for row in drug_review_rows("train")]
        ptx = {"ptx_coef": args.ptx_coef, "ptx_dataset": str(write_jsonl(root / "data" / "ptx.jsonl", texts))}
    agent = PPO(
        env,
        model=str(sft_model),
        seed=args.seed,
        tensorboard_log=str(root / "ppo"),
        learning_rate=args.ppo_learning_rate,
        episodes_per_rollout=args.episodes_per_rollout,
        minibatch_size=args.minibatch_size,
        n_epochs=args.n_epochs,
        precision=args.precision,
        ema_decay=args.ema_decay,
        **ptx,
        **textenv.recommended_agent_kwargs(env),
    )
    policy, reference = agent.policy.lm, agent.reference.lm
    settings: dict[str, Any] = {"seed": args.seed, "num_prompts": args.eval_prompts}
    settings["heldout_texts"] = args.heldout_texts
    before = evaluate(policy, reference, test_env, **settings)
    start = time.perf_counter()
    steps = step_cap(args.ppo_iterations, args.episodes_per_rollout, args.num_envs, args.max_new_tokens)
    agent.learn(total_timesteps=steps, callback=make_callbacks(f"{args.ppo_iterations}it", {}))
    seconds = time.perf_counter() - start
    after = evaluate(policy, reference, test_env, **settings)
    agent.export(root / "ppo" / "policy")
    keys = ("reward", "kl_to_reference", "heldout_perplexity", "distinct_2", "completion_tokens")
    metrics: dict[str, Any] = {
        "before": {k: before[k] for k in keys if k in before},
        "after": {k: after[k] for k in keys if k in after},
        "samples": after["_samples"][:2],
        "iterations": args.ppo_iterations,
        "timesteps": agent.num_timesteps,
        "seconds": seconds,
        "precision": agent.precision,
    }
    line = (
        f"step 3 PPO: held-out reward {before['reward']:.3f} -> {after['reward']:.3f}, "
        f"KL to the SFT model {after['kl_to_reference']:.3f}"
    )
    if agent.ema is not None:
        # the EMA is kept in fp32: its KL is measured against the fp32 SFT weights, not the bf16 reference
        ema = evaluate(agent.ema.model, textenv.load_model(str(sft_model)), test_env, **settings)
        metrics["ema"] = {k: ema[k] for k in keys if k in ema}
        agent.export(root / "ppo" / "policy_ema", ema=True)
        line += f"; EMA: reward {ema['reward']:.3f}, KL {ema['kl_to_reference']:.3f}"
    if "heldout_perplexity" in after:
        drift = f"{before['heldout_perplexity']:.2f} -> {after['heldout_perplexity']:.2f}"
        line += f"; held-out review perplexity {drift}"
    print(line)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.pipeline", description=__doc__)
    root = Path(args.run_dir or f"runs/pipeline/{time.strftime('%Y%m%d-%H%M%S')}")
    root.mkdir(parents=True, exist_ok=True)
    sft_model = Path(args.sft_model) if args.sft_model else None
    reward_model = Path(args.reward_model) if args.reward_model else None
    results: dict[str, Any] = {
        "settings": asdict(args),
        "provenance": provenance.record(),
    }
    if 1 in args.step_list:
        sft_model, results["sft"] = step_sft(args, root)
    if 2 in args.step_list:
        reward_model, results["reward_model"] = step_reward_model(args, root, sft_model)
    if 3 in args.step_list:
        assert sft_model is not None and reward_model is not None  # checked in Args
        results["ppo"] = step_ppo(args, root, sft_model, reward_model)
    results["inputs"] = {"sft_model": str(sft_model), "reward_model": str(reward_model)}
    atomic_write_text(root / "pipeline.json", json.dumps(results, indent=2, default=str))
    print(f"artefacts and metrics: {root}  (pipeline.json; TensorBoard: tensorboard --logdir {root})")
    return results


if __name__ == "__main__":
    main()
