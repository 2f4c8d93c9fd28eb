"""Throughput of the agents against the physical limits of the same model, batch and lengths.

Measures in one run:

1. rollout tokens/s through the gym API (TextGen-v0 vector env, PPO's KV-cached stepping) vs
   ``model.generate()`` with its KV cache on the same prompts (target ratio >= 0.9);
2. PPO update tokens/s (``--n-epochs`` epochs over the rollout, reference forward included) vs a bare
   forward + backward + AdamW step of the same LM over the same minibatches, through a DeepSpeed engine in the
   same precision (target ratio >= 0.8);
3. peak resident memory (RSS) of the process;
4. the roofline of decoding: the rollout's time per decode step (its ``act`` phase per env step: the model's
   forwards, prefills included, and sampling) against the time of the model's linear layers alone at the
   rollout's batch (every ``F.linear`` call of one decode step, recorded by hooks on the ``nn.Linear``
   modules and timed at those shapes): ``decode_vs_linear``; and the bf16 GEMM peak of the device (a 2048^3
   matmul) against the update's GFLOP/s (6 x linear weights x tokens per epoch, plus 2 x for the reference
   forward: an estimate that leaves out attention);
5. eager vs compiled decoding (the agents' ``decode``) side by side, and with ``--scaling`` rollout and
   update tokens/s over batch sizes and completion lengths (``scaling`` in the JSON, plotted by
   :func:`benchmarks.plots.scaling` with ``--plot``).

Where the agent packs its bf16 CPU weights for rollouts (``pack_cpu_weights``, :mod:`agents.packing`), the
rollout is also timed with packing off, alternating with the timed rollouts with it on, so that its speed-up
is a ratio taken in the same run.

Usage::

    python -m benchmarks.throughput --precision bf16 --json t.json   # SmolLM2-135M, batch 8, 64 + 48 tokens
    python -m benchmarks.throughput --model tiny-smollm2 --num-envs 4 --max-new-tokens 8   # smoke run
    python -m benchmarks.throughput --precision bf16 --num-envs 16 --scaling --json t.json --plot scaling.png
"""

from __future__ import annotations

import copy
import dataclasses
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
from agents.decode import Decoder
from agents.policy import position_ids_from_mask
from agents.rollout import RolloutBatch
from benchmarks import plots, provenance
from benchmarks.roofline import gemm_peak_gflops, linear_calls, time_linears
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
    decode: str = "eager"
    """The agent's ``decode`` (``eager``, ``compiled`` or ``auto``), behind ``rollout_tokens_per_s``."""
    compare_decode: bool = True
    """Also time the rollout with the other decode (eager vs compiled side by side, alternating)."""
    scaling: bool = False
    """Also measure rollout and update tokens/s at each of ``--scaling-batches`` (at ``--max-new-tokens``)
    and each of ``--scaling-lengths`` (at ``--num-envs``), one fresh agent per point."""
    scaling_batches: tuple[int, ...] = (8, 16, 32, 64)
    """Batch sizes (envs) of the scaling sweep."""
    scaling_lengths: tuple[int, ...] = (48, 128, 512)
    """Completion lengths N of the scaling sweep."""
    plot: str | None = None
    """With ``--scaling``: write the sweep's figure (PNG) here."""
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


def _timed_rollouts(
    agent: PPO, args: Args, packs: bool
) -> tuple[dict[str, tuple[float, float]], float | None]:
    """Best rollout tokens/s and best seconds per decode step (the ``act`` phase per env step) of each
    variant: the agent's own (``"default"``), unpacked weights and the other decode, alternating; the
    default runs last (its batch is the one the update trains on). A compiled variant is warmed up (compiled)
    by an untimed rollout first; also returns the compiled decoder's compile seconds (None: none ran)."""
    own = agent.decoder
    other = None if own is not None else Decoder()
    variants: dict[str, tuple[bool, Decoder | None]] = {}
    if packs and own is None:
        variants["unpacked"] = (False, None)
    if args.compare_decode:
        variants["compiled" if other is not None else "eager"] = (args.pack_cpu_weights, other)
    variants["default"] = (args.pack_cpu_weights, own)
    _, callback = agent._setup_learn(total_timesteps=10**9)
    venv = agent.env
    assert venv is not None
    best = {name: (0.0, float("inf")) for name in variants}

    def rollout(pack: bool, decoder: Decoder | None) -> None:
        agent.config.pack_cpu_weights, agent.decoder = pack, decoder
        agent._last_obs = cast("dict[str, np.ndarray]", venv.reset())
        agent._step_cache = type(agent._step_cache)()
        agent.collect_rollouts(venv, callback)

    for name, (pack, decoder) in variants.items():
        if (
            decoder is not None
            and name != "default"
            or (decoder is not None and decoder.compile_seconds is None)
        ):
            rollout(pack, decoder)  # compiles
    for _ in range(args.repeats):
        for name, (pack, decoder) in variants.items():
            rollout(pack, decoder)
            steps = agent.rollout.tokens / args.num_envs
            tokens_per_s, step_s = (
                agent.rollout.tokens / agent._rollout_time,
                agent._phase_seconds["act"] / steps,
            )
            best[name] = (max(best[name][0], tokens_per_s), min(best[name][1], step_s))
    agent.decoder = own
    compiled = own if own is not None else (other if args.compare_decode else None)
    return best, None if compiled is None else compiled.compile_seconds


def measure(args: Args) -> dict[str, object]:
    """One run of every measurement of the module docstring (1-5 without the scaling sweep)."""
    ds_config, peft_config = _deepspeed_config(args.deepspeed_config), _lora_config(args.lora_rank)
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
        decode=args.decode,
    )
    n_new = args.max_new_tokens
    packs = (
        args.pack_cpu_weights and agent.precision == "bf16" and packing.cpu_bf16() and agent.decoder is None
    )

    # 1. rollout through the gym API (each variant) vs generate()
    timed, compile_s = _timed_rollouts(agent, args, packs)
    batch = agent.rollout_batch
    assert batch is not None
    generate_tps = _time_generate(agent, batch, args) if args.baselines else None

    # 2. PPO update (all epochs, reference forward included) vs bare forward + backward + optimizer step
    #    over the same minibatches; tokens/s counts every generated token once per epoch.
    tokens = float(batch.gen_mask.sum())
    agent.config.pack_cpu_weights = args.pack_cpu_weights
    update_tps, update_s = 0.0, float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        agent.train()
        _synchronize()
        update_s = min(update_s, time.perf_counter() - start)
        update_tps = max(update_tps, args.n_epochs * tokens / update_s)
    bare_tps = _time_bare_step(agent, batch, tokens, args) if args.baselines else None

    # 4. the roofline: a decode step against its linear layers; the update against the GEMM peak
    calls = linear_calls(agent.actor, args.num_envs, agent.device)
    linear_s = time_linears(calls)
    weights = sum(layer.weight.numel() for layer, _ in calls)
    processed = batch.input_ids.shape[0] * (batch.input_ids.shape[1] - 1)  # tokens per forward over the batch
    update_flops = (6 * args.n_epochs + 2) * weights * processed
    peak = gemm_peak_gflops(agent.device)

    rollout = timed["default"][0]
    decode = "compiled" if agent.decoder is not None else "eager"
    by_decode = {decode: timed["default"]}
    by_decode |= {name: value for name, value in timed.items() if name in ("eager", "compiled")}
    unpacked = (
        {"rollout_unpacked_tokens_per_s": round(timed["unpacked"][0], 1)} if "unpacked" in timed else {}
    )
    if unpacked:
        unpacked["packing_rollout_speedup"] = round(rollout / timed["unpacked"][0], 3)
    both = "eager" in by_decode and "compiled" in by_decode
    return {
        "model": args.model,
        "precision": agent.precision,
        "num_envs": args.num_envs,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": n_new,
        "rollout_tokens_per_s": round(rollout, 1),
        "generate_tokens_per_s": round(generate_tps, 1) if generate_tps else None,
        "rollout_vs_generate": round(rollout / generate_tps, 3) if generate_tps else None,
        "n_epochs": args.n_epochs,
        "ppo_update_tokens_per_s": round(update_tps, 1),
        "bare_train_tokens_per_s": round(bare_tps, 1) if bare_tps else None,
        "update_vs_bare": round(update_tps / bare_tps, 3) if bare_tps else None,
        "pack_cpu_weights": packs,
        **unpacked,
        "decode": decode,
        "rollout_tokens_per_s_by_decode": {name: round(tps, 1) for name, (tps, _) in by_decode.items()},
        "compiled_vs_eager": round(by_decode["compiled"][0] / by_decode["eager"][0], 3) if both else None,
        "decode_compile_s": round(compile_s, 2) if compile_s is not None else None,
        "decode_step_ms_by_decode": {name: round(step * 1e3, 3) for name, (_, step) in by_decode.items()},
        "linear_ms": round(linear_s * 1e3, 3),
        "decode_vs_linear": round(timed["default"][1] / linear_s, 3),
        "decode_vs_linear_by_decode": {
            name: round(step / linear_s, 3) for name, (_, step) in by_decode.items()
        },
        "gemm_peak_gflops": round(peak, 1),
        "update_gflops": round(update_flops / update_s / 1e9, 1),
        "update_vs_peak": round(update_flops / update_s / 1e9 / peak, 3),
        **peak_memory_gib(),
        "zero_stage": agent.zero_stage,
        "engine": type(agent.engine).__name__,  # DeepSpeedHybridEngine where the Hybrid Engine is on
        "lora_rank": args.lora_rank,
        "rollout_merge_lora": args.rollout_merge_lora,
        "malloc_tuned": engine.keep_freed_memory(),  # applied by the agent's engine, for both sides alike
    }


SCALING_KEYS = (
    "rollout_tokens_per_s",
    "ppo_update_tokens_per_s",
    "rollout_tokens_per_s_by_decode",
    "decode_vs_linear",
)


def scaling(args: Args) -> dict[str, list[dict[str, object]]]:
    """Rollout and update tokens/s at each batch of ``args.scaling_batches`` and each completion length of
    ``args.scaling_lengths`` (one fresh agent per point, no baselines, one repeat)."""
    points = {"batch": [(b, args.max_new_tokens) for b in args.scaling_batches]}
    points["length"] = [(args.num_envs, n) for n in args.scaling_lengths]
    sweep: dict[str, list[dict[str, object]]] = {}
    for axis, settings in points.items():
        sweep[axis] = []
        for num_envs, n_new in settings:
            point = dataclasses.replace(
                args,
                num_envs=num_envs,
                max_new_tokens=n_new,
                minibatch_size=min(args.minibatch_size, num_envs),
                baselines=False,
                repeats=1,
                scaling=False,
            )
            result = measure(point)
            sweep[axis].append(
                {"num_envs": num_envs, "max_new_tokens": n_new} | {k: result[k] for k in SCALING_KEYS}
            )
    return sweep


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.throughput", description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if args.scaling:
        result["scaling"] = scaling(args)
        if args.plot:
            plots.scaling(cast("dict[str, list[dict[str, object]]]", result["scaling"]), args.plot)
    result["provenance"] = provenance.record()
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
