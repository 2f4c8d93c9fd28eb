"""Memory of the scaling options on CPU: LoRA against full fine-tuning, activation checkpointing, ZeRO stages.

Three parts, each case in a fresh process so that its resident memory (RSS) is its own:

1. ``lora``: a PPO agent on the model, full fine-tuning against LoRA (``peft_config``, adapters on every
   linear layer, the reference = adapters off): weights, reference and optimizer-state bytes, RSS after the
   first update, peak RSS during updates, and tokens/s of rollouts and updates;
2. ``checkpointing``: the activation memory of one forward + backward of the actor-critic (peak RSS above the
   RSS before it) with and without ``gradient_checkpointing``, at ``P + N`` and at ``--long-tokens`` tokens
   per sequence;
3. ``zero``: per rank, with ``torchrun --nproc_per_node 2`` (gloo), ZeRO stages 0 to 3: the weights and the
   optimizer state each rank holds, its RSS after ``deepspeed.initialize`` and its peak during one step.

Peaks are sampled from ``/proc/self/statm`` every 2 ms by a thread (CPU only; Linux). Usage::

    python -m benchmarks.memory                                   # all parts, SmolLM2-135M, JSON to --json
    python -m benchmarks.memory --model tiny-sp --parts lora --in-process --json /tmp/m.json   # smoke run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tyro

import textenv  # noqa: F401  (registers the envs)
from agents import PPO, distributed
from agents.layout import load_lm
from agents.policy import ActorCritic, evaluate_completions
from agents.rollout import RolloutBatch
from benchmarks import provenance
from infra import engine
from infra.cli import check_options
from infra.storage import atomic_write_text

PARTS = ("lora", "checkpointing", "zero")
GIB = 1024**3
"""Bytes per GiB: every memory figure of this script is in GiB."""


@dataclass
class Args:
    """Memory (and tokens/s) of LoRA vs full fine-tuning, activation checkpointing and ZeRO stages 0-3."""

    model: str = "smollm2-135m-instruct"
    """Model name (textenv.load_model) or HF directory."""
    parts: tuple[str, ...] = PARTS
    """Which of ``lora``, ``checkpointing``, ``zero`` to measure."""
    batch: int = 8
    """Episodes per update (one minibatch) and envs in the rollout."""
    prompt_tokens: int = 64
    """P, prompt slots."""
    new_tokens: int = 48
    """N, completion slots (P + N = 112 tokens per sequence by default)."""
    long_tokens: int = 512
    """The longer sequence length of the checkpointing part."""
    long_batch: int = 4
    """Sequences per forward + backward at ``long_tokens``."""
    lora_rank: int = 16
    """LoRA rank r (alpha = 2r) on every linear layer."""
    steps: int = 2
    """Timed updates per LoRA/full case (after one untimed update that allocates the optimizer state)."""
    zero_batch: int = 2
    """Sequences of P + N tokens per rank in the ZeRO step."""
    precision: str = "auto"
    """``auto`` (bf16 where native), ``bf16`` or ``fp32``."""
    threads: int | None = None
    """torch threads per process; None keeps torch's default (the ZeRO ranks use 1 each)."""
    in_process: bool = False
    """Run the cases in this process (smoke runs; RSS then carries over from case to case)."""
    json: str | None = "benchmarks/results/memory-cpu.json"
    """Where to write the results (None: print only)."""
    case: str | None = None
    """Internal: run one case (``lora``, ``full``, ``ckpt-on-112``, ``zero-2``, ...) and write its JSON."""
    case_out: str | None = None
    """Internal: the directory a case writes its JSON into."""

    def __post_init__(self) -> None:
        check_options(
            self,
            positive=(
                "batch",
                "prompt_tokens",
                "new_tokens",
                "long_tokens",
                "long_batch",
                "lora_rank",
                "steps",
                "zero_batch",
                "threads",
            ),
        )


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory inside the block, sampled every 2 ms; ``baseline`` is the RSS on entry."""

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_baseline(self) -> int:
        return self.peak - self.baseline


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def zero_reward(prompts, completions, references=None) -> np.ndarray:
    return np.zeros(len(completions), dtype=np.float32)


def random_batch(agent: PPO, episodes: int) -> RolloutBatch:
    """``episodes`` full-length episodes of random tokens (the update's cost does not depend on the text)."""
    width, n_new = agent.prompt_len + agent.max_new_tokens, agent.max_new_tokens
    ids = torch.randint(4, agent.n_actions, (episodes, width), generator=torch.Generator().manual_seed(0))
    rewards = torch.linspace(-1, 1, episodes)
    token_rewards = torch.zeros(episodes, n_new)
    token_rewards[:, -1] = rewards
    ones = torch.ones(episodes, n_new)
    groups = torch.arange(episodes)
    return RolloutBatch(ids, torch.ones_like(ids), ones, None, None, rewards, groups, token_rewards)


def optimizer_bytes(ds_engine: Any) -> tuple[int, int]:
    """Bytes of the weights a DeepSpeed engine's optimizer steps on this rank, and of its Adam state."""
    inner = ds_engine.optimizer
    flat = getattr(inner, "fp32_partitioned_groups_flat", None)  # ZeRO-3 keeps its fp32 partitions here
    while hasattr(inner, "optimizer"):  # DeepSpeed's ZeRO / bf16 wrappers around the torch optimizer
        inner = inner.optimizer
    stepped = tensor_bytes(flat or (p for group in inner.param_groups for p in group["params"]))
    state = tensor_bytes(t for s in inner.state.values() for t in s.values())
    return stepped, state


def train_case(args: Args, lora: bool) -> dict[str, Any]:
    from peft import LoraConfig
    from stable_baselines3.common.logger import configure

    env = gym.make_vec(
        "TextGen-v0",
        num_envs=args.batch,
        model=args.model,
        max_prompt_tokens=args.prompt_tokens,
        max_new_tokens=args.new_tokens,
        reward_fn=zero_reward,
        vectorization_mode="vector_entry_point",
    )
    peft_config = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear")
    start_rss = rss_bytes()
    agent = PPO(
        env,
        model=args.model,
        episodes_per_rollout=args.batch,
        minibatch_size=args.batch,
        n_epochs=1,
        target_kl=None,
        seed=0,
        precision=args.precision,
        peft_config=peft_config if lora else None,
    )
    _, callback = agent._setup_learn(total_timesteps=10**9)
    assert agent.env is not None
    start = time.perf_counter()
    agent.collect_rollouts(agent.env, callback)
    rollout_tps = agent.rollout.tokens / (time.perf_counter() - start)
    agent.set_logger(configure(None, []))
    agent.rollout_batch = random_batch(agent, args.batch)
    agent.train()  # allocates the optimizer state
    after_first = rss_bytes()
    with PeakRSS() as peak:
        start = time.perf_counter()
        for _ in range(args.steps):
            agent.train()
        elapsed = time.perf_counter() - start
    stepped, state = optimizer_bytes(agent.engine)
    return {
        "trainable_params": sum(p.numel() for p in agent.policy.parameters() if p.requires_grad),
        "policy_weights_gib": tensor_bytes(agent.policy.parameters()) / GIB,
        "reference_weights_gib": tensor_bytes(agent.reference.parameters()) / GIB,
        "optimizer_weights_gib": stepped / GIB,
        "optimizer_state_gib": state / GIB,
        "rss_after_first_update_gib": (after_first - start_rss) / GIB,
        "peak_rss_update_gib": (peak.peak - start_rss) / GIB,
        "rollout_tokens_per_s": rollout_tps,
        "update_tokens_per_s": args.steps * args.batch * args.new_tokens / elapsed,
        "precision": agent.precision,
    }


def checkpointing_case(args: Args, on: bool, tokens: int) -> dict[str, Any]:
    lm = load_lm(args.model)
    precision = engine.resolve_precision(args.precision, torch.device("cpu"))
    model = ActorCritic(lm).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    if on:
        distributed.enable_activation_checkpointing(model.lm)
    batch = args.batch if tokens <= args.prompt_tokens + args.new_tokens else args.long_batch
    vocab = lm.config.vocab_size
    ids = torch.randint(4, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with PeakRSS() as peak:
        start = time.perf_counter()
        ev = evaluate_completions(model, ids, mask, args.new_tokens, vocab, with_entropy=True)
        assert ev.values is not None
        (-ev.logprobs.mean() + ev.values.pow(2).mean()).backward()
        elapsed = time.perf_counter() - start
    return {
        "tokens_per_sequence": tokens,
        "batch": batch,
        "activation_peak_gib": peak.above_baseline / GIB,
        "seconds": elapsed,
        "precision": precision,
    }


def zero_case(args: Args, stage: int, out: Path) -> None:
    """One rank under torchrun: the engine at ``stage``, one step; writes ``zero{stage}_rank{R}.json``."""
    torch.set_num_threads(1)
    start_rss = rss_bytes()
    module = ActorCritic(load_lm(args.model))
    cfg = engine.build_config(
        {"zero_optimization": {"stage": stage}}, 1e-5, 1.0, args.zero_batch, False, args.precision
    )
    ds_engine = engine.initialize(module, cfg)
    after_init = rss_bytes()
    width = args.prompt_tokens + args.new_tokens
    vocab = module.lm.config.vocab_size
    ids = torch.randint(4, vocab, (args.zero_batch, width), generator=torch.Generator().manual_seed(0))
    with PeakRSS() as peak:
        ev = evaluate_completions(ds_engine, ids, torch.ones_like(ids), args.new_tokens, vocab)
        ds_engine.backward(-ev.logprobs.mean())
        ds_engine.step()
    stepped, state = optimizer_bytes(ds_engine)
    facts = {
        "stage": stage,
        "rank": distributed.rank(),
        "module_weights_gib": tensor_bytes(distributed.local_shards(module)) / GIB,
        "optimizer_weights_gib": stepped / GIB,
        "optimizer_state_gib": state / GIB,
        "rss_after_init_gib": (after_init - start_rss) / GIB,
        "peak_rss_step_gib": (peak.peak - start_rss) / GIB,
        "precision": cfg["bf16"]["enabled"] and "bf16" or "fp32",
    }
    (out / f"zero{stage}_rank{distributed.rank()}.json").write_text(json.dumps(facts))
    distributed.barrier()


def run_case(args: Args, case: str) -> dict[str, Any] | None:
    if case in ("lora", "full"):
        return train_case(args, lora=case == "lora")
    if case.startswith("ckpt-"):
        _, state, tokens = case.split("-")
        return checkpointing_case(args, state == "on", int(tokens))
    if case.startswith("zero-"):
        assert args.case_out is not None
        zero_case(args, int(case.split("-")[1]), Path(args.case_out))
        return None
    raise ValueError(f"unknown case {case!r}")


def case_args(args: Args) -> list[str]:
    """The command-line flags that carry ``args`` into a case's process."""
    flags = []
    for key, value in asdict(args).items():
        if key in ("case", "case_out", "json", "parts", "in_process") or value is None:
            continue
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def in_subprocess(args: Args, case: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if case.startswith("zero-"):
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            command = [torchrun, "--nnodes", "1", "--nproc_per_node", "2"]
            command += ["--master_addr", "127.0.0.1", "--master_port", str(engine._free_port())]
            command += ["-m", "benchmarks.memory"]
        else:
            command = [sys.executable, "-m", "benchmarks.memory"]
        command += ["--case", case, "--case-out", tmp, "--json", "None", *case_args(args)]
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(root)}
        if case.startswith("zero-"):
            env["OMP_NUM_THREADS"] = "1"
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key, None)
        subprocess.run(command, check=True, env=env, cwd=root)
        if case.startswith("zero-"):
            return {"ranks": [json.loads(f.read_text()) for f in sorted(Path(tmp).glob("zero*_rank*.json"))]}
        return json.loads((Path(tmp) / f"{case}.json").read_text())


def markdown_table(results: dict[str, Any]) -> str:
    """The README table of a run's ``results`` (the parts that were measured)."""
    rows = ["| case | what | measured |", "|---|---|---|"]
    for case in ("full", "lora"):
        if case in results:
            r = results[case]
            rows.append(
                f"| PPO, {'LoRA r16 all-linear' if case == 'lora' else 'full fine-tuning'} | "
                f"trainable / reference weights / Adam state | {r['trainable_params'] / 1e6:.2f} M / "
                f"{r['reference_weights_gib']:.3f} GiB / {r['optimizer_state_gib']:.3f} GiB |"
            )
            rows.append(
                f"| | RSS after 1st update / peak in updates | {r['rss_after_first_update_gib']:.2f} GiB / "
                f"{r['peak_rss_update_gib']:.2f} GiB |"
            )
            rows.append(
                f"| | rollout / update tokens/s | {r['rollout_tokens_per_s']:.0f} / "
                f"{r['update_tokens_per_s']:.0f} |"
            )
    for case, r in results.items():
        if case.startswith("ckpt-off-") and case.replace("off", "on") in results:
            on = results[case.replace("off", "on")]
            rows.append(
                f"| activations, {r['batch']} x {r['tokens_per_sequence']} tokens | without / with "
                f"checkpointing (time) | {r['activation_peak_gib']:.3f} GiB ({r['seconds']:.1f} s) / "
                f"{on['activation_peak_gib']:.3f} GiB ({on['seconds']:.1f} s) |"
            )
    for case, r in results.items():
        if case.startswith("zero-"):
            rank = r["ranks"][0]
            rows.append(
                f"| ZeRO-{rank['stage']}, 2 ranks | per rank: weights / fp32 master / Adam state; RSS "
                f"after init / peak in a step | {rank['module_weights_gib']:.3f} / "
                f"{rank['optimizer_weights_gib']:.3f} / {rank['optimizer_state_gib']:.3f} GiB; "
                f"{rank['rss_after_init_gib']:.2f} / {rank['peak_rss_step_gib']:.2f} GiB |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.memory", description=__doc__)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--parts {unknown} are not known; use some of {PARTS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case is not None:  # one case in this process (started by the loop below)
        result = run_case(args, args.case)
        if result is not None and args.case_out is not None:
            (Path(args.case_out) / f"{args.case}.json").write_text(json.dumps(result))
        return result or {}
    cases = {
        "lora": ["full", "lora"],
        "checkpointing": [
            f"ckpt-{state}-{tokens}"
            for tokens in (args.prompt_tokens + args.new_tokens, args.long_tokens)
            for state in ("off", "on")
        ],
        "zero": [f"zero-{stage}" for stage in range(4)],
    }
    results: dict[str, Any] = {}
    for part in args.parts:
        for case in cases[part]:
            if args.in_process and not case.startswith("zero-"):
                results[case] = run_case(args, case)
            elif not args.in_process:
                results[case] = in_subprocess(args, case)
            print(case, json.dumps(results.get(case)), flush=True)
    report = {
        "settings": asdict(args),
        "results": results,
        "date": time.strftime("%Y-%m-%d"),
        "provenance": provenance.record(),
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    print(markdown_table(results))
    return report


if __name__ == "__main__":
    main()
