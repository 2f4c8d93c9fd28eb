"""Fitting the learned reward models: :class:`TrainConfig`, :func:`train_classifier` and
:func:`train_preference`. The command line over them is :mod:`rewards.train`
(``python -m rewards.train classifier|preference``).

Held-out data is the ``eval_*`` argument or, without it, a seeded ``config.eval_fraction`` of the training
data. Each run shows a tqdm progress bar and logs ``train/loss``, ``train/learning_rate`` and
``eval/accuracy`` to TensorBoard under ``config.logdir`` (default ``runs/rewards/<kind>__seed<k>__<time>``).
The returned model holds its held-out accuracy (pairwise accuracy for preferences) in
``model.metrics["eval_accuracy"]``; ``model.save(path)`` writes it, and ``ClassifierRewardModel.load(path)``
or ``PreferenceRewardModel.load(path)`` loads it back.

Bad data is refused before any training with a :class:`TrainingDataError` (a ``ValueError``) that says what
was wrong: no examples, labels of one class only, or too few examples to hold some out and still train.

Optimisation is plain torch AdamW with linear warmup and decay, not DeepSpeed: the backbones here are small
enough for one CPU process. Training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rewards.encoder import MINILM
from rewards.models import ClassifierRewardModel, PreferenceRewardModel, ScalarRewardModel
from rewards.validation import check_setting

Triple = tuple[str, str, str]


class TrainingDataError(ValueError):
    """Data a reward model cannot be trained on; the message says what was wrong and how to fix it."""


@dataclass
class TrainConfig:
    """Settings of one reward-model training run."""

    base_model: str = MINILM
    """Backbone: ``"all-MiniLM-L6-v2"`` (bundled) or a local HF directory (encoder or causal LM)."""
    pooling: str = "auto"
    """``"mean"``, ``"last"``, or ``"auto"`` (mean for BERT-family encoders, last token otherwise)."""
    max_length: int = 128
    """Tokens kept per text (pair) in training and scoring."""
    epochs: int = 4
    """Passes over the training data."""
    batch_size: int = 16
    """Examples (or triples) per optimiser step."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate of the backbone."""
    head_learning_rate: float | None = 1e-3
    """Peak learning rate of the freshly initialised head; ``None`` means ``learning_rate``."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_fraction: float = 0.1
    """Fraction of the steps with linearly rising learning rate; it then decays linearly to 0."""
    eval_fraction: float = 0.2
    """Held-out fraction of the data when no separate evaluation data is given."""
    seed: int = 0
    """Seeds the head, the shuffling, the split and dropout."""
    logdir: str | None = None
    """TensorBoard directory; ``None``: ``runs/rewards/<kind>__seed<k>__<time>``; ``""`` disables logging."""
    progress_bar: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        check_setting("base_model", self.base_model, "str", repr(MINILM))
        check_setting("pooling", self.pooling, "str", "'auto'")
        for name, example in (("max_length", "128"), ("epochs", "4"), ("batch_size", "16"), ("seed", "0")):
            check_setting(name, getattr(self, name), "int", example)
        for name in ("learning_rate", "weight_decay", "warmup_fraction", "eval_fraction"):
            check_setting(name, getattr(self, name), "real", str(getattr(TrainConfig, name)))
        if self.head_learning_rate is not None:
            check_setting("head_learning_rate", self.head_learning_rate, "real", "1e-3")
        if self.logdir is not None:
            check_setting("logdir", self.logdir, "str", "'runs/rewards'")
        check_setting("progress_bar", self.progress_bar, "bool", "False")
        if self.pooling not in ("auto", "mean", "last"):
            raise ValueError(f"pooling={self.pooling!r} is not known; use 'auto', 'mean' or 'last'")
        for name in ("max_length", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError(f"learning_rate={self.learning_rate} must be in (0, 1), e.g. 5e-5")
        if self.head_learning_rate is not None and not 0.0 < self.head_learning_rate < 1.0:
            raise ValueError(
                f"head_learning_rate={self.head_learning_rate} must be in (0, 1) or None, e.g. 1e-3"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must be in [0, 1), e.g. 0.1")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={self.eval_fraction} must be in (0, 1), e.g. 0.2")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise ValueError(f"weight_decay={self.weight_decay} must be a finite number >= 0, e.g. 0.01")


def split(items: Sequence[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle-split into (train, held-out).

    >>> split(list(range(10)), 0.2, seed=0)[1]
    [7, 8]
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(items)))
    return [items[i] for i in sorted(order[n_eval:])], [items[i] for i in sorted(order[:n_eval])]


def _texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TrainingDataError(
            f"{what} is a single {type(texts).__name__}; pass a list with one text per example"
        )
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise TrainingDataError(f"{what}[{index}] is {type(text).__name__}, expected str")
    return items


def _labelled(texts: Sequence[str], labels: Sequence[int], what: str) -> list[tuple[str, int]]:
    """(text, label) pairs, checked: one label in {0, 1} per text."""
    text_list, label_list = _texts(texts, f"{what}texts"), list(labels)
    bad = [i for i, label in enumerate(label_list) if label not in (0, 1)]
    if bad or len(text_list) != len(label_list):
        raise TrainingDataError(
            f"need one label in {{0, 1}} per text; got {len(label_list)} {what}labels for {len(text_list)} "
            f"{what}texts, bad labels at {bad[:10]}"
        )
    return [(text, int(label)) for text, label in zip(text_list, label_list, strict=True)]


def _held_out_note(count: int, config: TrainConfig) -> str:
    return f"holding out eval_fraction={config.eval_fraction} of the {count} examples"


def classifier_data(
    texts: Sequence[str],
    labels: Sequence[int],
    eval_texts: Sequence[str] | None,
    eval_labels: Sequence[int] | None,
    config: TrainConfig,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The checked (train, held-out) ``(text, label)`` pairs of :func:`train_classifier`.

    >>> classifier_data(["good", "fine"], [1, 1], None, None, TrainConfig())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rewards.fitting.TrainingDataError: all 2 labels are 1: a classifier needs positive (1) and negative ...
    """
    if (eval_texts is None) != (eval_labels is None):
        raise TrainingDataError(
            "pass both eval_texts and eval_labels, or neither (then config.eval_fraction of the data is "
            "held out)"
        )
    pairs = _labelled(texts, labels, "")
    if not pairs:
        raise TrainingDataError(
            "got no training texts; pass labelled texts (1 positive, 0 negative), many of each class"
        )
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise TrainingDataError(
            f"all {len(pairs)} labels are {classes[0]}: a classifier needs positive (1) and negative (0) "
            "examples; add examples of the other class"
        )
    if eval_texts is None or eval_labels is None:
        train, held_out = split(pairs, config.eval_fraction, config.seed)
        if len({label for _, label in train}) < 2:
            raise TrainingDataError(
                f"{_held_out_note(len(pairs), config)} leaves {len(train)} to train on, not both classes; "
                "pass more examples of each class, or separate eval_texts and eval_labels"
            )
        return train, held_out
    held_out = _labelled(eval_texts, eval_labels, "eval_")
    if not held_out:
        raise TrainingDataError(
            "eval_texts is empty; pass held-out texts, or None to hold out part of the data"
        )
    return pairs, held_out


def _triples(triples: Sequence[Triple], what: str) -> list[Triple]:
    if isinstance(triples, (str, bytes)):
        raise TrainingDataError(f"{what} is a single str; pass a list of (prompt, chosen, rejected) triples")
    items = list(triples)
    for index, triple in enumerate(items):
        if (
            isinstance(triple, (str, bytes))
            or not isinstance(triple, Sequence)
            or len(triple) != 3
            or not all(isinstance(text, str) for text in triple)
        ):
            raise TrainingDataError(
                f"{what}[{index}] is {triple!r}; each must be (prompt, chosen, rejected), three strings"
            )
    return [(prompt, chosen, rejected) for prompt, chosen, rejected in items]


def preference_data(
    triples: Sequence[Triple], eval_triples: Sequence[Triple] | None, config: TrainConfig
) -> tuple[list[Triple], list[Triple]]:
    """The checked (train, held-out) triples of :func:`train_preference`.

    >>> preference_data([("p", "good", "bad")], None, TrainConfig())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rewards.fitting.TrainingDataError: holding out eval_fraction=0.2 of the 1 examples leaves 0 to train ...
    """
    items = _triples(triples, "triples")
    if not items:
        raise TrainingDataError("got no training triples; pass (prompt, chosen, rejected) triples of strings")
    if eval_triples is None:
        train, held_out = split(items, config.eval_fraction, config.seed)
        if not train:
            raise TrainingDataError(
                f"{_held_out_note(len(items), config)} leaves 0 to train on; pass more (prompt, chosen, "
                "rejected) triples, or separate eval_triples"
            )
        return train, held_out
    held_out = _triples(eval_triples, "eval_triples")
    if not held_out:
        raise TrainingDataError(
            "eval_triples is empty; pass held-out triples, or None to hold out part of the data"
        )
    return items, held_out


def fit(
    model: ScalarRewardModel,
    train_items: Sequence[Any],
    loss_fn: Callable[[ScalarRewardModel, list[Any]], Any],
    accuracy_fn: Callable[[ScalarRewardModel], float],
    config: TrainConfig,
) -> dict[str, float]:
    """The one training loop: seeded shuffles, AdamW, warmup/decay, tqdm, TensorBoard; returns the metrics."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(train_items) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(config.warmup_fraction * total_steps)
    groups = [
        {"params": list(model.backbone.parameters()), "lr": config.learning_rate},
        {"params": list(model.head.parameters()), "lr": config.head_learning_rate or config.learning_rate},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / max(1, warmup_steps)
            if step < warmup_steps
            else max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        ),
    )
    writer = None
    if config.logdir != "":
        from torch.utils.tensorboard import SummaryWriter

        logdir = config.logdir or f"runs/rewards/{model.kind}__seed{config.seed}__{int(time.time())}"
        writer = SummaryWriter(logdir)
        writer.add_text("hparams", json.dumps(dataclasses.asdict(config), indent=2))
    metrics: dict[str, float] = {}
    bar = tqdm(total=total_steps, disable=not config.progress_bar, desc=f"train {model.kind} RM")
    step = 0
    for epoch in range(config.epochs):
        model.train(True)
        order = torch.randperm(len(train_items), generator=generator).tolist()
        losses = []
        for start in range(0, len(order), config.batch_size):
            loss = loss_fn(model, [train_items[i] for i in order[start : start + config.batch_size]])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if writer is not None:
                writer.add_scalar("train/loss", losses[-1], step)
                writer.add_scalar("train/learning_rate", schedule.get_last_lr()[0], step)
        model.train(False)
        metrics = {
            "train_loss": float(np.mean(losses)),
            "eval_accuracy": accuracy_fn(model),
            "epoch": epoch + 1,
        }
        bar.write(
            f"epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}, held-out accuracy "
            f"{metrics['eval_accuracy']:.4f}"
        )
        if writer is not None:
            writer.add_scalar("eval/accuracy", metrics["eval_accuracy"], step)
    bar.close()
    if writer is not None:
        writer.close()
    model.metrics = {key: float(value) for key, value in metrics.items()}
    return model.metrics


def classifier_accuracy(model: ScalarRewardModel, texts: Sequence[str], labels: Sequence[int]) -> float:
    """Fraction of texts whose score is on the label's side of 0.5."""
    scores = model.score([""] * len(texts), list(texts))
    return float(np.mean((scores >= 0.5) == np.asarray(labels, dtype=bool)))


def pairwise_accuracy(model: ScalarRewardModel, triples: Sequence[tuple[str, str, str]]) -> float:
    """Fraction of (prompt, chosen, rejected) triples where chosen scores strictly above rejected."""
    prompts = [prompt for prompt, _, _ in triples]
    chosen = model.score(prompts, [c for _, c, _ in triples])
    rejected = model.score(prompts, [r for _, _, r in triples])
    return float(np.mean(chosen > rejected))


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[int],
    eval_texts: Sequence[str] | None = None,
    eval_labels: Sequence[int] | None = None,
    config: TrainConfig | None = None,
) -> ClassifierRewardModel:
    """Fine-tune backbone + head with binary cross-entropy on texts labelled 1 (positive) or 0 (negative).

    Without ``eval_texts`` a seeded ``config.eval_fraction`` is held out. ``model.metrics["eval_accuracy"]``
    holds the held-out accuracy. Raises :class:`TrainingDataError` for no texts, labels that are not 0/1,
    one class only, or too few texts to hold some out (see :func:`classifier_data`).
    """
    import torch

    config = config or TrainConfig()
    pairs, held_out = classifier_data(texts, labels, eval_texts, eval_labels, config)
    model = ClassifierRewardModel.create(
        config.base_model, config.pooling, config.max_length, seed=config.seed
    )

    def loss_fn(model: ScalarRewardModel, batch: list[tuple[str, int]]) -> Any:
        logits = model.logits(None, [text for text, _ in batch])
        targets = torch.tensor([float(label) for _, label in batch])
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)

    held_texts, held_labels = [t for t, _ in held_out], [label for _, label in held_out]
    fit(model, pairs, loss_fn, lambda m: classifier_accuracy(m, held_texts, held_labels), config)
    return model


def train_preference(
    triples: Sequence[Triple],
    eval_triples: Sequence[Triple] | None = None,
    config: TrainConfig | None = None,
) -> PreferenceRewardModel:
    """Fit a preference reward model on (prompt, chosen, rejected) triples with the Bradley-Terry loss
    ``-log sigmoid(r(prompt, chosen) - r(prompt, rejected))``.

    ``model.metrics["eval_accuracy"]`` is the held-out pairwise accuracy. Raises :class:`TrainingDataError`
    for no triples, items that are not three strings, or too few to hold some out (see
    :func:`preference_data`).
    """
    import torch

    config = config or TrainConfig()
    train_items, eval_items = preference_data(triples, eval_triples, config)
    model = PreferenceRewardModel.create(
        config.base_model, config.pooling, config.max_length, seed=config.seed
    )

    def loss_fn(model: ScalarRewardModel, batch: list[tuple[str, str, str]]) -> Any:
        prompts = [prompt for prompt, _, _ in batch]
        logits = model.logits(prompts + prompts, [c for _, c, _ in batch] + [r for _, _, r in batch])  # (2B,)
        chosen, rejected = logits.chunk(2)  # (B,), (B,)
        return -torch.nn.functional.logsigmoid(chosen - rejected).mean()

    fit(model, train_items, loss_fn, lambda m: pairwise_accuracy(m, eval_items), config)
    return model
