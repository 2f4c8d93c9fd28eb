"""agents: DeepSpeed-backed transformer policies trained by PPO and REINFORCE, with Stable-Baselines3's API.

``PPO`` and ``REINFORCE`` accept a textenv environment (``gym.make("TextGen-v0")``, a native vector env from
``gym.make_vec(..., vectorization_mode="vector_entry_point")``, an SB3 ``VecEnv``) or any env that keeps the
observation contract of ``textenv`` (Dict(input_ids, attention_mask), prompt left-padded to P, completion
right-padded to N).
"""

from agents.ppo import PPO, PPOConfig
from agents.reinforce import REINFORCE, REINFORCEConfig

__all__ = ["PPO", "PPOConfig", "REINFORCE", "REINFORCEConfig"]
