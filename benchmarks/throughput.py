"""Throughput of the agents against the physical limits of the same model, batch and lengths.

Measures in one run:

1. rollout tokens/s through the gym API (TextGen-v0 vector env, PPO's KV-cached stepping) vs
   ``model.generate()`` with its KV cache on the same prompts (target ratio >= 0.9);
2. PPO update tokens/s (``--n-epochs`` epochs over the rollout, reference forward included) vs a bare
   forward + backward + AdamW step of the same LM over the same minibatches, through a DeepSpeed engine in the
   same precision (target ratio >= 0.8);
3. peak resident memory (RSS) of the process.

Where the agent packs its bf16 CPU weights for rollouts (``pack_cpu_weights``, :mod:`agents.packing`), the
rollout is also timed with packing off, alternating with the timed rollouts with it on, so that its speed-up
is a ratio taken in the same run.

Usage::

    python -m benchmarks.throughput --precision bf16 --json t.json   # SmolLM2-135M, batch 8, 64 + 48 tokens
    python -m benchmarks.throughput --model tiny-smollm2 --num-envs 4 --max-new-tokens 8   # smoke run
"""

from __future__ import annotations

import copy
import json
import resource
import time
from dataclasses import dataclass
from typing import cast

import gymnasium as gym
import numpy as np
import torch
import tyro

import textenv  # noqa: F401  (registers the envs)
from agents import PPO, packing
from agents.policy import position_ids_from_mask
from agents.rollout import RolloutBatch
from benchmarks import provenance
from infra import engine
from infra.cli import check_options
from infra.storage import atomic_write_text


@dataclass
class Args:
    """Rollout and update tokens/s of PPO against generate() and a bare training step."""

    model: str = "smollm2-135m-instruct"
    """Model name (textenv.load_model) or HF directory."""
    num_envs: int = 8
    """Environments stepped at once (= generate() batch)."""
    max_prompt_tokens: int = 64
    """P, prompt slots."""
    max_new_tokens: int = 48
    """N, completion slots."""
    minibatch_size: int = 4
    """PPO minibatch (episodes per optimizer step)."""
    n_epochs: int = 4
    """PPO epochs per update (PPOConfig's default); the reference forward is paid once per update."""
    repeats: int = 2
    """Timed repetitions (the best is reported)."""
    threads: int | None = None
    """torch intra-op threads; None keeps torch's default."""
    precision: str = "auto"
    """``auto``, ``bf16`` or ``fp32``: the agent's precision; both baselines run in the same one."""
    deepspeed_config: str | None = None
    """A DeepSpeed config (JSON file or inline JSON) over the agent's defaults, e.g. ZeRO-3 on a GPU."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank on every linear layer instead of all weights (0: full fine-tuning)."""
    rollout_merge_lora: bool = False
    """With ``--lora-rank``: roll out with the adapters merged into a copy of the weights (the agents'
    ``rollout_merge_lora``) instead of through the unmerged adapters."""
    pack_cpu_weights: bool = True
    """The agent's ``pack_cpu_weights`` (bf16 on a CPU: roll out on oneDNN-packed weights)."""
    baselines: bool = True
    """Also time ``generate()`` and the bare training step (off under ZeRO-3: its weights are partitioned)."""
    json: str | None = None
    """Also write the results to this JSON file."""

    def __post_init__(self) -> None:
        check_options(
            self,
            positive=(
                "num_envs",
                "max_prompt_tokens",
                "max_new_tokens",
                "minibatch_size",
                "n_epochs",
                "repeats",
                "threads",
            ),
            signed=("lora_rank",),
        )


def zero_reward(prompts, completions, references=None) -> np.ndarray:
    return np.zeros(len(completions), dtype=np.float32)


def _deepspeed_config(value: str | None) -> str | dict | None:
    """``--deepspeed-config``: inline JSON (starts with ``{``) or a file path, as the agents take it."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"--deepspeed-config is not valid JSON ({error}); pass a JSON object or a file path"
        ) from None


def _lora_config(rank: int) -> object | None:
    if rank < 0:
        raise SystemExit(f"--lora-rank {rank}: give a rank >= 1 for LoRA, or 0 for full fine-tuning")
    if rank == 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)


def peak_memory_gib() -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, peak memory allocated by torch on it, in GiB (the
    one memory unit of every benchmark's output)."""
    peaks = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}  # KiB
    if torch.cuda.is_available():
        peaks["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peaks


def _synchronize() -> None:
    """Wait for queued GPU work before reading a clock (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_generate(agent: PPO, batch: RolloutBatch, args: Args) -> float:
    """Best tokens/s of ``generate()`` (KV cache, pure sampling) on the rollout's prompts."""
    lm, prompt_len = agent.policy.lm, args.max_prompt_tokens
    best = 0.0
    for _ in range(args.repeats):
        _synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = lm.generate(
                input_ids=batch.input_ids[:, :prompt_len],  # (B, P)
                attention_mask=batch.attention_mask[:, :prompt_len],
                max_new_tokens=args.max_new_tokens,
                do_sample=True,
                top_k=0,
                pad_token_id=agent.pad_token_id,
                eos_token_id=agent.eos_token_id,
            )
        _synchronize()
        elapsed = time.perf_counter() - start
        generated = out[:, prompt_len:]  # (B, <=N)
        tokens = int((generated != agent.pad_token_id).sum()) or generated.numel()
        best = max(best, tokens / elapsed)
    return best


def _time_bare_step(agent: PPO, batch: RolloutBatch, tokens: float, args: Args) -> float:
    """Best tokens/s of forward + backward + optimizer step of a copy of the LM, same engine config."""
    bare = engine.initialize(copy.deepcopy(agent.policy.lm), agent.ds_config)
    best = 0.0
    for _ in range(args.repeats):
        _synchronize()
        start = time.perf_counter()
        for first in range(0, len(batch.rewards), args.minibatch_size):
            ids = batch.input_ids[first : first + args.minibatch_size, :-1]  # (b, P+N-1)
            mask = batch.attention_mask[first : first + args.minibatch_size, :-1]
            logits = bare(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                logits_to_keep=args.max_new_tokens,
            ).logits  # (b, N, V)
            loss = torch.log_softmax(logits.float(), -1).mean()
            bare.backward(loss)
            bare.step()
        _synchronize()
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.throughput", description=__doc__)
    ds_config, peft_config = _deepspeed_config(args.deepspeed_config), _lora_config(args.lora_rank)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = gym.make_vec(
        "TextGen-v0",
        num_envs=args.num_envs,
        model=args.model,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        reward_fn=zero_reward,
        vectorization_mode="vector_entry_point",
    )
    agent = PPO(
        env,
        model=args.model,
        episodes_per_rollout=args.num_envs,
        minibatch_size=args.minibatch_size,
        n_epochs=args.n_epochs,
        target_kl=None,
        seed=0,
        precision=args.precision,
        deepspeed_config=ds_config,
        peft_config=peft_config,
        rollout_merge_lora=args.rollout_merge_lora,
        pack_cpu_weights=args.pack_cpu_weights,
    )
    n_new = args.max_new_tokens
    packs = args.pack_cpu_weights and agent.precision == "bf16" and packing.cpu_bf16()
    modes = (True, False) if packs else (args.pack_cpu_weights,)  # packing on, then off (A/B in one run)

    # 1. rollout through the gym API vs generate()
    rollout_tps = dict.fromkeys(modes, 0.0)
    _, callback = agent._setup_learn(total_timesteps=10**9)
    venv = agent.env
    assert venv is not None
    for _ in range(args.repeats):
        for mode in reversed(modes):  # the packed rollout last: its batch is the one the update trains on
            agent.config.pack_cpu_weights = mode
            agent._last_obs = cast("dict[str, np.ndarray]", venv.reset())
            agent._step_cache = type(agent._step_cache)()
            agent.collect_rollouts(venv, callback)
            rollout_tps[mode] = max(rollout_tps[mode], agent.rollout.tokens / agent._rollout_time)
    batch = agent.rollout_batch
    assert batch is not None
    generate_tps = _time_generate(agent, batch, args) if args.baselines else None

    # 2. PPO update (all epochs, reference forward included) vs bare forward + backward + optimizer step
    #    over the same minibatches; tokens/s counts every generated token once per epoch.
    tokens = float(batch.gen_mask.sum())
    agent.config.pack_cpu_weights = args.pack_cpu_weights
    update_tps = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        agent.train()
        _synchronize()
        update_tps = max(update_tps, args.n_epochs * tokens / (time.perf_counter() - start))
    bare_tps = _time_bare_step(agent, batch, tokens, args) if args.baselines else None

    rollout, update = rollout_tps[modes[0]], update_tps
    unpacked = {"rollout_unpacked_tokens_per_s": round(rollout_tps[False], 1)} if packs else {}
    if packs:
        unpacked["packing_rollout_speedup"] = round(rollout / rollout_tps[False], 3)
    result: dict[str, object] = {
        "model": args.model,
        "precision": agent.precision,
        "num_envs": args.num_envs,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": n_new,
        "rollout_tokens_per_s": round(rollout, 1),
        "generate_tokens_per_s": round(generate_tps, 1) if generate_tps else None,
        "rollout_vs_generate": round(rollout / generate_tps, 3) if generate_tps else None,
        "n_epochs": args.n_epochs,
        "ppo_update_tokens_per_s": round(update, 1),
        "bare_train_tokens_per_s": round(bare_tps, 1) if bare_tps else None,
        "update_vs_bare": round(update / bare_tps, 3) if bare_tps else None,
        "pack_cpu_weights": packs,
        **unpacked,
        **peak_memory_gib(),
        "zero_stage": agent.zero_stage,
        "engine": type(agent.engine).__name__,  # DeepSpeedHybridEngine where the Hybrid Engine is on
        "lora_rank": args.lora_rank,
        "rollout_merge_lora": args.rollout_merge_lora,
        "malloc_tuned": engine.keep_freed_memory(),  # applied by the agent's engine, for both sides alike
        "provenance": provenance.record(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
