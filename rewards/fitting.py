"""Fitting the learned reward models: :class:`TrainConfig`, :func:`train_classifier` and
:func:`train_preference`. The command line over them is :mod:`rewards.train`
(``python -m rewards.train classifier|preference``).

Held-out data is the ``eval_*`` argument or, without it, a seeded ``config.eval_fraction`` of the training
data. Each run shows a tqdm progress bar and logs ``train/loss``, ``train/learning_rate`` and
``eval/accuracy`` to TensorBoard under ``config.logdir`` (default ``runs/rewards/<kind>__seed<k>__<time>``).
The returned model holds its held-out accuracy (pairwise accuracy for preferences) in
``model.metrics["eval_accuracy"]``; ``model.save(path)`` writes it, and ``ClassifierRewardModel.load(path)``
or ``PreferenceRewardModel.load(path)`` loads it back.

Bad data is refused before any training (:mod:`rewards.training_data`) with a
:class:`~rewards.training_data.TrainingDataError` (a ``ValueError``) that says what was wrong: no examples,
labels of one class only, or too few examples to hold some out and still train.

Training runs on a DeepSpeed engine (:mod:`infra.engine`, shared with the agents): AdamW with linear
warmup and decay, gradient clipping at 1.0, the same ``deepspeed_config`` (ZeRO stage, ...) and ``precision``
(``"fp32"``, ``"bf16"``, ``"auto"``) settings, and data parallelism under ``torchrun``/``deepspeed`` (each of
N processes takes 1/N of every batch, so N processes train the same model as one). In one fp32 process it
computes what plain torch AdamW did before, up to float rounding. Training is deterministic for a given seed
and thread count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.cli import check_options
from rewards.encoder import MINILM
from rewards.models import (
    ClassifierRewardModel,
    PreferenceRewardModel,
    ScalarRewardModel,
    classifier_accuracy,  # noqa: F401  (re-exported: the trainers' evaluation, by its old address)
    classifier_metrics,
    pairwise_accuracy,  # noqa: F401
    preference_metrics,
)
from rewards.training_data import TrainingDataError as TrainingDataError  # re-exported: by its old address
from rewards.training_data import Triple as Triple
from rewards.training_data import classifier_data, preference_data
from rewards.validation import check_setting


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
    """Show a tqdm progress bar on a terminal (redirected to a file, e.g. a benchmark log, it shows none)."""

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
        check_options(self, positive=("max_length", "epochs", "batch_size", "head_learning_rate"))


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (from 0): linear warmup, then linear decay to 0.

    >>> [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.125]
    """
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def fit(
    model: ScalarRewardModel,
    train_items: Sequence[Any],
    loss_fn: Callable[[ScalarRewardModel, list[Any]], Any],
    eval_fn: Callable[[ScalarRewardModel], dict[str, float]],
    config: TrainConfig,
    deepspeed_config: str | os.PathLike[str] | dict[str, Any] | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """The one training loop, on a DeepSpeed engine (:mod:`infra.engine`); returns the metrics.

    ``loss_fn(model, items)`` returns one loss per item. Every rank draws the same seeded order and takes its
    share (``items[rank::world]``) of each batch of ``config.batch_size`` items, and its loss is scaled so
    that DeepSpeed's gradient average is the mean over the whole batch: any number of processes takes the
    same steps as one. ``eval_fn`` returns held-out metrics (``"eval_accuracy"`` among them) after each epoch,
    computed by every rank on the whole held-out set. In bf16 the fp32 master weights are copied back into
    the model at the end, so the returned model scores (and saves) in fp32.
    """
    import torch
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from infra import engine as ds

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(train_items) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(config.warmup_fraction * total_steps)
    on_gpu = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ds_config = ds.build_config(
        deepspeed_config, config.learning_rate, 1.0, -(-config.batch_size // world), on_gpu, precision
    )
    if ds_config["zero_optimization"].get("stage", 0) == 3:
        raise ValueError(
            "ZeRO stage 3 is not supported for reward models (their weights are scored and saved whole); "
            "use stage 0, 1 or 2 in the DeepSpeed config"
        )
    network = torch.nn.ModuleDict({"backbone": model.backbone, "head": model.head})
    groups = [
        {"params": list(model.backbone.parameters()), "lr": config.learning_rate},
        {"params": list(model.head.parameters()), "lr": config.head_learning_rate or config.learning_rate},
    ]
    for group in groups:
        group.update(weight_decay=config.weight_decay, initial_lr=group["lr"])
    engine = ds.initialize(network, ds_config, groups)
    rank, world = dist.get_rank(), dist.get_world_size()
    resolved = "bf16" if ds_config["bf16"]["enabled"] else "fp32"
    writer = None
    if config.logdir != "" and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        logdir = config.logdir or f"runs/rewards/{model.kind}__seed{config.seed}__{int(time.time())}"
        writer = SummaryWriter(logdir)
        settings = {**dataclasses.asdict(config), "precision": resolved, "world_size": world}
        writer.add_text("hparams", json.dumps({**settings, "deepspeed": ds_config}, indent=2, default=str))
    metrics: dict[str, float] = {}
    quiet = not config.progress_bar or rank != 0
    # disable=None: tqdm draws only on a terminal, so a log file does not fill up with bars
    bar = tqdm(total=total_steps, disable=True if quiet else None, desc=f"train {model.kind} RM")
    step = 0
    for epoch in range(config.epochs):
        model.train(True)
        order = torch.randperm(len(train_items), generator=generator).tolist()
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = [train_items[i] for i in order[start : start + config.batch_size]]
            shard = batch[rank::world]
            per_item = loss_fn(model, shard or batch[:1]).float()  # (len(shard),)
            # each rank's sum / batch size, times world: DeepSpeed's average over ranks is the batch mean
            loss = per_item.sum() * (world / len(batch)) if shard else per_item.sum() * 0.0
            for group in engine.basic_optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(step, total_steps, warmup_steps)
            learning_rate = engine.basic_optimizer.param_groups[0]["lr"]
            engine.backward(loss)
            engine.step()
            batch_loss = loss.detach() / world
            if world > 1:
                dist.all_reduce(batch_loss)
            losses.append(batch_loss.item())
            _check_finite(losses[-1], network, step, config.learning_rate)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if writer is not None:
                writer.add_scalar("train/loss", losses[-1], step)
                writer.add_scalar("train/learning_rate", learning_rate, step)
        model.train(False)
        metrics = {"train_loss": float(np.mean(losses)), **eval_fn(model), "epoch": epoch + 1}
        if rank == 0:
            bar.write(
                f"epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}, held-out accuracy "
                f"{metrics['eval_accuracy']:.4f}"
            )
        if writer is not None:
            for key, value in metrics.items():
                if key.startswith("eval_"):
                    writer.add_scalar(f"eval/{key[5:]}", value, step)
    bar.close()
    if writer is not None:
        writer.close()
    if resolved == "bf16":
        _restore_fp32(engine, network)
    model.metrics = {key: float(value) for key, value in metrics.items()}
    return model.metrics


def _check_finite(loss: float, network: Any, step: int, learning_rate: float) -> None:
    """Stop a diverging run before it returns (and its caller saves) non-finite weights."""
    bad = [name for name, p in network.named_parameters() if not bool(p.isfinite().all())]
    if bad or not math.isfinite(loss):
        what = f"weights became non-finite (inf/NaN), e.g. {bad[:3]}" if bad else f"loss was {loss}"
        raise FloatingPointError(
            f"reward-model training diverged at step {step + 1}: the {what}; nothing was saved. Lower "
            f"learning_rate (now {learning_rate})"
        )


def _restore_fp32(engine: Any, network: Any) -> None:
    """Cast a bf16-trained network to fp32 and copy the optimizer's fp32 master weights into it: from
    ZeRO's or the bf16 optimizer's mapping, or from the fp32 groups of DeepSpeed's unfused bf16 optimizer
    (stage 0 with a torch optimizer, the CPU case)."""
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    optimizer = engine.optimizer
    unfused = {
        id(low): high
        for lows, highs in zip(
            getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", []), strict=False
        )
        for low, high in zip(lows, highs, strict=True)
    }
    with torch.no_grad():
        masters = [safe_get_full_fp32_param(p) for p in network.parameters()]
        masters = [
            m if m is not None else unfused.get(id(p))
            for m, p in zip(masters, network.parameters(), strict=True)
        ]
        network.float()
        for param, master in zip(network.parameters(), masters, strict=True):
            if master is not None:
                param.copy_(master.float().view_as(param))


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[int],
    eval_texts: Sequence[str] | None = None,
    eval_labels: Sequence[int] | None = None,
    config: TrainConfig | None = None,
    *,
    backbone: str | None = None,
    deepspeed_config: str | os.PathLike[str] | dict[str, Any] | None = None,
    precision: str = "fp32",
) -> ClassifierRewardModel:
    """Fine-tune backbone + head with binary cross-entropy on texts labelled 1 (positive) or 0 (negative).

    Without ``eval_texts`` a seeded ``config.eval_fraction`` is held out. ``model.metrics`` holds
    ``eval_accuracy`` (held out) and the mean held-out score of each class. ``backbone``, ``deepspeed_config``
    and ``precision`` are as in :func:`train_preference`. Raises
    :class:`~rewards.training_data.TrainingDataError` for no texts, labels that are not 0/1, one class only,
    or too few texts to hold some out (see :func:`~rewards.training_data.classifier_data`).
    """
    import torch

    config = config or TrainConfig()
    pairs, held_out = classifier_data(
        texts, labels, eval_texts, eval_labels, eval_fraction=config.eval_fraction, seed=config.seed
    )
    model = ClassifierRewardModel.create(
        backbone or config.base_model, config.pooling, config.max_length, seed=config.seed
    )

    def loss_fn(model: ScalarRewardModel, batch: list[tuple[str, int]]) -> Any:
        logits = model.logits(None, [text for text, _ in batch]).float()
        targets = torch.tensor([float(label) for _, label in batch], device=logits.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    held_texts, held_labels = [t for t, _ in held_out], [label for _, label in held_out]

    def evaluate(model: ScalarRewardModel) -> dict[str, float]:
        return classifier_metrics(model, held_texts, held_labels)

    fit(model, pairs, loss_fn, evaluate, config, deepspeed_config, precision)
    return model


def train_preference(
    triples: Sequence[Triple],
    eval_triples: Sequence[Triple] | None = None,
    config: TrainConfig | None = None,
    *,
    backbone: str | None = None,
    deepspeed_config: str | os.PathLike[str] | dict[str, Any] | None = None,
    precision: str = "fp32",
) -> PreferenceRewardModel:
    """Fit a preference reward model on (prompt, chosen, rejected) triples with the Bradley-Terry loss
    ``-log sigmoid(r(prompt, chosen) - r(prompt, rejected))`` (DeepSpeed-Chat's step 2).

    - ``triples``: ``(prompt, chosen, rejected)`` strings, e.g. ``rewards.train.read_preferences(path)`` of
      the JSONL that ``python -m rewards.label`` writes. ``eval_triples``: held-out triples; ``None``
      holds out a seeded ``config.eval_fraction``.
    - ``backbone``: overrides ``config.base_model``: ``"all-MiniLM-L6-v2"`` or a local HF directory. An
      encoder gets mean pooling over the (prompt, completion) text pair; a causal LM (an SFT output, an
      exported policy: any ``*ForCausalLM`` directory, its LM head dropped) reads ``prompt + completion +
      EOS`` as one sequence and the scalar head scores the last real token's hidden state.
    - ``deepspeed_config``: a DeepSpeed config (dict, JSON path or ``None``) merged over the defaults of
      :func:`infra.ds_config.build_config` (ZeRO stage, clipping; the learning rates, weight decay and batch
      size come from ``config``). ``precision``: ``"fp32"`` (default: the shipped models' figures),
      ``"bf16"`` or ``"auto"`` (bf16 where native), as the agents. Launched under ``torchrun`` or
      ``deepspeed`` with N processes, each takes ``1/N`` of every batch (see :func:`fit`).

    ``model.metrics`` holds ``eval_accuracy`` (held-out pairwise accuracy), ``eval_chosen_mean``,
    ``eval_rejected_mean``, ``eval_margin_mean``, ``eval_margin_std``, ``train_loss`` and ``epoch``. Raises
    :class:`~rewards.training_data.TrainingDataError` for no triples, items that are not three strings, or
    too few to hold some out (see :func:`~rewards.training_data.preference_data`).
    """
    import torch

    config = config or TrainConfig()
    train_items, eval_items = preference_data(
        triples, eval_triples, eval_fraction=config.eval_fraction, seed=config.seed
    )
    model = PreferenceRewardModel.create(
        backbone or config.base_model, config.pooling, config.max_length, seed=config.seed
    )

    def loss_fn(model: ScalarRewardModel, batch: list[tuple[str, str, str]]) -> Any:
        prompts = [prompt for prompt, _, _ in batch]
        logits = model.logits(prompts + prompts, [c for _, c, _ in batch] + [r for _, _, r in batch])  # (2B,)
        chosen, rejected = logits.float().chunk(2)  # (B,), (B,)
        return -torch.nn.functional.logsigmoid(chosen - rejected)

    fit(
        model,
        train_items,
        loss_fn,
        lambda m: preference_metrics(m, eval_items),
        config,
        deepspeed_config,
        precision,
    )
    return model
