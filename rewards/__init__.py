"""Pluggable rewards for RL fine-tuning of text generators.

A reward is a callable ``reward(prompts, completions, references=None) -> np.ndarray`` (float32, one value per
sample): a plain function or a small picklable class that takes its settings in ``__init__``. There is no
registry; pass reward objects around and compose them with :class:`WeightedSum`.

Importing this package is light: torch, transformers and the metric libraries load on first use.

>>> import rewards
>>> parts = [rewards.ErrorRate(), rewards.LengthPenalty(target_length=3)]
>>> reward = rewards.WeightedSum(parts, weights=[1.0, 0.1])
>>> reward(["Repeat: the cat sat"], ["the cat sat"], ["the cat sat"]).tolist()
[0.0]
"""

from rewards.compose import LengthPenalty, RepetitionPenalty, Reward, WeightedSum
from rewards.drugs import (
    drug_sentiment_data,
    drugs_preference_model,
    drugs_preference_pairs,
    drugs_sentiment_accuracy,
    drugs_sentiment_model,
)
from rewards.drugs_review import drugs_review_sentiment_model, review_sentiment_views
from rewards.encoder import MINILM
from rewards.error_rate import ErrorRate
from rewards.fitting import TrainConfig, train_classifier, train_preference
from rewards.models import ClassifierRewardModel, PreferenceRewardModel, ScalarRewardModel
from rewards.sentiment import VaderSentiment
from rewards.similarity import BLEU, ChrF, EmbeddingSimilarity, RougeL
from rewards.validation import CheckedReward, check_batch, check_scores
from rewards.whole_text import WholeText

__all__ = [
    "BLEU",
    "CheckedReward",
    "MINILM",
    "ChrF",
    "ClassifierRewardModel",
    "EmbeddingSimilarity",
    "ErrorRate",
    "LengthPenalty",
    "PreferenceRewardModel",
    "RepetitionPenalty",
    "Reward",
    "RougeL",
    "ScalarRewardModel",
    "TrainConfig",
    "VaderSentiment",
    "WeightedSum",
    "WholeText",
    "check_batch",
    "check_scores",
    "drug_sentiment_data",
    "drugs_preference_model",
    "drugs_preference_pairs",
    "drugs_review_sentiment_model",
    "drugs_sentiment_accuracy",
    "drugs_sentiment_model",
    "review_sentiment_views",
    "train_classifier",
    "train_preference",
]
