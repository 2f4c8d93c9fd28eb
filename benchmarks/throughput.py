"""Throughput of the agents against the physical limits of the same model, batch and lengths.

Measures in one run:

1. rollout tokens/s through the gym API (TextGen-v0 vector env, PPO's KV-cached stepping) vs
   ``model.generate()`` with its KV cache on the same prompts (target ratio >= 0.9);
2. PPO update tokens/s (``--n-epochs`` epochs over the rollout, reference forward included) vs a bare
   forward + backward + AdamW step of the same LM over the same minibatches, through a DeepSpeed engine in the
   same precision (target ratio >= 0.8);
3. peak resident memory (RSS) of the process.

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
from agents import PPO
from agents.policy import position_ids_from_mask
from benchmarks import provenance
from rewards import engine
from rewards.storage import atomic_write_text


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
    json: str | None = None
    """Also write the results to this JSON file."""


def zero_reward(prompts, completions, references=None) -> np.ndarray:
    return np.zeros(len(completions), dtype=np.float32)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.throughput", description=__doc__)
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
    )
    lm, n_new = agent.policy.lm, args.max_new_tokens

    # 1. rollout through the gym API vs generate()
    rollout_tps = 0.0
    _, callback = agent._setup_learn(total_timesteps=10**9)
    venv = agent.env
    assert venv is not None
    for _ in range(args.repeats):
        agent._last_obs = cast("dict[str, np.ndarray]", venv.reset())
        agent._step_cache = type(agent._step_cache)()
        agent.collect_rollouts(venv, callback)
        rollout_tps = max(rollout_tps, agent.rollout.tokens / agent._rollout_time)
    batch = agent.rollout_batch
    assert batch is not None
    prompt_ids = batch.input_ids[:, : args.max_prompt_tokens]  # (B, P)
    prompt_mask = batch.attention_mask[:, : args.max_prompt_tokens]
    generate_tps = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = lm.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=n_new,
                do_sample=True,
                top_k=0,
                pad_token_id=agent.pad_token_id,
                eos_token_id=agent.eos_token_id,
            )
        elapsed = time.perf_counter() - start
        generated = out[:, args.max_prompt_tokens :]  # (B, <=N)
        tokens = int((generated != agent.pad_token_id).sum()) or generated.numel()
        generate_tps = max(generate_tps, tokens / elapsed)

    # 2. PPO update (all epochs, reference forward included) vs bare forward + backward + optimizer step
    #    over the same minibatches; tokens/s counts every generated token once per epoch.
    tokens = float(batch.gen_mask.sum())
    update_tps = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        agent.train()
        update_tps = max(update_tps, args.n_epochs * tokens / (time.perf_counter() - start))
    bare_tps = 0.0
    bare = engine.initialize(copy.deepcopy(lm), agent.ds_config)  # same DeepSpeed config and precision
    for _ in range(args.repeats):
        start = time.perf_counter()
        for first in range(0, len(batch.rewards), args.minibatch_size):
            ids = batch.input_ids[first : first + args.minibatch_size, :-1]  # (b, P+N-1)
            mask = batch.attention_mask[first : first + args.minibatch_size, :-1]
            logits = bare(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                logits_to_keep=n_new,
            ).logits  # (b, N, V)
            loss = torch.log_softmax(logits.float(), -1).mean()
            bare.backward(loss)
            bare.step()
        bare_tps = max(bare_tps, tokens / (time.perf_counter() - start))

    result = {
        "model": args.model,
        "precision": agent.precision,
        "num_envs": args.num_envs,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": n_new,
        "rollout_tokens_per_s": round(rollout_tps, 1),
        "generate_tokens_per_s": round(generate_tps, 1),
        "rollout_vs_generate": round(rollout_tps / generate_tps, 3),
        "n_epochs": args.n_epochs,
        "ppo_update_tokens_per_s": round(update_tps, 1),
        "bare_train_tokens_per_s": round(bare_tps, 1),
        "update_vs_bare": round(update_tps / bare_tps, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "malloc_tuned": engine.keep_freed_memory(),  # applied by the agent's engine, for both sides alike
        "provenance": {"versions": provenance.versions(), "machine": provenance.machine()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
