"""CLI of the reward-model trainers in :mod:`rewards.fitting`.

    python -m rewards.train classifier --out rm/drugs              # drugs.com sentiment (the default data)
    python -m rewards.train classifier --data labelled.jsonl --out rm/mine   # {"text": ..., "label": 0|1}
    python -m rewards.train preference --data triples.jsonl --out rm/pref  # {prompt, chosen, rejected}
    python -m rewards.train preference --backbone sft_out/ --data prefs.jsonl --out rm/lm --precision auto
    torchrun --nproc_per_node 2 -m rewards.train preference --data prefs.jsonl --out rm/pref  # 2 processes

Every :class:`rewards.fitting.TrainConfig` field is a flag (``--learning-rate 1e-4``, ``--no-progress-bar``);
``--backbone`` (alias of ``--base-model``) takes MiniLM or a local HF directory, a causal LM included (an SFT
output, an exported policy). ``--deepspeed-config`` and ``--precision`` are the agents' settings. Under a
launcher every process trains its share of each batch and rank 0 saves and prints.
Data that cannot be trained on (a bad line, no examples, one class only, too few to hold some out) ends the
command with exit status 1 and a message that names the problem (and the file and line), not a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from infra.storage import jsonl_objects
from rewards.encoder import MINILM
from rewards.fitting import TrainConfig, TrainingDataError, Triple, train_classifier, train_preference
from rewards.models import ScalarRewardModel


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


PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


def read_preference_log(path: str | Path) -> tuple[list[Triple], list[Triple]]:
    """``(preferences, ties)`` of a JSONL file as :mod:`rewards.label` writes it: ``{"prompt", "chosen",
    "rejected"}`` lines, and ``{"prompt", "tie": [a, b]}`` lines for a tie (returned as ``(prompt, a, b)``).
    A bad line raises :class:`TrainingDataError` naming the file and line."""
    preferences, ties = [], []
    for record in read_records(path, ["prompt"], ["prompt"]):
        where, pair = record["where"], record.get("tie")
        if pair is not None:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise TrainingDataError(f'{where}: "tie" must be a list of the two completions (strings)')
            ties.append((record["prompt"], pair[0], pair[1]))
            continue
        missing = [key for key in PREFERENCE_KEYS if key not in record]
        if missing:
            raise TrainingDataError(
                f"{where} lacks {missing}; each line needs the keys {list(PREFERENCE_KEYS)}"
            )
        for key in PREFERENCE_KEYS[1:]:
            if not isinstance(record[key], str):
                raise TrainingDataError(
                    f"{where}: {key!r} is {type(record[key]).__name__}, expected a string"
                )
        preferences.append((record["prompt"], record["chosen"], record["rejected"]))
    return preferences, ties


def read_preferences(path: str | Path) -> list[Triple]:
    """The ``(prompt, chosen, rejected)`` triples of a JSONL file of ``{"prompt", "chosen", "rejected"}``
    objects (what ``python -m rewards.label`` writes); a bad line raises :class:`TrainingDataError` naming
    the file and line. Tie lines (``{"prompt", "tie": [a, b]}``) are skipped: a tie says neither completion
    is better, which the Bradley-Terry loss of a (chosen, rejected) pair cannot express."""
    return read_preference_log(path)[0]


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
class CliTrainConfig(TrainConfig):
    """:class:`TrainConfig` with ``--backbone`` as an alias of ``--base-model``."""

    base_model: Annotated[str, tyro.conf.arg(aliases=("--backbone",))] = MINILM
    """Backbone: "all-MiniLM-L6-v2" (bundled) or a local HF directory: an encoder, or a causal LM (an SFT
    output or exported policy) read at its last token, as in DeepSpeed-Chat."""


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
    config: Annotated[CliTrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=CliTrainConfig)
    """Training settings: every TrainConfig field is a flag."""
    deepspeed_config: str | None = None
    """DeepSpeed config JSON merged over the defaults (ZeRO stage, ...), as for the agents; None: defaults."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """fp32; bf16 (DeepSpeed's bf16 with fp32 master weights); auto: bf16 where the hardware has it."""

    def __post_init__(self) -> None:
        if self.kind == "preference" and self.data is None:
            raise ValueError("preference needs --data triples.jsonl with {prompt, chosen, rejected} per line")


def main(argv: Sequence[str] | None = None) -> int:
    # the deepspeed launcher appends --local_rank=R to the arguments (LOCAL_RANK is in the environment too)
    argv = [arg for arg in (sys.argv[1:] if argv is None else argv) if not arg.startswith("--local_rank=")]
    args = tyro.cli(Args, args=argv, prog="python -m rewards.train", description=__doc__)
    try:
        model = fit_model(args)
    except TrainingDataError as error:
        raise SystemExit(f"python -m rewards.train: error: {error}") from None
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under a launcher, rank 0 saves
    path = model.save(args.out)
    name = "pairwise accuracy" if args.kind == "preference" else "accuracy"
    details = ", ".join(
        f"{key[5:]} {value:.4f}"
        for key, value in model.metrics.items()
        if key.startswith("eval_") and key != "eval_accuracy"
    )
    print(f"held-out {name}: {model.metrics['eval_accuracy']:.4f} ({details}); saved to {path}")
    return 0


def fit_model(args: Args) -> ScalarRewardModel:
    """Read the data of ``args`` and train the model (not saved)."""
    config = args.config
    settings: dict[str, Any] = {"deepspeed_config": args.deepspeed_config, "precision": args.precision}
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
        model: ScalarRewardModel = train_classifier(
            texts, labels, eval_texts, eval_labels, config, **settings
        )
    else:
        assert args.data is not None  # Args checks it
        evals = read_preferences(args.eval_data) if args.eval_data else None
        model = train_preference(read_preferences(args.data), evals, config, **settings)
    return model


if __name__ == "__main__":
    sys.exit(main())
