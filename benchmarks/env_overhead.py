"""How much does the environment itself cost next to the model it serves?

Measures, in one run on the same machine:

- the native vector env (``TextGen-v0``, ``vector_entry_point``): seconds per batched token step, averaged
  over whole episodes, so the decoding and the one batched reward call at episode end are included;
- the single env (``gym.make``) per token step, for reference;
- one incremental SmolLM2-135M forward pass at the same batch size with the KV cache.

and prints the ratio env / forward (target: under 5%) as a table and as JSON.

    python -m benchmarks.env_overhead                 # batch 8, 64-token prompts, 48 new tokens
    python -m benchmarks.env_overhead --model tiny-sp --episodes 2 --forward-steps 4   # smoke run
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import cast

import gymnasium as gym
import numpy as np
import torch
import tyro

import textenv
from benchmarks import provenance
from infra.cli import check_options
from infra.storage import atomic_write_text
from textenv.envs import TextGenVectorEnv
from textenv.models import DEFAULT_MODEL, cache_argument, load_model


@dataclass
class Args:
    """The environment's own cost per token step against one incremental forward pass."""

    model: str = DEFAULT_MODEL
    """Model for the forward pass (its tokenizer is used by the env)."""
    num_envs: int = 8
    """Environments (sequences) stepped at once; the forward pass runs at the same batch size."""
    max_prompt_tokens: int = 64
    """Prompt width P."""
    max_new_tokens: int = 48
    """Tokens per episode N."""
    episodes: int = 10
    """Vector-env episodes to time (each is max_new_tokens batched steps)."""
    forward_steps: int = 16
    """Incremental forward passes to time."""
    seed: int = 0
    """Seed for prompts and actions."""
    json: str | None = None
    """Also write the results to this JSON file."""

    def __post_init__(self) -> None:
        check_options(
            self, positive=("num_envs", "max_prompt_tokens", "max_new_tokens", "episodes", "forward_steps")
        )


def time_vector_env(args: Args) -> float:
    """Seconds per batched token step of the native vector env, episode ends and rewards included."""
    envs = gym.make_vec(
        "TextGen-v0",
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        model=args.model,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
    )
    rng = np.random.default_rng(args.seed)
    core = cast(TextGenVectorEnv, envs.unwrapped).core
    eos = core.eos_token_id
    steps = args.episodes * args.max_new_tokens
    actions = rng.integers(0, core.vocab_size, size=(steps, args.num_envs))  # (steps, B)
    actions[actions == eos] = eos + 1  # every episode runs the full N steps
    envs.reset(seed=args.seed)
    envs.step(actions[0])  # warm-up: reward model and tokenizer caches
    start = time.perf_counter()
    for step_actions in actions:
        envs.step(step_actions)
    return (time.perf_counter() - start) / steps


def time_single_env(args: Args) -> float:
    """Seconds per token step of one ``gym.make`` env (with its wrappers)."""
    env = gym.make(
        "TextGen-v0",
        model=args.model,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
    )
    env.reset(seed=args.seed)
    steps = args.episodes * args.max_new_tokens
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(7)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def time_forward(args: Args) -> float:
    """Seconds per incremental forward pass at batch B with a KV cache over a P-token prompt."""
    model = load_model(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (args.num_envs, args.max_prompt_tokens), generator=generator)  # (B, P)
    cache = cache_argument(model)  # the KV cache's argument (and output) name in this transformers version
    out = model(input_ids=prompt, use_cache=True)
    past, token = out[cache], out.logits[:, -1:].argmax(-1)  # token: (B, 1)
    for _ in range(2):  # warm-up
        out = model(input_ids=token, use_cache=True, **{cache: past})
        past = out[cache]
    start = time.perf_counter()
    for _ in range(args.forward_steps):
        out = model(input_ids=token, use_cache=True, **{cache: past})
        past, token = out[cache], out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / args.forward_steps


def main(argv: list[str] | None = None) -> dict[str, float | int | str]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.env_overhead", description=__doc__)
    textenv.load_tokenizer(args.model)  # build caches before timing
    vector_step = time_vector_env(args)
    single_step = time_single_env(args)
    forward = time_forward(args)
    results: dict[str, float | int | str] = {
        **{k: v for k, v in asdict(args).items() if k != "json"},
        "torch_threads": torch.get_num_threads(),
        "vector_env_step_ms": vector_step * 1e3,
        "vector_env_per_sequence_token_us": vector_step / args.num_envs * 1e6,
        "single_env_step_us": single_step * 1e6,
        "forward_step_ms": forward * 1e3,
        "env_over_forward_pct": 100 * vector_step / forward,  # the headline number
    }
    print(f"{'measure':<40}{'value':>14}")
    for key in (
        "vector_env_step_ms",
        "vector_env_per_sequence_token_us",
        "single_env_step_us",
        "forward_step_ms",
        "env_over_forward_pct",
    ):
        print(f"{key:<40}{results[key]:>14.4f}")
    ratio = 100 * vector_step / forward
    verdict = "OK" if ratio < 5 else "OVER TARGET"
    print(f"env cost is {ratio:.2f}% of a batch-{args.num_envs} forward pass (target < 5%): {verdict}")
    print(json.dumps(results))
    if args.json:
        atomic_write_text(args.json, json.dumps({**results, "provenance": provenance.record()}, indent=2))
    return results


if __name__ == "__main__":
    main()
