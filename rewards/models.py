"""Learned reward models (DeepSpeed-Chat step 2): a transformer backbone with a scalar head.

- :class:`ClassifierRewardModel` scores ``P(positive | completion)`` (sigmoid of the head), trained on
  labelled texts with binary cross-entropy.
- :class:`PreferenceRewardModel` scores ``r(prompt, completion)`` (the raw head output), trained on
  (prompt, chosen, rejected) triples with the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)``.

The backbone is any local HF directory loaded with ``AutoModel`` (no LM head): a bidirectional encoder such as
the bundled all-MiniLM-L6-v2, or a causal LM as in DeepSpeed-Chat (an SFT output or an exported policy: a
``*ForCausalLM`` directory, whose LM head is dropped). The two read their input differently
(``text_format``): an encoder reads the text pair (prompt, completion) and mean-pools its tokens; a causal
LM reads ``prompt + completion + EOS`` as one sequence (the start cut when too long, so the end is always
seen) and the head scores the hidden state of the last real token, which has attended to everything.
Training lives in :mod:`rewards.fitting`. A model saves as a directory: ``model.safetensors`` +
``config.json`` (the backbone, via ``save_pretrained``), the tokenizer files, ``head.safetensors`` and
``reward_model.json`` (pooling, text format, metrics); ``save`` writes it to a temporary directory first and
then renames it into place, so a reader never sees half a model. Loading reads safetensors and JSON only.

Scores are float32 arrays. A model that outputs NaN or inf makes the call raise ``ValueError`` (no silent
replacement). An empty completion is scored like any text: the model sees only its special tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from infra.storage import atomic_directory, check_replaceable, mark_owned
from rewards.encoder import (
    MINILM,
    default_pooling,
    forward_pooled,
    load_backbone,
    tokenize,
    tokenize_causal,
)
from rewards.validation import CheckedReward, check_setting

CONFIG_NAME = "reward_model.json"
HEAD_NAME = "head.safetensors"
ModelT = TypeVar("ModelT", bound="ScalarRewardModel")
TEXT_FORMATS = ("pair", "causal")


class ScalarRewardModel(CheckedReward):
    """Backbone + ``Linear(hidden, 1)`` head over pooled token states; base of the two reward models below.

    Build a fresh (untrained) one with :meth:`create`, a trained one with :meth:`load` or
    :mod:`rewards.train`.
    Subclasses set ``kind`` and :meth:`transform` (head logit -> score).
    """

    kind = "scalar"
    include_prompt_default = True

    def __init__(
        self,
        tokenizer: Any,
        backbone: Any,
        head: Any,
        pooling: str,
        max_length: int = 128,
        batch_size: int = 64,
        include_prompt: bool = True,
        metrics: dict[str, float] | None = None,
        text_format: str = "pair",
    ) -> None:
        if text_format not in TEXT_FORMATS:
            raise ValueError(
                f"text_format={text_format!r} is not known; use 'pair' (encoders: a text pair) or 'causal' "
                "(decoders: prompt + completion + EOS as one sequence)"
            )
        if pooling not in ("mean", "last"):
            raise ValueError(
                f"pooling={pooling!r} is not known; use 'mean' (encoders) or 'last' (causal LMs)"
            )
        check_setting("max_length", max_length, "int", "128")
        check_setting("batch_size", batch_size, "int", "64")
        check_setting("include_prompt", include_prompt, "bool", "True")
        if max_length < 2 or batch_size < 1:
            raise ValueError(f"max_length={max_length} must be >= 2 and batch_size={batch_size} >= 1")
        self.tokenizer, self.backbone, self.head = tokenizer, backbone, head
        self.pooling, self.max_length, self.batch_size = pooling, max_length, batch_size
        self.include_prompt, self.text_format = include_prompt, text_format
        self.metrics = dict(metrics or {})

    @classmethod
    def create(
        cls: type[ModelT],
        base_model: str = MINILM,
        pooling: str = "auto",
        max_length: int = 128,
        include_prompt: bool | None = None,
        seed: int = 0,
    ) -> ModelT:
        """A model on a pretrained backbone with a freshly initialised head (seeded with ``seed``).

        ``pooling="auto"`` means mean pooling for BERT-family encoders and last-token pooling otherwise. A
        causal LM backbone reads ``prompt + completion + EOS`` as one sequence (``text_format="causal"``).
        ``include_prompt=None`` takes the class default (classifier: completion only; preference: both).
        """
        import torch

        tokenizer, backbone = load_backbone(base_model)
        torch.manual_seed(seed)
        head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.normal_(head.weight, std=1.0 / np.sqrt(backbone.config.hidden_size + 1))
        torch.nn.init.zeros_(head.bias)
        causal = default_pooling(backbone) == "last"
        resolved = default_pooling(backbone) if pooling == "auto" else pooling
        prompt = cls.include_prompt_default if include_prompt is None else include_prompt
        return cls(
            tokenizer,
            backbone,
            head,
            resolved,
            max_length=max_length,
            include_prompt=prompt,
            text_format="causal" if causal else "pair",
        )

    def parameters(self) -> list[Any]:
        """Trainable parameters (backbone and head)."""
        return [*self.backbone.parameters(), *self.head.parameters()]

    def train(self, mode: bool = True) -> ScalarRewardModel:
        """Switch dropout on (``mode=True``) or off."""
        self.backbone.train(mode)
        self.head.train(mode)
        return self

    def logits(self, prompts: Sequence[str] | None, completions: Sequence[str]) -> Any:
        """Head outputs ``(B,)`` as a torch tensor (with grad when enabled), on the head's device and in its
        dtype. Prompts are ignored unless ``include_prompt``; they are then the first segment of a text pair
        (``text_format="pair"``) or the start of the sequence (``"causal"``)."""
        use_prompts = prompts if self.include_prompt else None
        if self.text_format == "causal":
            batch = tokenize_causal(self.tokenizer, use_prompts, completions, self.max_length)
        else:
            first, second = (use_prompts, completions) if use_prompts is not None else (completions, None)
            batch = tokenize(self.tokenizer, first, second, self.max_length)
        weight = self.head.weight
        batch = {key: value.to(weight.device) for key, value in batch.items()}
        pooled = forward_pooled(self.backbone, batch, self.pooling)  # (B, H)
        return self.head(pooled.to(weight.dtype)).squeeze(-1)  # (B,)

    def transform(self, logits: Any) -> Any:
        """Head logit -> reward score."""
        return logits

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Scores in batches of ``batch_size`` (texts sorted by length so padding stays short), float64."""
        import torch

        was_training = self.backbone.training
        self.train(False)
        order = sorted(
            range(len(completions)), key=lambda index: len(prompts[index]) + len(completions[index])
        )
        scores = np.zeros(len(completions), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                logits = self.logits([prompts[i] for i in chunk], [completions[i] for i in chunk])
                scores[chunk] = self.transform(logits).double().cpu().numpy()
        self.train(was_training)
        return scores

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        return self.score(prompts, completions)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to directory ``path`` atomically with :func:`infra.storage.atomic_directory`."""
        from safetensors.torch import save_file

        target = Path(path).resolve()
        check_replaceable(target, "reward model", _is_reward_model_dir)
        with atomic_directory(target) as staging:
            mark_owned(staging, "reward model")
            self.backbone.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                staging / HEAD_NAME,
            )
            settings = {
                "kind": self.kind,
                "pooling": self.pooling,
                "max_length": self.max_length,
                "include_prompt": self.include_prompt,
                "text_format": self.text_format,
                "metrics": self.metrics,
            }
            (staging / CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        return target

    @classmethod
    def load(cls: type[ModelT], path: str | os.PathLike[str], batch_size: int = 64) -> ModelT:
        """Load a model written by :meth:`save` (offline, CPU, eval mode)."""
        import torch
        from safetensors.torch import load_file

        directory = Path(path)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file} not found; pass a directory written by {cls.__name__}.save"
            )
        settings = json.loads(config_file.read_text())
        if settings["kind"] != cls.kind:
            raise ValueError(
                f"{directory} holds a {settings['kind']!r} reward model; load it with the matching class "
                f"(ClassifierRewardModel for 'classifier', PreferenceRewardModel for 'preference')"
            )
        tokenizer, backbone = load_backbone(str(directory))
        head = torch.nn.Linear(backbone.config.hidden_size, 1)
        head.load_state_dict(load_file(directory / HEAD_NAME))
        head.eval()
        return cls(
            tokenizer,
            backbone,
            head,
            settings["pooling"],
            max_length=settings["max_length"],
            batch_size=batch_size,
            include_prompt=settings["include_prompt"],
            metrics=settings.get("metrics"),
            text_format=settings.get("text_format", "pair"),  # models saved before it existed: pairs
        )

    def __getstate__(self) -> dict[str, Any]:
        from safetensors.torch import save

        state = dict(self.__dict__)
        state["backbone"] = (self.backbone.config, save(dict(self.backbone.state_dict())))
        state["head"] = save(dict(self.head.state_dict()))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import torch
        from safetensors.torch import load
        from transformers import AutoModel

        config, weights = state["backbone"]
        backbone = AutoModel.from_config(config)
        backbone.load_state_dict(load(weights))
        head = torch.nn.Linear(config.hidden_size, 1)
        head.load_state_dict(load(state["head"]))
        state.update(backbone=backbone.float().eval(), head=head.eval())
        state.setdefault("text_format", "pair")  # pickled before it existed
        self.__dict__.update(state)


class ClassifierRewardModel(ScalarRewardModel):
    """Reward = ``P(positive | completion)`` in ``(0, 1)``: the sigmoid of the scalar head.

    Train with ``python -m rewards.train classifier`` or :func:`rewards.fitting.train_classifier`; the
    shipped drugs.com sentiment model comes from :func:`rewards.drugs.drugs_sentiment_model`. By default the
    prompt is ignored (``include_prompt=False``): the label describes the text itself.
    """

    kind = "classifier"
    include_prompt_default = False

    def transform(self, logits: Any) -> Any:
        return logits.sigmoid()


class PreferenceRewardModel(ScalarRewardModel):
    """Reward = the scalar head output for prompt + completion (unbounded; only differences are meaningful).

    Train with ``python -m rewards.train preference --data triples.jsonl`` or
    :func:`rewards.fitting.train_preference` (Bradley-Terry loss on chosen vs rejected completions).
    """

    kind = "preference"
    include_prompt_default = True


def classifier_accuracy(model: ScalarRewardModel, texts: Sequence[str], labels: Sequence[int]) -> float:
    """Fraction of texts whose score is on the label's side of 0.5."""
    scores = model.score([""] * len(texts), list(texts))
    return float(np.mean((scores >= 0.5) == np.asarray(labels, dtype=bool)))


def classifier_metrics(
    model: ScalarRewardModel, texts: Sequence[str], labels: Sequence[int]
) -> dict[str, float]:
    """Held-out accuracy (``P >= 0.5``) and the mean score of positive and of negative texts."""
    scores = model.score([""] * len(texts), list(texts))
    positive = np.asarray(labels, dtype=bool)
    metrics = {"eval_accuracy": float(np.mean((scores >= 0.5) == positive))}
    for name, rows in (("positive", positive), ("negative", ~positive)):
        if rows.any():  # a held-out set may hold one class only
            metrics[f"eval_{name}_mean"] = float(scores[rows].mean())
    return metrics


def pairwise_accuracy(model: ScalarRewardModel, triples: Sequence[tuple[str, str, str]]) -> float:
    """Fraction of (prompt, chosen, rejected) triples where chosen scores strictly above rejected."""
    return preference_metrics(model, triples)["eval_accuracy"]


def preference_metrics(model: ScalarRewardModel, triples: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """Held-out pairwise accuracy (chosen strictly above rejected) and score statistics, as DeepSpeed-Chat
    reports them: the mean chosen and rejected scores, and the mean and std of the margin."""
    prompts = [prompt for prompt, _, _ in triples]
    chosen = model.score(prompts, [c for _, c, _ in triples])
    rejected = model.score(prompts, [r for _, _, r in triples])
    margin = chosen - rejected
    return {
        "eval_accuracy": float(np.mean(margin > 0)),
        "eval_chosen_mean": float(chosen.mean()),
        "eval_rejected_mean": float(rejected.mean()),
        "eval_margin_mean": float(margin.mean()),
        "eval_margin_std": float(margin.std()),
    }


def _is_reward_model_dir(path: Path) -> bool:
    """A reward model saved before the ownership mark (its settings and head files)."""
    return (path / CONFIG_NAME).is_file() and (path / HEAD_NAME).is_file()
