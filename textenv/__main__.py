"""Zero-shot demo: sample completions from a model through TextGen-v0 and print their rewards.

    python -m textenv                              # SmolLM2-135M-Instruct on 4 drugs.com test prompts
    python -m textenv --model tiny-sp --task shakespeare --episodes 2 --seed 1

The model picks every token; the environment keeps the observation, ends the episode on EOS or after
``max_new_tokens`` and scores the completion. Each step costs one incremental forward pass (KV cache).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

from infra.cli import check_options
from textenv.models import DEFAULT_MODEL, cache_argument, load_model
from textenv.tasks import DEFAULT_TASK, TASKS


@dataclass
class Args:
    """Zero-shot completions of test prompts through TextGen-v0, with their rewards."""

    model: str = DEFAULT_MODEL
    """Model name or local HF directory."""
    task: str = DEFAULT_TASK
    """Built-in task name."""
    episodes: int = 4
    """Number of test prompts to complete."""
    seed: int = 0
    """Seed for prompt sampling and token sampling."""
    max_new_tokens: int = 48
    """Tokens per completion at most."""
    temperature: float = 0.8
    """Sampling temperature (0 = greedy)."""

    def __post_init__(self) -> None:
        check_options(self, types_only=True)  # the ranges below
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r} is not known; use one of {', '.join(TASKS)}.")
        for flag, value in (("--episodes", self.episodes), ("--max-new-tokens", self.max_new_tokens)):
            if value < 1:
                raise ValueError(f"{flag} {value} must be at least 1, e.g. {flag} 4.")
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed} must be >= 0, e.g. --seed 0.")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature {self.temperature} must be >= 0 (0 is greedy), e.g. 0.8.")


@torch.no_grad()
def run_episode(
    env: gym.Env, model: torch.nn.Module, seed: int, temperature: float, generator: torch.Generator
) -> tuple[dict, float, int]:
    """Generate one completion token by token through ``env``; returns (final info, reward, tokens)."""
    obs, info = env.reset(seed=seed)
    P = int(env.get_wrapper_attr("max_prompt_tokens"))
    prompt = torch.as_tensor(obs["input_ids"][:P][obs["attention_mask"][:P] == 1]).unsqueeze(0)  # (1, T)
    logits_input, past, steps = prompt, None, 0
    cache = cache_argument(model)  # the KV cache's argument (and output) name in this transformers version
    while True:
        out = model(input_ids=logits_input, use_cache=True, **{cache: past})
        logits = out.logits[:, -1, :]  # (1, vocab)
        past = out[cache]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # (1, 1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
        obs, reward, terminated, truncated, info = env.step(np.int64(token.item()))
        steps += 1
        if terminated or truncated:
            return info, float(reward), steps
        logits_input = token


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, prog="python -m textenv", description=__doc__)
    start = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f}s")
    env = gym.make(
        "TextGen-v0", model=args.model, task=args.task, split="test", max_new_tokens=args.max_new_tokens
    )
    generator = torch.Generator().manual_seed(args.seed)
    rewards, tokens, start = [], 0, time.perf_counter()
    for episode in range(args.episodes):
        info, reward, steps = run_episode(env, model, args.seed + episode, args.temperature, generator)
        rewards.append(reward)
        tokens += steps
        print(f"\n--- episode {episode}  reward {reward:+.3f}")
        print(f"prompt:     {info['prompt']}")
        print(f"completion: {info['completion']}")
    elapsed = time.perf_counter() - start
    print(
        f"\nmean reward {np.mean(rewards):+.3f} over {args.episodes} episodes; "
        f"{tokens / elapsed:.1f} tokens/s"
    )


if __name__ == "__main__":
    main()
