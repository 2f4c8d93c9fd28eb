"""Learned reward models (DeepSpeed-Chat step 2): a transformer backbone with a scalar head.

- :class:`ClassifierRewardModel` scores ``P(positive | completion)`` (sigmoid of the head), trained on
  labelled texts with binary cross-entropy.
- :class:`PreferenceRewardModel` scores ``r(prompt, completion)`` (the raw head output), trained on
  (prompt, chosen, rejected) triples with the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)``.

The backbone is any local HF directory loaded with ``AutoModel`` (no LM head): a bidirectional encoder such as
the bundled all-MiniLM-L6-v2 (mean pooling) or a small causal LM (last-token pooling). Training lives in
:mod:`rewards.fitting`. A model saves as a directory: ``model.safetensors`` + ``config.json`` (the backbone,
via ``save_pretrained``), the tokenizer files, ``head.safetensors`` and ``reward_model.json``; ``save`` writes
it to a temporary directory first and then renames it into place, so a reader never sees half a model.

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

from rewards.encoder import MINILM, default_pooling, forward_pooled, load_backbone, tokenize
from rewards.storage import atomic_directory
from rewards.validation import CheckedReward, check_setting

CONFIG_NAME = "reward_model.json"
HEAD_NAME = "head.safetensors"
ModelT = TypeVar("ModelT", bound="ScalarRewardModel")


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
    ) -> None:
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
        self.include_prompt = include_prompt
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

        ``pooling="auto"`` means mean pooling for BERT-family encoders and last-token pooling otherwise.
        ``include_prompt=None`` takes the class default (classifier: completion only; preference: both).
        """
        import torch

        tokenizer, backbone = load_backbone(base_model)
        torch.manual_seed(seed)
        head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.normal_(head.weight, std=1.0 / np.sqrt(backbone.config.hidden_size + 1))
        torch.nn.init.zeros_(head.bias)
        resolved = default_pooling(backbone) if pooling == "auto" else pooling
        prompt = cls.include_prompt_default if include_prompt is None else include_prompt
        return cls(tokenizer, backbone, head, resolved, max_length=max_length, include_prompt=prompt)

    def parameters(self) -> list[Any]:
        """Trainable parameters (backbone and head)."""
        return [*self.backbone.parameters(), *self.head.parameters()]

    def train(self, mode: bool = True) -> ScalarRewardModel:
        """Switch dropout on (``mode=True``) or off."""
        self.backbone.train(mode)
        self.head.train(mode)
        return self

    def logits(self, prompts: Sequence[str] | None, completions: Sequence[str]) -> Any:
        """Head outputs ``(B,)`` as a torch tensor (with grad when enabled). Prompts are ignored unless
        ``include_prompt``; they are then the first segment of a text pair."""
        first, second = (
            (prompts, completions) if self.include_prompt and prompts is not None else (completions, None)
        )
        batch = tokenize(self.tokenizer, first, second, self.max_length)
        return self.head(forward_pooled(self.backbone, batch, self.pooling)).squeeze(-1)  # (B,)

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
                scores[chunk] = self.transform(logits).double().numpy()
        self.train(was_training)
        return scores

    def scores(
        self, prompts: list[str], completions: list[str], references: list[str | None] | None
    ) -> np.ndarray:
        return self.score(prompts, completions)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to directory ``path`` atomically with :func:`rewards.storage.atomic_directory`."""
        from safetensors.torch import save_file

        target = Path(path).resolve()
        with atomic_directory(target) as staging:
            self.backbone.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            save_file(
                {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, staging / HEAD_NAME
            )
            settings = {
                "kind": self.kind,
                "pooling": self.pooling,
                "max_length": self.max_length,
                "include_prompt": self.include_prompt,
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
        state.update(backbone=backbone.eval(), head=head.eval())
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
