"""The accelerator paths in one run: bf16 under ZeRO stages 0, 2 and 3, fp32 beside it, LoRA, Hybrid Engine.

Each case is :mod:`benchmarks.throughput` with its own settings (rollout tokens/s against ``generate()``,
PPO update tokens/s against a bare training step, peak memory), run in a fresh process: every case gets its
own peak-memory counter, and a case that fails or hangs does not stop the others (its return code, error
and last output lines are recorded instead of figures). The cases use torch's AdamW (DeepSpeed's
``torch_adam``), so that no DeepSpeed op has to be compiled first. Usage::

    python -m benchmarks.gpu --json benchmarks/results/gpu.json                  # SmolLM2-135M
    python -m benchmarks.gpu --random-weights-from DIR --json gpu.json          # config + tokenizer only

``--random-weights-from`` takes a model directory without (or ignoring) its weights and runs the same
architecture with seeded random weights: speed and memory do not depend on the weights' values, and the
packaged model may not be available where the accelerator is. On a CPU the same cases run (slowly); the
test suite runs them with a tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from benchmarks import provenance
from infra.cli import check_options
from infra.storage import atomic_write_text

TORCH_ADAM = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}


def _case(precision: str, stage: int, *extra: str, **config: object) -> list[str]:
    """``benchmarks.throughput`` arguments: ``precision``, ZeRO ``stage`` with torch's AdamW, more config keys
    and flags."""
    ds_config = {**TORCH_ADAM, "zero_optimization": {"stage": stage}, **config}
    return ["--precision", precision, "--deepspeed-config", json.dumps(ds_config), *extra]


CASES: dict[str, list[str]] = {
    "zero2-bf16": _case("bf16", 2),
    "zero2-bf16-batch128": _case("bf16", 2, "--num-envs", "128", "--minibatch-size", "32"),
    "zero2-bf16-compiled": _case("bf16", 2, "--decode", "compiled"),
    "zero2-bf16-batch128-compiled": _case(
        "bf16", 2, "--num-envs", "128", "--minibatch-size", "32", "--decode", "compiled"
    ),
    "zero2-fp32": _case("fp32", 2),
    "zero0-bf16": _case("bf16", 0),
    "zero3-bf16": _case("bf16", 3, "--no-baselines"),
    "lora16-bf16": _case("bf16", 2, "--lora-rank", "16"),
    "lora16-bf16-merged": _case("bf16", 2, "--lora-rank", "16", "--rollout-merge-lora"),
    "lora16-zero3-bf16-merged": _case(
        "bf16", 3, "--lora-rank", "16", "--rollout-merge-lora", "--no-baselines"
    ),
    "hybrid-engine-bf16": _case("bf16", 2, hybrid_engine={"enabled": True}),
}
"""Case name -> the extra ``benchmarks.throughput`` arguments of that case."""


@dataclass
class Args:
    """Throughput and memory of the GPU paths (ZeRO stages, fp32 vs bf16, LoRA, Hybrid Engine)."""

    model: str = "smollm2-135m-instruct"
    """Model name (textenv.load_model) or HF directory."""
    random_weights_from: str | None = None
    """A model directory whose config and tokenizer run with seeded random weights (overrides --model)."""
    cases: tuple[str, ...] = tuple(CASES)
    """Which cases to run, in order."""
    num_envs: int = 32
    """Environments stepped at once (= generate() batch)."""
    minibatch_size: int = 8
    """PPO minibatch (episodes per optimizer step)."""
    max_prompt_tokens: int = 64
    max_new_tokens: int = 48
    n_epochs: int = 4
    repeats: int = 2
    case_timeout: float = 180.0
    """Seconds a case may take before it is stopped and recorded as timed out."""
    json: str | None = None
    """Write every case's result (or error) to this JSON file."""
    extra: list[str] = field(default_factory=list)
    """More ``benchmarks.throughput`` arguments for every case."""

    def __post_init__(self) -> None:
        check_options(
            self,
            positive=(
                "num_envs",
                "minibatch_size",
                "max_prompt_tokens",
                "max_new_tokens",
                "n_epochs",
                "repeats",
                "case_timeout",
            ),
        )


def random_weights(source: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> Path:
    """Save ``source``'s architecture with seeded random weights (and its tokenizer) to ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, out = Path(source), Path(out)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"--random-weights-from {source}: no config.json there; pass an HF model directory"
        )
    config = AutoConfig.from_pretrained(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_case(name: str, model: str, args: Args, workdir: Path) -> dict[str, object]:
    """One case in a fresh process; its JSON, or its return code, error line and output tail."""
    out = workdir / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--model",
        model,
        "--num-envs",
        str(args.num_envs),
        "--minibatch-size",
        str(args.minibatch_size),
        "--max-prompt-tokens",
        str(args.max_prompt_tokens),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--n-epochs",
        str(args.n_epochs),
        "--repeats",
        str(args.repeats),
        *CASES[name],
        *args.extra,
        "--json",
        str(out),
    ]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"") + (expired.stderr or b"")
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        return {"status": "timeout", "seconds": args.case_timeout, "output_tail": _tail(text)}
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode != 0 or not out.is_file():
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        return {
            "status": "failed",
            "returncode": done.returncode,
            "error": errors[-1] if errors else None,
            "seconds": seconds,
            "output_tail": _tail(done.stdout + "\n" + done.stderr),
        }
    result = json.loads(out.read_text())
    result.pop("provenance", None)  # once, at the top level
    return {"status": "ok", "seconds": seconds, **result}


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.gpu", description=__doc__)
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    with tempfile.TemporaryDirectory(prefix="textenv-gpu-") as tmp:
        workdir = Path(tmp)
        model = args.model
        if args.random_weights_from is not None:
            model = str(random_weights(args.random_weights_from, workdir / "random-model"))
        results: dict[str, object] = {}
        for name in args.cases:
            results[name] = run_case(name, model, args, workdir)
            print(f"{name}: {json.dumps(results[name])[:400]}", flush=True)
    summary = {
        "model": args.model
        if args.random_weights_from is None
        else f"random weights, {args.random_weights_from}",
        "num_envs": args.num_envs,
        "minibatch_size": args.minibatch_size,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": args.max_new_tokens,
        "n_epochs": args.n_epochs,
        "cases": results,
        "provenance": provenance.record(),
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
