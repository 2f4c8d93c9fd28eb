"""textenv: RL fine-tuning of text-generating transformers as an ordinary Gymnasium problem.

>>> import gymnasium as gym, textenv
>>> env = gym.make("TextGen-v0", model="tiny-sp", max_new_tokens=4)
>>> obs, info = env.reset(seed=0)
>>> sorted(obs), sorted(info)
(['attention_mask', 'input_ids'], ['prompt', 'reference'])
"""

from gymnasium.envs.registration import register

from textenv.data import Example, PromptDataset
from textenv.envs import TextGenEnv, TextGenSeqEnv, TextGenSeqVectorEnv, TextGenVectorEnv
from textenv.envs.chat_core import ChatTemplateError, check_chat_template
from textenv.models import DEFAULT_MODEL, MODEL_NAMES, load_model, load_tokenizer
from textenv.task_envs import recommended_agent_kwargs
from textenv.tasks import DEFAULT_TASK, TASKS, load_task

__version__ = "0.1.0"

register(
    id="TextGen-v0",
    entry_point="textenv.envs.token_env:TextGenEnv",
    vector_entry_point="textenv.envs.token_vector_env:TextGenVectorEnv",
)
register(
    id="TextGenSeq-v0",
    entry_point="textenv.envs.seq_env:TextGenSeqEnv",
    vector_entry_point="textenv.envs.seq_env:TextGenSeqVectorEnv",
)
# The four task envs (textenv.task_envs documents their setup): token-level TextGen-v0 envs with a fixed task
# and default reward; textenv.recommended_agent_kwargs(env_id) gives the agent settings of their benchmarks.
register(
    id="TextGen-Sentiment-v0",
    entry_point="textenv.task_envs:make_env",
    vector_entry_point="textenv.task_envs:make_vector_env",
    kwargs={"benchmark": "sentiment"},
)
register(
    id="TextGen-ErrorRate-v0",
    entry_point="textenv.task_envs:make_env",
    vector_entry_point="textenv.task_envs:make_vector_env",
    kwargs={"benchmark": "error-rate"},
)
register(
    id="TextGen-Similarity-v0",
    entry_point="textenv.task_envs:make_env",
    vector_entry_point="textenv.task_envs:make_vector_env",
    kwargs={"benchmark": "similarity"},
)
register(
    id="TextGen-Preference-v0",
    entry_point="textenv.task_envs:make_env",
    vector_entry_point="textenv.task_envs:make_vector_env",
    kwargs={"benchmark": "preference"},
)
# Multi-turn conversations (textenv.chat_tasks documents the tasks): token level and one message per step,
# then one token-level id per built-in task.
register(
    id="TextChat-v0",
    entry_point="textenv.envs.chat_env:TextChatEnv",
    vector_entry_point="textenv.envs.chat_vector_env:TextChatVectorEnv",
)
register(
    id="TextChatSeq-v0",
    entry_point="textenv.envs.chat_seq_env:TextChatSeqEnv",
    vector_entry_point="textenv.envs.chat_seq_env:TextChatSeqVectorEnv",
)
register(
    id="TextChat-Guess-v0",
    entry_point="textenv.envs.chat_env:TextChatEnv",
    vector_entry_point="textenv.envs.chat_vector_env:TextChatVectorEnv",
    kwargs={"task": "guess", "max_turn_tokens": 8, "max_turns": 6},
)
register(
    id="TextChat-Calculator-v0",
    entry_point="textenv.envs.chat_env:TextChatEnv",
    vector_entry_point="textenv.envs.chat_vector_env:TextChatVectorEnv",
    # the tool's description fills about 200 of SmolLM2's tokens, a call about 30
    kwargs={
        "task": "calculator",
        "max_prompt_tokens": 224,
        "max_new_tokens": 256,
        "max_turn_tokens": 48,
        "max_turns": 4,
    },
)
register(
    id="TextChat-UserSim-v0",
    entry_point="textenv.envs.chat_env:TextChatEnv",
    vector_entry_point="textenv.envs.chat_vector_env:TextChatVectorEnv",
    kwargs={"task": "usersim", "max_turn_tokens": 32, "max_turns": 3, "max_new_tokens": 224},
)

__all__ = [
    "ChatTemplateError",
    "DEFAULT_MODEL",
    "DEFAULT_TASK",
    "MODEL_NAMES",
    "TASKS",
    "Example",
    "PromptDataset",
    "TextGenEnv",
    "TextGenSeqEnv",
    "TextGenSeqVectorEnv",
    "TextGenVectorEnv",
    "check_chat_template",
    "load_model",
    "load_task",
    "load_tokenizer",
    "recommended_agent_kwargs",
]
