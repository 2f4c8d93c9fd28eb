"""agents: DeepSpeed-backed transformer agents for textenv, with Stable-Baselines3's API.

``PPO`` and ``REINFORCE`` train an actor-critic by policy gradients; ``DQN`` reads the LM's logits as
Q-values over the vocabulary (token-level envs only). Each accepts a textenv environment
(``gym.make("TextGen-v0")``, a native vector env from ``gym.make_vec(..., vectorization_mode=
"vector_entry_point")``, an SB3 ``VecEnv``) or any env that keeps the observation contract of ``textenv``
(Dict(input_ids, attention_mask), prompt left-padded to P, completion right-padded to N).
"""

from agents.dqn import DQN, DQNConfig
from agents.grpo import GRPO, GRPOConfig
from agents.ppo import PPO, PPOConfig
from agents.reinforce import REINFORCE, REINFORCEConfig

__all__ = ["DQN", "DQNConfig", "GRPO", "GRPOConfig", "PPO", "PPOConfig", "REINFORCE", "REINFORCEConfig"]
