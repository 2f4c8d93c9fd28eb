"""The sentiment task with headroom: its prompts (``drugs-turnaround``), the whole-text reward wrapper and the
review classifier's data, calibration measure and cache key."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rewards
from benchmarks.named_rewards import REPORTS, side_metrics
from infra.corpora import drug_reviews
from rewards import WholeText
from rewards.drugs_review import (
    ENDING_WORDS,
    KINDS,
    OFF_TOPIC_EXAMPLES,
    OPENING_MAX_WORDS,
    REVIEW_SENTIMENT_CONFIG,
    TRAIN_NEUTRAL,
    UNRATED_KINDS,
    drugs_review_sentiment_model,
    opening_length,
    reliability,
    review_sentiment_key,
    review_sentiment_views,
    train_reviews,
)
from rewards.sentiment import VaderSentiment
from textenv.task_envs import BENCHMARKS, whole_review_sentiment
from textenv.tasks import TURNAROUND_POSITIVE_SHARE, drugs_turnaround, load_task

# ---- prompts ------------------------------------------------------------------------------------------


def test_turnaround_prompts_are_negative_or_neutral_openings_plus_the_stated_positive_share() -> None:
    from textenv.tasks import drug_review_split

    for split in ("train", "validation", "test"):
        ds = load_task("drugs-turnaround", split)
        labels = [e.metadata["label"] for e in ds]
        others = sum(label in ("negative", "neutral") for label in labels)
        assert set(labels) == {"negative", "neutral", "positive"}
        assert labels.count("positive") == round(TURNAROUND_POSITIVE_SHARE / 0.9 * others)
        rows = drug_review_split(split)  # every one of them
        assert others == sum(row["label"] in ("negative", "neutral") for row in rows)
        for example in ds:
            words = (example.prompt + (example.reference or "")).split()
            assert example.prompt.split() == words[: opening_length(len(words))]
            assert len(example.prompt.split()) <= OPENING_MAX_WORDS
    assert 4 <= sum(e.metadata["label"] == "positive" for e in list(drugs_turnaround("test"))[:32]) <= 8
    none = drugs_turnaround("test", positive_share=0.0)
    assert {e.metadata["label"] for e in none} == {"negative", "neutral"}


def test_turnaround_prompts_are_seeded_and_train_test_disjoint() -> None:
    first, again, other = (
        drugs_turnaround("train"),
        drugs_turnaround("train"),
        drugs_turnaround("train", seed=1),
    )
    assert [e.prompt for e in first] == [e.prompt for e in again]
    assert [e.prompt for e in first] != [e.prompt for e in other]
    assert sorted(e.prompt for e in first if e.metadata["label"] != "positive") == sorted(
        e.prompt for e in other if e.metadata["label"] != "positive"
    )  # the seed only draws the positive ones and the order
    whole = {e.prompt + (e.reference or "") for e in drugs_turnaround("test")}
    assert not whole & {e.prompt + (e.reference or "") for e in first}
    assert len(drugs_turnaround("test")) == 146  # 95 negative + 36 neutral, 15 positive


def test_turnaround_rejects_bad_positive_share() -> None:
    with pytest.raises(ValueError, match=r"positive_share=1\.5 must be in \[0, 1\)"):
        drugs_turnaround("test", positive_share=1.5)
    with pytest.raises(TypeError, match="positive_share='a lot'"):
        drugs_turnaround("test", positive_share="a lot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive_share=0.9 needs 1179 positive reviews"):
        drugs_turnaround("test", positive_share=0.9)


def test_sentiment_benchmark_uses_the_turnaround_prompts_and_the_whole_review_reward() -> None:
    spec = BENCHMARKS["sentiment"]
    assert (spec.task, spec.reward, REPORTS["sentiment"].reward) == (
        "drugs-turnaround",
        whole_review_sentiment,
        "review",
    )
    assert REPORTS["preference"].metrics == ("classifier", "vader")  # its gold scorers are unchanged
    assert list(side_metrics("sentiment", reward="vader")) == ["vader"]  # no companion beside VADER
    with pytest.raises(ValueError, match="Unknown benchmark 'nope'"):
        side_metrics("nope")


# ---- the whole-text reward ----------------------------------------------------------------------------


def record_calls(prompts: list[str], completions: list[str], references: Any = None) -> np.ndarray:
    record_calls.seen.append((list(prompts), list(completions), references))  # type: ignore[attr-defined]
    return np.arange(len(completions), dtype=np.float32)


def test_whole_text_scores_prompt_plus_completion_with_the_inner_reward() -> None:
    record_calls.seen = []  # type: ignore[attr-defined]
    whole = WholeText(record_calls)
    scores = whole(
        ["Bad at first,", "Awful. ", "", "Meh"], [" then great", "Then", "Good", ""], ["r", None, "x", "y"]
    )
    assert scores.tolist() == [0.0, 1.0, 2.0, 3.0] and scores.dtype == np.float32
    assert record_calls.seen == [  # type: ignore[attr-defined]
        (["", "", "", ""], ["Bad at first, then great", "Awful. Then", "Good", "Meh"], ["r", None, "x", "y"])
    ]
    assert WholeText(record_calls, separator="\n").texts(["a"], ["b"]) == ["a\nb"]
    vader = WholeText(VaderSentiment())
    turned = vader(["It made me sick for a week,"], [" but now it works great and I love it!"])[0]
    alone = VaderSentiment()([""], ["It made me sick for a week,"])[0]
    assert turned > 0.0 > alone  # the continuation turns the whole review around
    assert pickle.loads(pickle.dumps(vader))(["Awful."], [""]).tolist() == vader(["Awful."], [""]).tolist()


def test_whole_text_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="reward is str, which is not callable"):
        WholeText("vader")
    with pytest.raises(TypeError, match="reward is the class VaderSentiment"):
        WholeText(VaderSentiment)
    with pytest.raises(TypeError, match="separator=1 must be a str"):
        WholeText(VaderSentiment(), separator=1)  # type: ignore[arg-type]
    whole = WholeText(VaderSentiment())
    with pytest.raises(ValueError, match=r"len\(prompts\)=2, len\(completions\)=1"):
        whole(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="completions is a single str"):
        whole(["a"], "c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="WholeText's reward <lambda> returned scores of shape"):
        WholeText(lambda p, c, r=None: np.zeros(3))(["a"], ["b"])
    with pytest.raises(ValueError, match="non-finite"):
        WholeText(lambda p, c, r=None: np.array([np.nan]))(["a"], ["b"])


# ---- the review classifier: data, calibration measure, cache ------------------------------------------


def test_review_views_are_balanced_train_only_and_label_turned_reviews_by_their_ending() -> None:
    texts, labels, kinds = review_sentiment_views("train")
    for kind in (kind for kind in KINDS if kind not in UNRATED_KINDS):
        in_kind = [label for label, k in zip(labels, kinds, strict=True) if k == kind]
        assert len(in_kind) == 2 * sum(in_kind) > 0  # balanced (off-topic text is all "not positive")
    test_texts = {text for text, _ in drug_reviews("test")}
    assert not test_texts & set(texts)
    endings = {
        " ".join(text.split()[opening_length(len(text.split())) :][-ENDING_WORDS:]): int(label == "positive")
        for text, label in drug_reviews("train")
        if text not in test_texts  # neutral reviews are "not positive": 0
    }
    turned = [
        (text, label) for text, label, kind in zip(texts, labels, kinds, strict=True) if kind == "turned"
    ]
    for text, label in turned[:: len(turned) // 50]:
        matches = [end_label for end, end_label in endings.items() if end and text.endswith(" " + end)]
        assert label in matches
    off_topic = [(t, y) for t, y, kind in zip(texts, labels, kinds, strict=True) if kind == "off-topic"]
    assert len(off_topic) == 2 * OFF_TOPIC_EXAMPLES and {y for _, y in off_topic} == {0}
    assert not {t for t, _ in off_topic} & {text for text, _ in drug_reviews("train")}
    assert len(review_sentiment_views("test", balance=False, neutral=True)[0]) > len(
        review_sentiment_views("test", balance=False)[0]
    )
    assert (texts, labels, kinds) == review_sentiment_views("train")  # seeded
    assert texts != review_sentiment_views("train", seed=1)[0]


def test_drifted_views_are_an_opening_plus_off_topic_text_labelled_not_positive() -> None:
    texts, labels, kinds = review_sentiment_views("train")
    reviews = [(text, int(label == "positive")) for text, label in train_reviews() if label != "neutral"]
    openings: dict[str, set[int]] = {}
    for text, label in reviews:
        words = text.split()
        openings.setdefault(" ".join(words[: opening_length(len(words))]), set()).add(label)
    drifted = [(t, y) for t, y, kind in zip(texts, labels, kinds, strict=True) if kind == "drifted"]
    assert len(drifted) == 2 * OFF_TOPIC_EXAMPLES and {y for _, y in drifted} == {0}
    opened_by: list[int] = []
    for text, _ in drifted[:: len(drifted) // 40]:
        words = text.split()
        starts = [n for n in range(1, OPENING_MAX_WORDS + 1) if " ".join(words[:n]) in openings]
        opened_by += openings[" ".join(words[: max(starts)])]
        tail = " ".join(words[max(starts) :])
        assert 20 <= len(words) - max(starts) <= ENDING_WORDS  # a completion's length of off-topic text
        assert not any(tail in review for review, _ in reviews)
    assert {0, 1} <= set(opened_by)  # openings of negative and of positive reviews
    some, _, some_kinds = review_sentiment_views("test", kinds=("whole", "drifted"))
    all_texts, _, all_kinds = review_sentiment_views("test")
    assert set(some_kinds) == {"whole", "drifted"}
    assert [t for t, k in zip(some, some_kinds, strict=True) if k == "whole"] == [
        t for t, k in zip(all_texts, all_kinds, strict=True) if k == "whole"
    ]
    slice_views = review_sentiment_views(reviews=drug_reviews("test")[:40], balance=False, kinds=("whole",))
    assert slice_views[0] == [text for text, label in drug_reviews("test")[:40] if label != "neutral"]
    with pytest.raises(ValueError, match=r"kinds has unknown views \['halves'\]"):
        review_sentiment_views("test", kinds=("whole", "halves"))


def test_reliability_table_and_ece_by_hand() -> None:
    table = reliability([0.05, 0.15, 0.55, 0.95, 0.85], [0, 1, 1, 1, 0], bins=2)
    low, high = table["bins"]
    assert (low["count"], low["mean_predicted"], low["observed_positive"]) == (2, 0.1, 0.5)
    assert (high["count"], high["mean_predicted"], high["observed_positive"]) == (3, 0.7833, 0.6667)
    assert table["ece"] == pytest.approx(2 / 5 * 0.4 + 3 / 5 * (0.78333 - 0.66667), abs=1e-4)
    assert reliability([1.0], [1], bins=10)["bins"][0]["low"] == 0.9  # P = 1 falls in the last bin
    with pytest.raises(ValueError, match="equally long"):
        reliability([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="bins=0 must be an int >= 1"):
        reliability([0.5], [1], bins=0)


def test_review_classifier_key_follows_config_and_data_not_logging() -> None:
    key = review_sentiment_key()
    assert key.startswith("drugs-review-sentiment-") and key == review_sentiment_key(REVIEW_SENTIMENT_CONFIG)
    quiet = dataclasses.replace(REVIEW_SENTIMENT_CONFIG, logdir="runs/x", progress_bar=False)
    assert review_sentiment_key(quiet) == key
    for changed in ({"epochs": 3}, {"seed": 1}, {"max_length": 64}, {"learning_rate": 5e-5}):
        assert review_sentiment_key(dataclasses.replace(REVIEW_SENTIMENT_CONFIG, **changed)) != key
    assert review_sentiment_key(seed=1) != key  # the data recipe's seed
    assert rewards.drugs_sentiment_model is not rewards.drugs_review_sentiment_model


def test_review_classifier_is_trained_once_on_train_views_then_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call trains (here: a fresh untrained model stands in) on the train views with the test
    reviews as held-out data, and caches it under its key; the second call loads it without training."""
    import rewards.fitting

    calls: list[tuple[Any, ...]] = []
    config = dataclasses.replace(REVIEW_SENTIMENT_CONFIG, epochs=1)

    def fake_train(
        texts: list[str], labels: list[int], eval_texts: list[str], eval_labels: list[int], cfg: Any
    ):
        calls.append((texts, labels, eval_texts, eval_labels, cfg))
        return rewards.ClassifierRewardModel.create(max_length=32)

    monkeypatch.setattr(rewards.fitting, "train_classifier", fake_train)
    model = drugs_review_sentiment_model(config, cache_dir=tmp_path)
    assert (tmp_path / review_sentiment_key(config)).is_dir() and len(calls) == 1
    texts, labels, eval_texts, _, cfg = calls[0]
    assert (texts, labels) == review_sentiment_views("train", neutral=TRAIN_NEUTRAL)[:2] and cfg == config
    assert len(eval_texts) == 343  # the positive and negative test reviews, whole
    assert model.max_length == 32
    monkeypatch.setattr(rewards.fitting, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = drugs_review_sentiment_model(config, cache_dir=tmp_path)
    assert np.allclose(again([""], ["It works."]), model([""], ["It works."]), atol=1e-6)
