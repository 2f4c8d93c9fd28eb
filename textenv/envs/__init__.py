"""The text-generation environments: token level (TextGen-v0) and sequence level (TextGenSeq-v0)."""

from textenv.envs.core import PromptSampler, TextGenCore, default_reward
from textenv.envs.seq_env import TextGenSeqEnv, TextGenSeqVectorEnv
from textenv.envs.token_env import TextGenEnv
from textenv.envs.token_vector_env import TextGenVectorEnv

__all__ = [
    "PromptSampler",
    "TextGenCore",
    "TextGenEnv",
    "TextGenSeqEnv",
    "TextGenSeqVectorEnv",
    "TextGenVectorEnv",
    "default_reward",
]
