"""Data layer: real corpora, tasks, user files, validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from textenv import Example, PromptDataset, load_task
from textenv.data import drug_reviews, shakespeare_files, shakespeare_lines, strip_gutenberg
from textenv.tasks import TASKS


def test_drug_reviews_counts_and_labels() -> None:
    train, test = drug_reviews("train"), drug_reviews("test")
    assert (len(train), len(test)) == (600, 379)
    assert {r.label for r in train + test} == {"positive", "neutral", "negative"}
    assert all(r.text and r.text == r.text.strip() for r in train)


def test_drug_reviews_html_unescaped() -> None:
    texts = [r.text for r in drug_reviews("train") + drug_reviews("test")]
    assert not any(re.search(r"&(#\d+|[a-z]+);", t) for t in texts)
    assert any("'" in t for t in texts) and any("’" in t for t in texts)
    assert not any(t.startswith('"') for t in texts)


def test_shakespeare_corpus() -> None:
    assert len(shakespeare_files()) == 42
    lines = shakespeare_lines()
    assert len(lines) > 100_000
    assert not any("gutenberg" in line.lower() for line in lines)
    assert strip_gutenberg("head\n*** START OF X ***\nbody\n*** END OF X ***\nlicence") == "body"


def test_drugs_task_prompt_is_first_half() -> None:
    ds = load_task("drugs-sentiment", split="train")
    assert len(ds) == 600 and ds.name == "drugs-sentiment/train"
    for example, review in zip(ds, drug_reviews("train"), strict=False):
        assert (example.prompt + (example.reference or "")).split() == review.text.split()
        assert example.metadata["label"] == review.label
        assert len(example.prompt.split()) == max(1, len(review.text.split()) // 2)


def test_splits_are_deterministic_and_disjoint() -> None:
    for name in TASKS:
        train, test = load_task(name, "train"), load_task(name, "test")
        assert [e.prompt for e in train] == [e.prompt for e in load_task(name, "train")]
        assert len(train) > len(test) > 0
    shk_train = {e.prompt for e in load_task("shakespeare", "train")}
    assert not shk_train & {e.prompt for e in load_task("shakespeare", "test")}


def test_unknown_task_and_split() -> None:
    with pytest.raises(ValueError, match="Known tasks: drugs-sentiment, shakespeare"):
        load_task("imdb")
    with pytest.raises(ValueError, match="split"):
        load_task("shakespeare", split="validation")


def test_from_list_jsonl_csv(tmp_path: Path) -> None:
    records = [{"prompt": "Hello", "reference": "world", "label": "x"}, {"prompt": "Hi, there"}]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    csv = tmp_path / "prompts.csv"
    csv.write_text('prompt,reference,label\nHello,world,x\n"Hi, there",,\n', encoding="utf-8")
    for ds in (
        PromptDataset.from_list(records),
        PromptDataset.from_jsonl(jsonl),
        PromptDataset.from_csv(csv),
    ):
        assert [e.prompt for e in ds] == ["Hello", "Hi, there"]
        assert [e.reference for e in ds] == ["world", None]
        assert ds[0].metadata["label"] == "x"
    assert PromptDataset.from_jsonl(jsonl).name == "prompts"
    mixed = PromptDataset.from_list(["a", Example("b", "c")])
    assert mixed[1].reference == "c" and len(mixed[:1]) == 1


def test_bad_datasets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        PromptDataset.from_list([])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        PromptDataset.from_jsonl(empty)
    with pytest.raises(ValueError, match="'prompt' key"):
        PromptDataset.from_list([{"text": "no prompt"}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        PromptDataset.from_jsonl(broken)
