"""CLI of the reward-model trainers in :mod:`rewards.training`.

    python -m rewards.train classifier --output rm/drugs              # drugs.com sentiment (the default data)
    python -m rewards.train classifier --data labelled.jsonl --output rm/mine   # {"text": ..., "label": 0|1}
    python -m rewards.train preference --data triples.jsonl --output rm/pref  # {prompt, chosen, rejected}

Every :class:`rewards.training.TrainConfig` field is a flag (``--learning-rate 1e-4``, ``--no-progress-bar``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards.models import ScalarRewardModel
from rewards.training import TrainConfig, train_classifier, train_preference


def read_jsonl(path: str | Path, keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows of a JSON-lines file as tuples of ``keys``; a missing key names the line."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            missing = [key for key in keys if key not in record]
            if missing:
                raise ValueError(f"{path}:{number} lacks {missing}; each line needs the keys {list(keys)}")
            rows.append(tuple(record[key] for key in keys))
    return rows


def read_labelled(path: str | Path) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels of a JSONL file of ``{"text": ..., "label": ...}``; the label may also be
    ``"positive"``/``"negative"`` or a bool."""
    names: dict[Any, int] = {"positive": 1, "negative": 0, "pos": 1, "neg": 0, True: 1, False: 0}
    rows = read_jsonl(path, ["text", "label"])
    labels = [names.get(label.lower() if isinstance(label, str) else label, label) for _, label in rows]
    return [text for text, _ in rows], labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewards.train", description="Train a learned reward model and save it."
    )
    parser.add_argument("kind", choices=["classifier", "preference"])
    parser.add_argument("--data", help="JSONL: {text, label} (classifier) or {prompt, chosen, rejected}")
    parser.add_argument("--eval-data", help="held-out JSONL in the same format (default: split --data)")
    parser.add_argument("--output", required=True, help="directory to save the trained model to")
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        if item.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=item.default)
        else:
            kind = {"int": int, "float": float}.get(str(item.type).removesuffix(" | None"), str)
            parser.add_argument(flag, type=kind, default=item.default, help=f"default {item.default!r}")
    args = parser.parse_args(argv)
    config = TrainConfig(**{item.name: getattr(args, item.name) for item in dataclasses.fields(TrainConfig)})
    if args.kind == "classifier":
        eval_texts: list[str] | None = None
        eval_labels: list[int] | None = None
        if args.data is None:
            from rewards.drugs import drug_sentiment_data

            texts, labels = drug_sentiment_data("train")
            eval_texts, eval_labels = drug_sentiment_data("test")
        else:
            texts, labels = read_labelled(args.data)
            if args.eval_data:
                eval_texts, eval_labels = read_labelled(args.eval_data)
        model: ScalarRewardModel = train_classifier(texts, labels, eval_texts, eval_labels, config)
    else:
        if args.data is None:
            parser.error("preference needs --data triples.jsonl with {prompt, chosen, rejected} per line")
        keys = ["prompt", "chosen", "rejected"]
        evals = read_jsonl(args.eval_data, keys) if args.eval_data else None
        model = train_preference(read_jsonl(args.data, keys), evals, config)
    path = model.save(args.output)
    name = "pairwise accuracy" if args.kind == "preference" else "accuracy"
    print(f"held-out {name}: {model.metrics['eval_accuracy']:.4f}; saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
