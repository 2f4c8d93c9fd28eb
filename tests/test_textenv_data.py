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
    from textenv.tasks import drug_review_split

    ds = load_task("drugs-sentiment", split="train")
    assert len(ds) == 450 and ds.name == "drugs-sentiment/train"  # 600 reviews, 150 of them validation
    for example, row in zip(ds, drug_review_split("train"), strict=True):
        assert (example.prompt + (example.reference or "")).split() == row["review"].split()
        assert example.metadata["label"] == row["label"]
        assert len(example.prompt.split()) == max(1, len(row["review"].split()) // 2)


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
        load_task("shakespeare", split="dev")


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


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        (["ok", {"prompt": None}], TypeError, r"item 1: the prompt is NoneType \(None\); it must be a str"),
        ([{"prompt": 42}], TypeError, r"item 0: the prompt is int \(42\)"),
        ([42], TypeError, r"item 0 is int; pass a str \(the prompt\), a dict with a 'prompt' key"),
        (["ok", "", "x"], ValueError, r"item 1: the prompt '' is empty"),
        (["   \n"], ValueError, r"item 0: the prompt '   \\n' is empty"),
        ([{"prompt": ""}], ValueError, "item 0: the prompt '' is empty"),
        (["ok", {"text": "hi"}], ValueError, r"item 1 needs a 'prompt' key; got keys \['text'\]"),
        ([{"prompt": "ok", "reference": 3}], TypeError, r"item 0: the reference is int \(3\)"),
        ("Once upon a time", TypeError, "got a single str; pass a list such as"),
        ({"prompt": "hi"}, TypeError, "got a single dict"),
        (7, TypeError, "got a single int"),
    ],
)
def test_bad_records_name_the_item(items: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PromptDataset.from_list(items)


def test_bad_examples_and_names() -> None:
    with pytest.raises(ValueError, match="Example.prompt '' is empty"):
        Example("")
    with pytest.raises(TypeError, match="Example.reference must be a str or None, got int"):
        Example("p", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name=3 must be a str"):
        PromptDataset(["p"], name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"prompt": "ok"}', "", '{"prompt": null}'], r"bad.jsonl:3: the prompt is NoneType"),
        (['{"prompt": "ok"}', '{"prompt": 5}'], r"bad.jsonl:2: the prompt is int \(5\)"),
        (['{"prompt": "  "}'], r"bad.jsonl:1: the prompt '  ' is empty"),
        (['{"prompt": "ok"}', '{"text": "no prompt"}'], r"bad.jsonl:2 needs a 'prompt' key"),
        (['{"prompt": "ok"}', '["a list"]'], r"bad.jsonl:2 is a JSON list, not an object; write one object"),
        (['"just a string"'], r"bad.jsonl:1 is a JSON str, not an object"),
        (['{"prompt": "ok"}', '{"prompt": "cut'], r"bad.jsonl:2 is not valid JSON"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, lines: list[str], match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises((TypeError, ValueError), match=match):
        PromptDataset.from_jsonl(path)


def test_jsonl_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin.jsonl:2 is not UTF-8 text.*save the file as UTF-8"):
        PromptDataset.from_jsonl(path)
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "with a byte order mark"}\n')
    assert PromptDataset.from_jsonl(path).prompts == ["with a byte order mark"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("prompt,reference\nHello,world\n,orphan reference\n", r"bad.csv:3: the prompt '' is empty"),
        ("prompt,reference\nHello,world\n   ,x\n", r"bad.csv:3: the prompt '   ' is empty"),
        (
            "text,reference\nHello,world\n",
            r"bad.csv:1 has no 'prompt' column \(header: \['text', 'reference'\]\)",
        ),
        ("prompt\nHello\nHi, there\n", r"bad.csv:3 has more cells than the header \['prompt'\]; quote cells"),
        ("reference,prompt\nonly one cell\n", r"bad.csv:2: the prompt is NoneType"),
    ],
)
def test_bad_csv_row_names_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises((TypeError, ValueError), match=match):
        PromptDataset.from_csv(path)


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("prompt,reference\nHello,world\n".encode("utf-8-sig"))
    assert PromptDataset.from_csv(path).prompts == ["Hello"]


def test_from_file_picks_the_loader(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"prompt": "Hello"}\n')
    (tmp_path / "b.CSV").write_text("prompt\nHi\n")
    assert PromptDataset.from_file(tmp_path / "a.jsonl").prompts == ["Hello"]
    assert PromptDataset.from_file(str(tmp_path / "b.CSV"), name="mine").name == "mine"
    with pytest.raises(ValueError, match=r"notes.txt is not a .jsonl or .csv file"):
        PromptDataset.from_file(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="c.jsonl does not exist"):
        PromptDataset.from_file(tmp_path / "c.jsonl")


def test_error_correction_size() -> None:
    from textenv.tasks import error_correction

    for size in (0, 1, -4, 2.5):
        with pytest.raises(ValueError, match=f"size={size!r} must be an int >= 2"):
            error_correction("test", size=size)
