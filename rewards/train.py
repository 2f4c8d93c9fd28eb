"""CLI of the reward-model trainers in :mod:`rewards.fitting`.

    python -m rewards.train classifier --out rm/drugs              # drugs.com sentiment (the default data)
    python -m rewards.train classifier --data labelled.jsonl --out rm/mine   # {"text": ..., "label": 0|1}
    python -m rewards.train preference --data triples.jsonl --out rm/pref  # {prompt, chosen, rejected}

Every :class:`rewards.fitting.TrainConfig` field is a flag (``--learning-rate 1e-4``, ``--no-progress-bar``).
Data that cannot be trained on (a bad line, no examples, one class only, too few to hold some out) ends the
command with exit status 1 and a message that names the problem (and the file and line), not a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from rewards.fitting import TrainConfig, TrainingDataError, train_classifier, train_preference
from rewards.models import ScalarRewardModel
from rewards.storage import jsonl_objects


def read_records(
    path: str | Path, keys: Sequence[str], text_keys: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, each with ``"where"`` (``file:line``) added. A bad line (not JSON,
    not an object, a missing key of ``keys``, a value of ``text_keys`` that is not a string) raises
    :class:`TrainingDataError` naming the file and line."""
    if not Path(path).is_file():
        raise TrainingDataError(f"{path} is not a file; pass the path of a JSONL file")
    records = []
    example = "{" + ", ".join(f'"{key}": ...' for key in keys) + "}"
    for where, record in jsonl_objects(path, example, TrainingDataError):
        missing = [key for key in keys if key not in record]
        if missing:
            raise TrainingDataError(f"{where} lacks {missing}; each line needs the keys {list(keys)}")
        for key in text_keys:
            if not isinstance(record[key], str):
                raise TrainingDataError(
                    f"{where}: {key!r} is {type(record[key]).__name__}, expected a string"
                )
        records.append({**record, "where": where})
    return records


def read_jsonl(path: str | Path, keys: Sequence[str], text_keys: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """Rows of a JSON-lines file as tuples of ``keys`` (see :func:`read_records` for the checks)."""
    return [tuple(record[key] for key in keys) for record in read_records(path, keys, text_keys)]


LABEL_NAMES = {"positive": 1, "negative": 0, "pos": 1, "neg": 0, "1": 1, "0": 0, "true": 1, "false": 0}


def read_labelled(path: str | Path) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels of a JSONL file of ``{"text": ..., "label": ...}``; the label may also be
    ``"positive"``/``"negative"`` or a bool. Another label raises :class:`TrainingDataError` naming the
    line."""
    texts, labels = [], []
    for record in read_records(path, ["text", "label"], text_keys=["text"]):
        label = record["label"]
        value = LABEL_NAMES.get(label.lower()) if isinstance(label, str) else label
        if isinstance(value, (bool, int, float)) and value in (0, 1):
            texts.append(record["text"])
            labels.append(int(value))
        else:
            raise TrainingDataError(
                f"{record['where']}: label {label!r} is not a class; use 1 or 0, true or false, "
                'or "positive" or "negative"'
            )
    return texts, labels


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
    try:
        model = fit_model(args)
    except TrainingDataError as error:
        raise SystemExit(f"python -m rewards.train: error: {error}") from None
    path = model.save(args.out)
    name = "pairwise accuracy" if args.kind == "preference" else "accuracy"
    print(f"held-out {name}: {model.metrics['eval_accuracy']:.4f}; saved to {path}")
    return 0


def fit_model(args: Args) -> ScalarRewardModel:
    """Read the data of ``args`` and train the model (not saved)."""
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
        evals = read_jsonl(args.eval_data, keys, keys) if args.eval_data else None
        model = train_preference(read_jsonl(args.data, keys, keys), evals, config)
    return model


if __name__ == "__main__":
    sys.exit(main())
