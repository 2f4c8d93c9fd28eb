"""Built-in prompt tasks. ``TASKS`` maps each task name to the function that builds its dataset.

Every task has three disjoint splits (:data:`SPLITS`): ``"train"`` to train on, ``"validation"`` to choose
settings on (sweeps, presets, pilots) and ``"test"`` for the reported results only. The validation split is
carved out of the training data (:func:`drug_review_split`: every 4th review of the drugs.com train file;
:func:`shakespeare`: every 10th speech, beside the test speeches), so the test prompts are the ones they have
always been. Sizes (train / validation / test prompts): drugs-sentiment 450 / 149 / 379, drugs-turnaround
181 / 58 / 146, shakespeare 7,230 / 904 / 903, error-correction 1000 / 200 / 300, review-keywords
1000 / 200 / 300. (Before the validation split, train had 600, 239 and 8,134 of the first three.)

- ``"drugs-sentiment"`` (``DEFAULT_TASK``): continue a real drugs.com review positively. The prompt is the
  first half of a review's words, the reference the rest; metadata holds the label, drug and condition.
  Test is the package's test file (379 reviews); train and validation share its train file (600 reviews).
- ``"drugs-turnaround"`` (``TextGen-Sentiment-v0``): turn a complaint around. The prompt is the opening of a
  negative or neutral drugs.com review (its first third, at most 40 words), the reference the rest; 10 % of
  the prompts are openings of positive reviews. See :func:`drugs_turnaround`.
- ``"shakespeare"``: continue a speech. The prompt is the speaker and the first two lines of a speech with
  at least three lines, the reference its third line. Of every ten speeches the tenth is in ``"test"``,
  the fifth in ``"validation"``, the rest in ``"train"``.
- ``"error-correction"``: correct a real sentence (a drugs.com review sentence or a Shakespeare line)
  corrupted with seeded typos, dropped and swapped words (:mod:`textenv.noise`). The prompt is a one-shot
  example (``ERROR_PROMPT``) ending in ``"Text: <corrupted>\\nCorrected:"``, the reference the original
  sentence. See :func:`error_correction`.
- ``"review-keywords"``: write a drugs.com review sentence that uses 3 or 4 given words of it (CommonGen
  style, RL4LMs' concept-to-text task on patient reviews). The prompt is a one-shot example
  (``KEYWORDS_PROMPT``) ending in ``"Words: <w1>, <w2>, <w3>\\nSentence:"``, the reference the sentence the
  words came from. See :func:`review_keywords`.

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
from textenv.hubs import hub_prompts, is_hub_task
from textenv.noise import corrupt

DEFAULT_TASK = "drugs-sentiment"
SPLITS = ("train", "validation", "test")
"""The splits of every task: train on ``"train"``, choose settings on ``"validation"``, report ``"test"``."""
VALIDATION_EVERY = 4
"""Every 4th review of the drugs.com train file (and every task built from it) is validation."""
ERROR_PROMPT = (
    "Fix the typos.\n"
    "Text: My headache went awya after days two, but felt I tired the first week.\n"
    "Corrected: My headache went away after two days, but I felt tired the first week.\n"
    "Text: {corrupted}\nCorrected:"
)
"""The error-correction prompt: one worked example (a typo, two swapped word pairs; written for this prompt,
in neither split), then the sentence to correct. The answer is one line: the task env ends the completion
at the newline. Without the example SmolLM2-135M-Instruct talks past the sentence (zero-shot WER 1.38)."""
NOISE_SEED = 1234
_SPEAKER = re.compile(r"^[A-Z][A-Z' ,&-]*\.$")
_FIRST_ACT = re.compile(r"^ACT [IV1]", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def drug_review_split(split: str) -> tuple[dict[str, str], ...]:
    """The drugs.com review rows of a task split. ``"test"`` is the package's test file. Its train file is
    split: every :data:`VALIDATION_EVERY`-th row (the 4th, 8th, ...) is ``"validation"`` unless its text is
    also in the test file, the other rows are ``"train"`` unless their text is in validation. Validation
    shares no review text with train or test (train and test share one review, as the files do).

    >>> [len(drug_review_split(s)) for s in SPLITS]
    [450, 149, 379]
    >>> held = {row["review"] for row in drug_review_split("validation")}
    >>> any(row["review"] in held for split in ("train", "test") for row in drug_review_split(split))
    False
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}.")
    if split == "test":
        return data.drug_review_rows("test")
    rows = data.drug_review_rows("train")
    test_texts = {row["review"] for row in data.drug_review_rows("test")}
    held = tuple(
        row
        for index, row in enumerate(rows)
        if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 and row["review"] not in test_texts
    )
    if split == "validation":
        return held
    held_texts = {row["review"] for row in held}
    return tuple(
        row
        for index, row in enumerate(rows)
        if index % VALIDATION_EVERY != VALIDATION_EVERY - 1 and row["review"] not in held_texts
    )


def drugs_sentiment(split: str = "train") -> PromptDataset:
    """Positive continuation of drugs.com review openings (first half of the words → the rest)."""
    examples = []
    for row in drug_review_split(split):
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


TURNAROUND_POSITIVE_SHARE = 0.1
"""Share of positive reviews among the ``"drugs-turnaround"`` prompts."""
TURNAROUND_SEED = 0
"""Seeds the draw of those positive reviews and the order of the prompts."""


def drugs_turnaround(
    split: str = "train", positive_share: float = TURNAROUND_POSITIVE_SHARE, seed: int = TURNAROUND_SEED
) -> PromptDataset:
    """Turn a drugs.com review around: the opening of a negative or neutral review -> the rest.

    The prompt is a review's opening (:func:`rewards.drugs_review.opening_length`: its first third, at most 40
    words, so that most of the review is left to the continuation), the reference the rest of the review.
    Every negative and neutral review of ``split`` is in, plus positive ones drawn with
    ``np.random.default_rng(seed)`` so that they make up ``positive_share`` of the prompts (default 10 %: a
    policy should not learn that every opening is a complaint to contradict); the same generator then
    shuffles the prompts, so any leading slice is a mix. The train and validation splits leave out reviews
    whose text is also in the test split. Metadata: ``label``, ``drug``, ``condition``, ``id``.

    >>> ds = drugs_turnaround("test")
    >>> len(ds), sum(e.metadata["label"] == "positive" for e in ds), ds.name
    (146, 15, 'drugs-turnaround/test')
    """
    from rewards.drugs_review import opening_length

    if isinstance(positive_share, bool) or not isinstance(positive_share, (int, float)):
        raise TypeError(f"positive_share={positive_share!r} must be a number in [0, 1), e.g. 0.1")
    if not 0.0 <= positive_share < 1.0:
        raise ValueError(f"positive_share={positive_share!r} must be in [0, 1), e.g. 0.1 for 10 %")
    rows = drug_review_split(split)
    if split != "test":
        test_texts = {row["review"] for row in data.drug_review_rows("test")}
        rows = tuple(row for row in rows if row["review"] not in test_texts)
    others = [row for row in rows if row["label"] in ("negative", "neutral")]
    positives = [row for row in rows if row["label"] == "positive"]
    count = round(positive_share / (1.0 - positive_share) * len(others))
    if count > len(positives):
        raise ValueError(
            f"positive_share={positive_share} needs {count} positive reviews; {split!r} has "
            f"{len(positives)}. Use a smaller share, e.g. 0.1"
        )
    rng = np.random.default_rng(seed)
    chosen = others + [positives[int(i)] for i in sorted(rng.choice(len(positives), count, replace=False))]
    examples = []
    for index in rng.permutation(len(chosen)):
        row = chosen[int(index)]
        words = row["review"].split()
        opening = opening_length(len(words))
        examples.append(
            Example(
                prompt=" ".join(words[:opening]),
                reference=" " + " ".join(words[opening:]) if words[opening:] else None,
                metadata={key: row[key] for key in ("label", "drug", "condition", "id")},
            )
        )
    return PromptDataset(examples, name=f"drugs-turnaround/{split}")


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
            part = "test" if index % 10 == 9 else "validation" if index % 10 == 4 else "train"
            index += 1
            if part != split:
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
    for row in drug_review_split(split):
        sentences += [s for s in _SENTENCE_END.split(row["review"]) if 6 <= len(s.split()) <= 25]
    return sentences


SPLIT_SIZES = {"train": 1000, "validation": 200, "test": 300}
"""Default sizes of the sentence tasks' splits (error-correction, review-keywords)."""


@lru_cache(maxsize=4)
def error_correction(split: str = "train", size: int | None = None) -> PromptDataset:
    """Sentences to un-corrupt: drugs.com review sentences (from the same split) and Shakespeare lines (the
    references of task ``"shakespeare"``'s split), half and half; by default 1000 train, 200 validation,
    300 test (:data:`SPLIT_SIZES`).

    Example ``i`` of source ``s`` is corrupted with ``np.random.default_rng([NOISE_SEED, s, i])``, so the data
    is identical on every machine and does not depend on iteration order. The prompt is ``ERROR_PROMPT``.
    Metadata: ``source``, ``noise_seed``, ``corrupted`` (the sentence as the prompt shows it: copying it is
    the baseline a correction must beat).
    """
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 2):
        raise ValueError(f"size={size!r} must be an int >= 2 (half of it from each source), or None")
    size = size or SPLIT_SIZES[split]
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
            corrupted = corrupt(sentence, rng)
            examples.append(
                Example(
                    prompt=ERROR_PROMPT.format(corrupted=corrupted),
                    reference=sentence,
                    metadata={
                        "source": source,
                        "noise_seed": [NOISE_SEED, source_id, index],
                        "corrupted": corrupted,
                    },
                )
            )
    return PromptDataset(examples, name=f"error-correction/{split}")


KEYWORDS_PROMPT = (
    "Write a sentence from a medicine review that uses the given words.\n"
    "Words: tired, sleep, week\n"
    "Sentence: I felt tired for a week, but now I sleep through the night.\n"
    "Words: {keywords}\nSentence:"
)
"""The review-keywords prompt: one worked example (written for it, in neither split), then the words. The
answer is one line: the task env ends the completion at the newline."""
KEYWORD_SEED = 4321
_FUNCTION_WORDS = frozenset(
    "about after again also always been because before being could does doing done during each even ever "
    "every from have having here into just like made make many more most much must never only other over "
    "really same since some still such than that their them then there these they thing things think this "
    "those through until very went were what when where which while will with would your".split()
)


def _keywords(sentence: str, rng: np.random.Generator, count: int = 4) -> list[str] | None:
    """Up to ``count`` distinct content words of ``sentence`` (4+ letters, not a function word), drawn with
    ``rng`` in a shuffled order; None when it has fewer than 3."""
    words = dict.fromkeys(w.lower() for w in re.findall(r"[A-Za-z]+", sentence))
    content = [w for w in words if len(w) >= 4 and w not in _FUNCTION_WORDS]
    if len(content) < 3:
        return None
    return [content[int(i)] for i in rng.permutation(len(content))[:count]]


@lru_cache(maxsize=4)
def review_keywords(split: str = "train", size: int | None = None) -> PromptDataset:
    """Concept-to-text on drugs.com review sentences (of the same split): the prompt gives 3 or 4 content
    words of a sentence in a shuffled order, the reference is the sentence; by default 1000 train, 200
    validation, 300 test (:data:`SPLIT_SIZES`).

    Why this is the similarity task (``TextGen-Similarity-v0``): the reward is the embedding cosine to the
    reference, so the reference must be predictable from the prompt for the reward to be learnable. The
    next line of a Shakespeare speech (the previous design) is not: zero-shot scored 0.17, RL left it there,
    and copying the previous line scores only 0.23. Here the words fix most of the sentence's content. On the
    first 32 test prompts SmolLM2 scores 0.18 zero-shot, the words alone 0.60, another review sentence 0.29,
    the real sentence 1.0; among SmolLM2's own samples the reward rises with the given words they use (0.12
    with none, 0.24 with one, 0.40 with two), so the policy has a signal to climb and room to climb it.

    Sentence ``i`` draws its words with ``np.random.default_rng([KEYWORD_SEED, i])``, so the data is identical
    on every machine. Metadata: ``keywords``, ``source``.

    >>> ds = review_keywords("test")
    >>> len(ds), ds[0].prompt.endswith("Words: " + ", ".join(ds[0].metadata["keywords"]) + "\\nSentence:")
    (300, True)
    >>> all(w in ds[0].reference.lower() for w in ds[0].metadata["keywords"])
    True
    """
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"size={size!r} must be an int >= 1, or None")
    size = size or SPLIT_SIZES[split]
    examples = []
    for index, sentence in enumerate(_spread(_review_sentences(split), size * 2)):
        words = _keywords(sentence, np.random.default_rng([KEYWORD_SEED, index]))
        if words is None:
            continue
        examples.append(
            Example(
                prompt=KEYWORDS_PROMPT.format(keywords=", ".join(words)),
                reference=sentence,
                metadata={"keywords": words, "source": "drugs.com"},
            )
        )
    return PromptDataset(_spread(examples, size), name=f"review-keywords/{split}")


TASKS: dict[str, Callable[[str], PromptDataset]] = {
    "drugs-sentiment": drugs_sentiment,
    "shakespeare": shakespeare,
    "error-correction": error_correction,
    "review-keywords": review_keywords,
    "drugs-turnaround": drugs_turnaround,
}


def load_task(name: str = DEFAULT_TASK, split: str = "train") -> PromptDataset:
    """Build the prompt dataset of a built-in task; ``split`` is ``"train"``, ``"validation"`` (to choose
    settings on) or ``"test"`` (to report). A hub task, ``"reasoning_gym:<name>"``, comes from
    :mod:`textenv.hubs`."""
    if name not in TASKS and not is_hub_task(name):
        raise ValueError(
            f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)}, or 'reasoning_gym:<name>' "
            "(textenv.hubs). "
            "Or pass dataset=PromptDataset.from_jsonl(...) / a list of prompts."
        )
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}.")
    return hub_prompts(name, split) if is_hub_task(name) else TASKS[name](split)
