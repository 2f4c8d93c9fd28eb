"""The text-generation environments: token level (TextGen-v0) and sequence level (TextGenSeq-v0)."""

from textenv.envs.arguments import ChatArguments, EnvArguments, TextGenArguments
from textenv.envs.core import PromptSampler, TextGenCore, TokenCore, default_reward
from textenv.envs.seq_env import TextGenSeqEnv, TextGenSeqVectorEnv
from textenv.envs.token_env import TextGenEnv
from textenv.envs.token_vector_env import TextGenVectorEnv

__all__ = [
    "ChatArguments",
    "EnvArguments",
    "PromptSampler",
    "TextGenArguments",
    "TextGenCore",
    "TextGenEnv",
    "TextGenSeqEnv",
    "TextGenSeqVectorEnv",
    "TextGenVectorEnv",
    "TokenCore",
    "default_reward",
]
