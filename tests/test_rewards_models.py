"""Learned reward models on tiny random backbones: training, accuracy, save/load, pickling, the CLI."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.corpora import drug_reviews
from rewards import (
    ClassifierRewardModel,
    PreferenceRewardModel,
    TrainConfig,
    train_classifier,
    train_preference,
)
from rewards.drugs import drug_sentiment_data
from rewards.encoder import minilm_path
from rewards.train import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
GOOD = ["great", "wonderful", "excellent", "amazing", "helpful", "fantastic", "perfect", "effective"]
BAD = ["awful", "terrible", "horrible", "useless", "painful", "dreadful", "worst", "nasty"]
TEMPLATES = [
    "this drug was {}",
    "the pills felt {} to me",
    "my doctor said it is {}",
    "{} results so far",
    "honestly {} side effects",
    "overall a {} experience",
]


def sentiment_fixture(seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for template in TEMPLATES:
        for word in GOOD + BAD:
            if rng.random() < 0.7:
                texts.append(template.format(word))
                labels.append(int(word in GOOD))
    return texts, labels


def preference_fixture(seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [
        (f"Review {rng.randint(0, 99)}:", t.format(rng.choice(GOOD)), t.format(rng.choice(BAD)))
        for t in TEMPLATES
        for _ in range(8)
    ]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """A tiny random BERT encoder and a tiny random Llama causal LM, both on the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    root = tmp_path_factory.mktemp("backbones")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    sizes = {  # both backbones are this small
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    encoder = BertModel(BertConfig(**sizes))
    causal = LlamaModel(LlamaConfig(**sizes, num_key_value_heads=2, pad_token_id=0))
    paths = {}
    for name, model in (("encoder", encoder), ("causal", causal)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def config(path: Path, **overrides) -> TrainConfig:
    settings = dict(
        base_model=str(path),
        max_length=24,
        epochs=5,
        batch_size=8,
        learning_rate=1e-2,
        warmup_fraction=0.0,
        head_learning_rate=None,
        logdir="",
        progress_bar=False,
        seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def classifier(backbones) -> ClassifierRewardModel:
    texts, labels = sentiment_fixture(0)
    eval_texts, eval_labels = sentiment_fixture(1)
    return train_classifier(texts, labels, eval_texts, eval_labels, config(backbones["encoder"]))


def test_progress_bar_only_on_a_terminal(backbones, capfd: pytest.CaptureFixture[str]) -> None:
    """With progress_bar=True a training run draws its bar on a terminal only: stderr captured to a file
    (here pytest's; a benchmark's log) gets no bar lines."""
    texts, labels = sentiment_fixture(0)
    train_classifier(
        texts[:8],
        labels[:8],
        texts[:8],
        labels[:8],
        config(backbones["encoder"], epochs=1, progress_bar=True),
    )
    assert "train classifier RM" not in capfd.readouterr().err


def test_classifier_learns(classifier) -> None:
    assert classifier.pooling == "mean"
    assert classifier.metrics["eval_accuracy"] >= 0.9
    scores = classifier(["p", "p"], ["an excellent experience", "a horrible experience"])
    assert scores.dtype == np.float32 and 0 < scores[1] < 0.5 < scores[0] < 1


def test_training_is_deterministic(backbones) -> None:
    texts, labels = sentiment_fixture(0)
    probe = ["great pills", "worst drug", ""]
    runs = [
        train_classifier(
            texts[:24], labels[:24], texts[:8], labels[:8], config(backbones["encoder"], epochs=2)
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0](["p"] * 3, probe), runs[1](["p"] * 3, probe))


def test_causal_preference_model_learns(backbones, tmp_path) -> None:
    model = train_preference(preference_fixture(0), preference_fixture(1), config(backbones["causal"]))
    assert model.pooling == "last" and model.include_prompt
    assert model.metrics["eval_accuracy"] >= 0.9  # pairwise accuracy on held-out triples
    prompts, completions = ["Review 3:"] * 3, ["a wonderful result", "a nasty result", ""]
    loaded = PreferenceRewardModel.load(model.save(tmp_path / "pref"))
    np.testing.assert_allclose(
        loaded(prompts, completions), model(prompts, completions), rtol=1e-5, atol=1e-6
    )


def test_save_load_and_pickle_give_same_scores(classifier, tmp_path) -> None:
    probe = ["great pills", "worst drug", "", "my doctor said it is useless " * 10]
    expected = classifier(["p"] * 4, probe)
    path = classifier.save(tmp_path / "clf")
    assert {"model.safetensors", "head.safetensors", "reward_model.json", "config.json"} <= set(
        os.listdir(path)
    )
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temp dirs left
    classifier.save(path)  # overwriting is atomic too
    loaded = ClassifierRewardModel.load(path)
    np.testing.assert_allclose(loaded(["p"] * 4, probe), expected, rtol=1e-5, atol=1e-6)
    assert json.loads((path / "reward_model.json").read_text())["metrics"]["eval_accuracy"] >= 0.9
    clone = pickle.loads(pickle.dumps(classifier))
    np.testing.assert_allclose(clone(["p"] * 4, probe), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="PreferenceRewardModel for 'preference'"):
        PreferenceRewardModel.load(path)
    with pytest.raises(FileNotFoundError, match="reward_model.json"):
        ClassifierRewardModel.load(tmp_path)


def test_model_bad_inputs_and_nan(classifier) -> None:
    with pytest.raises(TypeError, match=r"completions\[0\] is float"):
        classifier(["p"], [1.5])
    with pytest.raises(ValueError, match="lengths differ"):
        classifier(["p"], ["a", "b"])
    broken = pickle.loads(pickle.dumps(classifier))
    with torch.no_grad():
        broken.head.bias.fill_(math.nan)
    with pytest.raises(ValueError, match="non-finite"):
        broken(["p"], ["text"])


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="learning_rate=2.0 must be in"):
        TrainConfig(learning_rate=2.0)
    with pytest.raises(ValueError, match="pooling='max'"):
        TrainConfig(pooling="max")


def test_cli_preference_and_classifier(backbones, tmp_path) -> None:
    triples = tmp_path / "triples.jsonl"
    triples.write_text(
        "".join(
            json.dumps(dict(zip(["prompt", "chosen", "rejected"], t, strict=True))) + "\n"
            for t in preference_fixture(2)[:24]
        )
    )
    common = [
        "--base-model",
        str(backbones["encoder"]),
        "--epochs",
        "1",
        "--max-length",
        "16",
        "--no-progress-bar",
    ]
    assert (
        main(
            [
                "preference",
                "--data",
                str(triples),
                "--out",
                str(tmp_path / "pref"),
                "--logdir",
                str(tmp_path / "tb"),
                *common,
            ]
        )
        == 0
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert PreferenceRewardModel.load(tmp_path / "pref")(["a"], ["b"]).shape == (1,)
    labelled = tmp_path / "labelled.jsonl"
    texts, labels = sentiment_fixture(3)
    labelled.write_text(
        "".join(
            json.dumps({"text": t, "label": ["negative", "positive"][y]}) + "\n"
            for t, y in zip(texts[:24], labels[:24], strict=True)
        )
    )
    assert (
        main(
            [
                "classifier",
                "--data",
                str(labelled),
                "--out",
                str(tmp_path / "clf"),
                "--logdir",
                "",
                *common,
            ]
        )
        == 0
    )
    assert 0 < ClassifierRewardModel.load(tmp_path / "clf")(["a"], ["b"])[0] < 1


def test_drug_reviews_loader() -> None:
    train, test = drug_reviews("train"), drug_reviews("test")
    assert (len(train), len(test)) == (600, 379)
    assert not any("&#039;" in text or text.startswith('"') for text, _ in train)
    texts, labels = drug_sentiment_data("test")
    assert (len(texts), sum(labels)) == (343, 248)  # 36 neutral reviews dropped


@pytest.mark.slow
def test_shipped_drugs_classifier_beats_target() -> None:
    from rewards.drugs import drugs_sentiment_accuracy, drugs_sentiment_model, drugs_sentiment_path

    if not drugs_sentiment_path().is_dir():
        pytest.skip(
            "the drugs.com model is not cached; train it once: python -c 'import rewards; "
            "rewards.drugs_sentiment_model()' (a few minutes)"
        )
    accuracy = drugs_sentiment_accuracy(drugs_sentiment_model())
    assert accuracy["classifier"] >= 0.80
    assert accuracy["classifier"] > accuracy["vader"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: train_classifier([], []), "got no training texts"),
        (
            lambda: train_classifier(["good", "fine", "great"], [1, 1, 1]),
            "all 3 labels are 1: a classifier needs",
        ),
        (lambda: train_classifier(["bad"], [0]), "all 1 labels are 0"),
        (
            lambda: train_classifier(["good", "bad"], [1, 0]),
            r"of the 2 examples leaves 1 to train on, not both",
        ),
        (lambda: train_classifier(["good", "bad"], [1, 2]), r"need one label in \{0, 1\} per text.*at \[1\]"),
        (lambda: train_classifier(["good", "bad"], [1]), "got 1 labels for 2 texts"),
        (lambda: train_classifier("good", [1]), "texts is a single str"),
        (lambda: train_classifier(["good", 3], [1, 0]), r"texts\[1\] is int, expected str"),
        (
            lambda: train_classifier(["a", "b"], [1, 0], eval_texts=["c"]),
            "pass both eval_texts and eval_labels",
        ),
        (lambda: train_classifier(["a", "b"], [1, 0], [], []), "eval_texts is empty"),
        (
            lambda: train_classifier(["a", "b"], [1, 0], ["c"], [5]),
            r"1 eval_labels for 1 eval_texts, bad .*\[0\]",
        ),
        (lambda: train_preference([]), "got no training triples"),
        (lambda: train_preference([("p", "good", "bad")]), "of the 1 examples leaves 0 to train on"),
        (lambda: train_preference([("p", "good")]), r"triples\[0\] is \('p', 'good'\); each must be"),
        (
            lambda: train_preference([("p", "a", None), ("p", "a", "b")]),
            r"triples\[0\] is \('p', 'a', None\)",
        ),
        (lambda: train_preference(["p, good, bad"]), r"triples\[0\] is 'p, good, bad'"),
        (lambda: train_preference([("p", "a", "b")], eval_triples=[]), "eval_triples is empty"),
    ],
)
def test_trainers_refuse_degenerate_data(call, match: str) -> None:
    from rewards.fitting import TrainingDataError

    with pytest.raises(TrainingDataError, match=match):  # a ValueError, raised before any model loads
        call()


def test_train_config_types() -> None:
    with pytest.raises(TypeError, match="epochs='3' must be an int, e.g. epochs=4"):
        TrainConfig(epochs="3")
    with pytest.raises(TypeError, match="eval_fraction=None must be a real number"):
        TrainConfig(eval_fraction=None)
    with pytest.raises(ValueError, match="weight_decay=inf must be a finite number >= 0"):
        TrainConfig(weight_decay=math.inf)
    with pytest.raises(TypeError, match="batch_size=2.5 must be an int"):
        ClassifierRewardModel(None, None, None, "mean", batch_size=2.5)


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(
    ("kind", "lines", "match"),
    [
        ("classifier", [], "got no training texts"),
        ("classifier", ['{"text": "good", "label": 1}'] * 3, "all 3 labels are 1"),
        ("classifier", ['{"text": "good", "label": 1}', "{oops"], r"data.jsonl:2 is not valid JSON"),
        ("classifier", ['{"text": "good", "label": "maybe"}'], r"data.jsonl:1: label 'maybe' is not a class"),
        (
            "classifier",
            ['{"text": null, "label": 1}'],
            r"data.jsonl:1: 'text' is NoneType, expected a string",
        ),
        ("classifier", ['["good", 1]'], r"data.jsonl:1 is a JSON list, not an object"),
        ("preference", ['{"prompt": "p", "chosen": "a", "rejected": "b"}'], "leaves 0 to train on"),
        ("preference", ['{"prompt": "p", "chosen": "a"}'], r"data.jsonl:1 lacks \['rejected'\]"),
        ("preference", ['{"prompt": "p", "chosen": "a", "rejected": 3}'], r"data.jsonl:1: 'rejected' is int"),
    ],
)
def test_cli_refuses_degenerate_data(tmp_path, kind: str, lines: list[str], match: str) -> None:
    data = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(SystemExit) as exit_info:
        main([kind, "--data", data, "--out", str(tmp_path / "model"), "--logdir", ""])
    assert re.search(f"python -m rewards.train: error: .*{match}", str(exit_info.value.code))
    assert not (tmp_path / "model").exists()  # nothing is saved


def test_cli_exit_status_and_missing_file(tmp_path) -> None:
    import subprocess
    import sys

    data = write_lines(
        tmp_path / "data.jsonl", ['{"text": "good", "label": 1}', '{"text": "bad", "label": 1}']
    )
    command = [
        sys.executable,
        "-m",
        "rewards.train",
        "classifier",
        "--data",
        data,
        "--out",
        str(tmp_path / "m"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert (
        result.returncode == 1 and "all 2 labels are 1" in result.stderr and "Traceback" not in result.stderr
    )
    with pytest.raises(SystemExit, match=r"error: .*missing.jsonl is not a file; pass the path of a JSONL"):
        main(["classifier", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m")])
