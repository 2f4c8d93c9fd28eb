"""PPO for transformer policies (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019).

Per-token reward = ``-kl_coef * (log pi - log pi_ref)`` on every generated token, plus the task reward on the
last one. GAE(gamma, lambda) over the generated tokens, whitened advantages, clipped surrogate and
clipped value loss, entropy bonus, several epochs of minibatches, gradient clipping (DeepSpeed
``gradient_clipping``) and an early stop when the approximate KL to the rollout policy passes
``1.5 * target_kl``. Every minibatch computes the log-probs and values of all its tokens in one forward pass.
With ``turn_level_credit=True`` (multi-turn envs) the advantages are per agent turn instead
(:mod:`agents.turn_credit`).

>>> PPOConfig(clip_range=0.2).n_epochs
4
"""

from __future__ import annotations

from dataclasses import dataclass

from agents import distributed
from agents.config import PolicyGradientConfig
from agents.losses import compute_gae, masked_mean, masked_whiten, ppo_clip_loss, value_clip_loss
from agents.on_policy import OnPolicyAlgorithm


@dataclass
class PPOConfig(PolicyGradientConfig):
    """PPO settings (on top of :class:`~agents.config.PolicyGradientConfig`)."""

    n_epochs: int = 4
    """Passes over each rollout."""
    gamma: float = 1.0
    """Discount over generated tokens."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip."""
    clip_range_vf: float | None = 0.2
    """Value clip around the rollout values; None disables it."""
    vf_coef: float = 0.1
    """Weight of the value loss (small: the value head shares the LM trunk)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    target_kl: float | None = 0.1
    """Stop the epochs once the approximate KL to the rollout policy exceeds 1.5x this; None never stops."""
    whiten_advantages: bool = True
    """Normalise advantages over each rollout."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_epochs < 1:
            raise ValueError(f"n_epochs must be >= 1, got {self.n_epochs}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(
                f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}"
            )
        if self.clip_range <= 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}; 0.2 is the usual value")
        if self.clip_range_vf is not None and self.clip_range_vf <= 0:
            raise ValueError(f"clip_range_vf must be > 0 or None, got {self.clip_range_vf}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ValueError("vf_coef and ent_coef must be >= 0")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl}")


class PPO(OnPolicyAlgorithm):
    """PPO with a DeepSpeed-backed actor-critic transformer, usable with SB3 callbacks and tools.

    >>> import gymnasium as gym, textenv
    >>> from agents import PPO
    >>> env = gym.make_vec("TextGen-v0", num_envs=2, model="tiny-sp", max_new_tokens=4,
    ...                    vectorization_mode="vector_entry_point")
    >>> agent = PPO(env, model="tiny-sp", episodes_per_rollout=4, minibatch_size=4, seed=0)
    >>> agent = agent.learn(total_timesteps=8)
    >>> agent.num_timesteps >= 8
    True
    """

    config_class = PPOConfig
    algo_name = "PPO"
    config: PPOConfig

    def train(self) -> None:
        cfg = self.config
        batch, scored, shared_groups = self._score_rollout()  # shared_groups: prompts computed once per group
        mask = batch.gen_mask  # (E, N)
        # task rewards sit on the agent token they followed: the last, or each turn's end in a conversation
        token_rewards = batch.token_rewards - self.kl_ctl.value * scored.kl  # (E, N)
        advantages, returns = compute_gae(token_rewards, scored.old_values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.turn_level_credit:  # one advantage per agent turn; the value head still fits the GAE returns
            advantages = self._turn_advantages(batch, token_rewards)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        pg_losses, value_losses, entropies, clip_fractions, approx_kls = [], [], [], [], []
        continue_training = True
        for _epoch in range(cfg.n_epochs):
            for samples in self._minibatches(batch, scored, shared_groups, advantages, returns):
                ev = self._evaluate(samples)  # (b, N) log-probs, entropy and values, with gradients
                assert ev.values is not None and ev.entropy is not None
                pg_loss, clip_fraction, approx_kl = ppo_clip_loss(
                    ev.logprobs, samples.old_logprobs, samples.advantages, samples.gen_mask, cfg.clip_range
                )
                value_loss = value_clip_loss(
                    ev.values, samples.old_values, samples.returns, samples.gen_mask, cfg.clip_range_vf
                )
                entropy = masked_mean(ev.entropy, samples.gen_mask)
                loss = pg_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
                self._gradient_step(self._with_ptx(loss))  # + ptx_coef * LM loss (PPO-ptx), if set
                pg_losses.append(pg_loss.item())
                value_losses.append(value_loss.item())
                entropies.append(entropy.item())
                clip_fractions.append(clip_fraction.item())
                approx_kls.append(approx_kl.item())
                # decided on the KL of every rank, so that all ranks of a launcher stop at the same step
                if cfg.target_kl is not None and distributed.any_rank(approx_kl.item() > 1.5 * cfg.target_kl):
                    continue_training = False
                    break
            self._n_updates += 1
            if not continue_training:
                break

        stats = {"policy_loss": pg_losses, "value_loss": value_losses, "entropy": entropies}
        stats |= {"clip_fraction": clip_fractions, "approx_kl": approx_kls}
        self._finish_update(scored, episodes=len(batch.rewards), stats=stats)
