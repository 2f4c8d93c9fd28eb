"""Reward throughput: samples/s of each reward at batch 64 on 64-token texts cut from the drugs.com reviews.

    python -m benchmarks.reward_speed                     # all rewards, batch 64, 64 tokens, 2 threads
    python -m benchmarks.reward_speed --only ErrorRate BLEU --batch-size 16 --json speed.json

Completions and references are the first ``--tokens`` MiniLM tokens of different reviews (original
casing); prompts are short instructions. The learned classifier is the cached drugs.com sentiment model when
it has been trained (``rewards.drugs_sentiment_model()``), otherwise the same MiniLM network with an untrained
head, which costs the same. Each reward is called once to warm up (model loading, caches), then timed over
``--repeats`` batches; the embedding similarity's reference cache is cleared before every timed batch, so its
figure is the cold-cache cost. Besides wall-clock samples/s it prints samples per CPU-second of this process
(summed over threads), which other processes on a shared machine disturb less.
Target: the MiniLM-based learned reward scores >= 50 samples/s on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tyro

from benchmarks import provenance
from infra.cli import check_options
from infra.storage import atomic_write_text


@dataclass
class Args:
    """Samples/s of every reward on one batch of drugs.com texts."""

    batch_size: int = 64
    """Samples per reward call."""
    tokens: int = 64
    """MiniLM tokens per completion and reference."""
    repeats: int = 3
    """Timed batches per reward (after one warm-up call)."""
    threads: int = 2
    """torch intra-op threads."""
    only: tuple[str, ...] = ()
    """Benchmark only the rewards whose names contain one of these parts (default: all)."""
    json: str | None = None
    """Also write the results to this JSON file."""

    def __post_init__(self) -> None:
        check_options(self, positive=("batch_size", "tokens", "repeats", "threads"))


def make_batch(batch_size: int, tokens: int) -> tuple[list[str], list[str], list[str]]:
    """Prompts, completions and references; the texts are ``tokens`` MiniLM tokens of drugs.com reviews."""
    from transformers import AutoTokenizer

    from infra.corpora import drug_reviews
    from rewards.encoder import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    reviews = [text for text, _ in drug_reviews("train") + drug_reviews("test")]
    texts = []
    for review in reviews:
        encoded = tokenizer(review, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) >= tokens:
            texts.append(review[: encoded["offset_mapping"][tokens - 1][1]])
        if len(texts) == 2 * batch_size:
            break
    if len(texts) < 2 * batch_size:
        raise ValueError(f"only {len(texts)} reviews have {tokens} tokens; lower --tokens or --batch-size")
    prompts = [f"Write a short review of drug number {index}:" for index in range(batch_size)]
    return prompts, texts[:batch_size], texts[batch_size:]


def rewards_to_time() -> dict[str, Callable]:
    import rewards
    from rewards.drugs import DRUGS_SENTIMENT_CONFIG, drugs_sentiment_path

    classifier = (
        rewards.drugs_sentiment_model()
        if drugs_sentiment_path().is_dir()
        else rewards.ClassifierRewardModel.create(max_length=DRUGS_SENTIMENT_CONFIG.max_length)
    )
    return {
        "ErrorRate(word)": rewards.ErrorRate(),
        "ErrorRate(char)": rewards.ErrorRate(unit="char"),
        "BLEU": rewards.BLEU(),
        "ChrF": rewards.ChrF(),
        "RougeL": rewards.RougeL(),
        "VaderSentiment": rewards.VaderSentiment(),
        "LengthPenalty": rewards.LengthPenalty(),
        "RepetitionPenalty": rewards.RepetitionPenalty(),
        "EmbeddingSimilarity": rewards.EmbeddingSimilarity(),
        "ClassifierRewardModel(MiniLM)": classifier,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.reward_speed", description=__doc__)
    import torch

    torch.set_num_threads(args.threads)
    prompts, completions, references = make_batch(args.batch_size, args.tokens)
    results: dict[str, float] = {}
    cpu_results: dict[str, float] = {}
    load = os.getloadavg()[0]
    print(
        f"batch {args.batch_size}, {args.tokens}-token texts, {args.threads} torch threads, load {load:.1f}"
    )
    print(f"{'reward':32s} {'samples/s':>12s} {'samples/cpu-s':>16s}")
    for name, reward in rewards_to_time().items():
        if args.only and not any(part in name for part in args.only):
            continue
        scores = reward(prompts, completions, references)  # warm-up: loads models
        assert scores.shape == (args.batch_size,) and np.isfinite(scores).all()
        elapsed = cpu = 0.0
        for _ in range(args.repeats):
            if hasattr(reward, "_cache"):
                reward._cache.clear()
            start, start_cpu = time.perf_counter(), time.process_time()
            reward(prompts, completions, references)
            elapsed, cpu = elapsed + time.perf_counter() - start, cpu + time.process_time() - start_cpu
        samples = args.batch_size * args.repeats
        results[name] = samples / elapsed
        cpu_results[name] = samples / cpu
        print(f"{name:32s} {results[name]:12.1f} {cpu_results[name]:16.1f}")
    if args.json:
        report = {"settings": vars(args), "load_average": load, "samples_per_s": results}
        report["provenance"] = provenance.record()
        atomic_write_text(args.json, json.dumps({**report, "samples_per_cpu_s": cpu_results}, indent=2))
    return results


if __name__ == "__main__":
    main()
