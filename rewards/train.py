"""CLI of the reward-model trainers in :mod:`rewards.fitting`.

    python -m rewards.train classifier --out rm/drugs              # drugs.com sentiment (the default data)
    python -m rewards.train classifier --data labelled.jsonl --out rm/mine   # {"text": ..., "label": 0|1}
    python -m rewards.train preference --data triples.jsonl --out rm/pref  # {prompt, chosen, rejected}

Every :class:`rewards.fitting.TrainConfig` field is a flag (``--learning-rate 1e-4``, ``--no-progress-bar``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from rewards.fitting import TrainConfig, train_classifier, train_preference
from rewards.models import ScalarRewardModel


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


@dataclass
class Args:
    """Train a learned reward model and save it."""

    kind: Annotated[Literal["classifier", "preference"], tyro.conf.Positional]
    """classifier: a text -> P(positive) model; preference: a Bradley-Terry model of (prompt, completion)."""
    out: str
    """Directory to save the trained model to."""
    data: str | None = None
    """JSONL of {text, label} (classifier; None: drugs.com reviews) or {prompt, chosen, rejected} lines."""
    eval_data: str | None = None
    """Held-out JSONL in the same format; None: a split of --data (--eval-fraction)."""
    config: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=TrainConfig)
    """Training settings: every TrainConfig field is a flag."""

    def __post_init__(self) -> None:
        if self.kind == "preference" and self.data is None:
            raise ValueError("preference needs --data triples.jsonl with {prompt, chosen, rejected} per line")


def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m rewards.train", description=__doc__)
    config = args.config
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
        assert args.data is not None  # Args checks it
        keys = ["prompt", "chosen", "rejected"]
        evals = read_jsonl(args.eval_data, keys) if args.eval_data else None
        model = train_preference(read_jsonl(args.data, keys), evals, config)
    path = model.save(args.out)
    name = "pairwise accuracy" if args.kind == "preference" else "accuracy"
    print(f"held-out {name}: {model.metrics['eval_accuracy']:.4f}; saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
