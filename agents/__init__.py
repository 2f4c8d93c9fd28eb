"""agents: DeepSpeed-backed transformer agents for textenv, with Stable-Baselines3's API.

``PPO``, ``REINFORCE`` and ``GRPO`` train an actor-critic by policy gradients; ``DQN`` reads the LM's logits
as Q-values over the vocabulary (token-level envs only). Each accepts a textenv environment
(``gym.make("TextGen-v0")``, a native vector env from ``gym.make_vec(..., vectorization_mode=
"vector_entry_point")``, an SB3 ``VecEnv``) or any env that keeps the observation contract of ``textenv``
(Dict(input_ids, attention_mask), prompt left-padded to P, completion right-padded to N).

``ALGORITHMS`` (:mod:`agents.algorithms`) names every algorithm the scripts take: ``"rloo"`` is ``REINFORCE``
with ``baseline="rloo"``, ``"soft-dqn"`` is ``DQN`` with soft Q-learning.
"""

from agents.algorithms import ALGORITHMS, Algorithm
from agents.dqn import DQN, DQNConfig
from agents.grpo import GRPO, GRPOConfig
from agents.ppo import PPO, PPOConfig
from agents.reinforce import REINFORCE, REINFORCEConfig

__all__ = [
    "ALGORITHMS",
    "DQN",
    "GRPO",
    "Algorithm",
    "DQNConfig",
    "GRPOConfig",
    "PPO",
    "PPOConfig",
    "REINFORCE",
    "REINFORCEConfig",
]
