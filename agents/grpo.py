"""GRPO and its variants (Dr. GRPO, DAPO, BNPO, GSPO) for transformer policies, with no critic.

The env draws each prompt ``group_size`` times in a row (make it with ``group_size=k``, k >= 2); each
completion's advantage is its reward relative to the other completions of its prompt
(:func:`agents.group_losses.group_advantages`), the same for all its tokens. The loss is the clipped surrogate
over ``n_epochs`` passes of minibatches of whole groups, plus ``beta`` times the k3 KL to the reference
(``beta=0``: no reference term, TRL's default), averaged as ``loss_type`` says. The options and where each
comes from are documented on :class:`GRPOConfig`; the math, with hand-computed examples, is in
:mod:`agents.group_losses`.

The variants by name (TRL's ``GRPOConfig`` uses the same option names):

- GRPO (Shao et al. 2024): ``loss_type="grpo", scale_rewards="group"``;
- Dr. GRPO (Liu et al. 2025): ``loss_type="dr_grpo", scale_rewards="none"``;
- DAPO (Yu et al. 2025): ``loss_type="dapo", epsilon_high=0.28, dynamic_sampling=True`` and optionally
  ``overlong_buffer``;
- GSPO (Zheng et al. 2025): ``importance_sampling_level="sequence"``.

On multi-turn envs ``turn_level_credit=True`` replaces the group advantage by one per agent turn, with a
leave-one-out (or batch-normalised) baseline per turn index within the prompt's group
(:mod:`agents.turn_credit`).

>>> GRPOConfig(loss_type="dr_grpo", scale_rewards="none").epsilon_high is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents import distributed
from agents.config import PolicyGradientConfig, check_number
from agents.group_losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    ROLLOUT_CORRECTIONS,
    SCALE_REWARDS,
    group_advantages,
    group_policy_loss,
    informative_groups,
    overlong_penalty,
    rollout_correction,
)
from agents.losses import masked_mean
from agents.on_policy import OnPolicyAlgorithm
from agents.rollout import RolloutBatch


@dataclass
class GRPOConfig(PolicyGradientConfig):
    """GRPO settings (on top of :class:`~agents.config.PolicyGradientConfig`; its reward-side KL penalty is
    off: GRPO's KL is a loss term, ``beta``)."""

    init_kl_coef: float = 0.0
    """Kept at 0: GRPO puts the KL to the reference in the loss (``beta``), not in the reward."""
    target_kl_ref: float | None = None
    """Kept at None (no adaptive reward-side KL coefficient); see ``init_kl_coef``."""
    n_epochs: int = 1
    """Passes over each rollout (TRL's ``num_iterations``); with 1 the ratio is 1 at the first step and the
    clip only acts on later minibatches of the pass."""
    beta: float = 0.0
    """Weight of the k3 KL to the reference model in the loss (0: no reference forward is needed for the
    loss; the rollout's KL is still measured and logged). TRL's default is 0."""
    loss_type: str = "dapo"
    """How per-token losses are averaged: ``grpo`` (per completion, then over completions), ``dr_grpo``
    (sum / (completions x max_new_tokens)), ``dapo`` (sum / the update batch's tokens over all ranks; TRL's
    default), ``bnpo`` (sum / this rank's minibatch tokens); see
    :func:`agents.group_losses.aggregate_loss`."""
    scale_rewards: str = "group"
    """Divide advantages by the reward std of the ``group`` (GRPO), of the ``batch`` (REINFORCE++), or
    ``none`` (Dr. GRPO)."""
    epsilon: float = 0.2
    """Lower clip range: the ratio is clipped below at 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip range (None: ``epsilon``); DAPO's clip-higher uses 0.28 with epsilon 0.2."""
    importance_sampling_level: str = "token"
    """``token``: one ratio per token (GRPO); ``sequence``: the geometric mean of a completion's token ratios
    for all its tokens (GSPO, Zheng et al. 2025; steadier for long completions and mixture-of-experts)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: groups whose rewards are all equal (zero advantage) are dropped, and the
    rollout goes on until ``episodes_per_rollout`` episodes in informative groups are in, or until
    ``max_sampling_factor`` times that many were collected (logged as ``rollout/dynamic_*``)."""
    max_sampling_factor: float = 3.0
    """Dynamic sampling's cap: collect at most this many times ``episodes_per_rollout`` episodes."""
    mask_truncated_completions: bool = False
    """Leave completions that hit ``max_new_tokens`` without a stop token out of the loss (DAPO): their reward
    judges text that was cut off."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: the last ``overlong_buffer`` token slots cost up to 1 reward,
    linearly (0: off). See :func:`agents.group_losses.overlong_penalty`."""
    rollout_correction: str = "none"
    """Correct for a rollout copy (``rollout_precision="bf16"``, ``rollout_merge_lora``) whose log-probs
    differ from the training network's: ``token_tis`` / ``sequence_tis`` (truncated importance weights),
    ``token_mask`` / ``sequence_mask`` (drop tokens or completions whose ratio is outside
    [1/threshold, threshold]), or ``none``. The raw ratio's min / mean / max is logged either way
    (``train/rollout_ratio_*``) when a copy acts."""
    rollout_correction_threshold: float = 2.0
    """Truncation level (``*_tis``) or band (``*_mask``) of ``rollout_correction``."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    keep_kv_cache: bool = False
    """Off as for REINFORCE: with one epoch, the first minibatch's ratio must be exactly 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            "loss_type": (self.loss_type, LOSS_TYPES),
            "scale_rewards": (self.scale_rewards, SCALE_REWARDS),
            "importance_sampling_level": (self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS),
            "rollout_correction": (self.rollout_correction, ROLLOUT_CORRECTIONS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not known; use one of {allowed}")
        if self.init_kl_coef != 0 or self.target_kl_ref is not None:
            raise ValueError(
                f"GRPO's KL to the reference is the loss term beta, not a reward penalty: got init_kl_coef="
                f"{self.init_kl_coef}, target_kl_ref={self.target_kl_ref}; leave them at 0 and None and set "
                "beta (e.g. beta=0.04), or use PPO/REINFORCE for a reward-side KL"
            )
        if not isinstance(self.n_epochs, int) or isinstance(self.n_epochs, bool) or self.n_epochs < 1:
            raise ValueError(f"n_epochs must be an int >= 1, got {self.n_epochs!r}")
        for name, example in (("beta", "0.04"), ("epsilon", "0.2"), ("ent_coef", "0.0")):
            check_number(name, getattr(self, name), example)
        if self.beta < 0 or self.ent_coef < 0:
            raise ValueError(f"beta and ent_coef must be >= 0, got {self.beta} and {self.ent_coef}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}; 0.2 is the usual value")
        if self.epsilon_high is not None:
            check_number("epsilon_high", self.epsilon_high, "0.28")
            if self.epsilon_high <= 0:
                raise ValueError(f"epsilon_high must be > 0 or None (= epsilon), got {self.epsilon_high}")
        check_number("max_sampling_factor", self.max_sampling_factor, "3.0")
        if self.max_sampling_factor < 1:
            raise ValueError(f"max_sampling_factor must be >= 1, got {self.max_sampling_factor}")
        check_number("rollout_correction_threshold", self.rollout_correction_threshold, "2.0")
        if self.rollout_correction_threshold <= 1:
            raise ValueError(
                f"rollout_correction_threshold must be > 1, got {self.rollout_correction_threshold}; e.g. 2.0"
            )
        if not isinstance(self.overlong_buffer, int) or isinstance(self.overlong_buffer, bool):
            raise TypeError(f"overlong_buffer must be an int (0: off), got {self.overlong_buffer!r}")
        if self.overlong_buffer < 0:
            raise ValueError(f"overlong_buffer must be >= 0 (0: off), got {self.overlong_buffer}")
        for flag in ("dynamic_sampling", "mask_truncated_completions"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")


def select_episodes(batch: RolloutBatch, keep: torch.Tensor) -> RolloutBatch:
    """The episodes of ``batch`` where the (E,) bool ``keep`` is True."""
    fields = (None if field is None else field[keep] for field in batch)
    return RolloutBatch(*fields)  # type: ignore[arg-type]  # the optional fields stay None


class GRPO(OnPolicyAlgorithm):
    """GRPO (and Dr. GRPO, DAPO, BNPO, GSPO through :class:`GRPOConfig`) with a DeepSpeed-backed transformer
    policy; the value head of the shared actor-critic is not used.

    >>> import gymnasium as gym, textenv
    >>> from agents import GRPO
    >>> env = gym.make_vec("TextGen-v0", num_envs=4, model="tiny-sp", max_new_tokens=4, group_size=4,
    ...                    vectorization_mode="vector_entry_point")
    >>> agent = GRPO(env, model="tiny-sp", episodes_per_rollout=8, minibatch_size=4, seed=0)
    >>> agent.learn(total_timesteps=8).num_timesteps >= 8
    True
    """

    config_class = GRPOConfig
    algo_name = "GRPO"
    config: GRPOConfig

    def _setup_model(self) -> None:
        super()._setup_model()
        cfg = self.config
        if self.group_size < 2:
            hint = (
                "; gradient_checkpointing=True turns prompt groups off" if cfg.gradient_checkpointing else ""
            )
            raise ValueError(
                "GRPO compares the completions of one prompt, but the env draws each prompt once: make it "
                "with group_size=k (k >= 2), e.g. gym.make_vec('TextGen-v0', num_envs=8, group_size=4, ...)"
                + hint
            )
        if cfg.rollout_correction != "none" and self.rollout_copy is None:
            raise ValueError(
                f"rollout_correction={cfg.rollout_correction!r} corrects for a rollout copy, but this agent "
                "acts with the network it trains (ratio 1 by construction); set rollout_precision='bf16' "
                "(fp32 training) or rollout_merge_lora=True, or leave rollout_correction='none'"
            )
        if cfg.overlong_buffer >= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer ({cfg.overlong_buffer}) must be below max_new_tokens "
                f"({self.max_new_tokens}); e.g. overlong_buffer={self.max_new_tokens // 4}"
            )

    # ---- rollouts ------------------------------------------------------------------------------------------
    def _informative(self) -> np.ndarray:
        """(E,) bool over the rollout's finished episodes: their group's rewards are not all equal."""
        rewards = torch.tensor([e.reward for e in self.rollout.episodes], dtype=torch.float32)
        keys: dict[object, int] = {}
        groups = torch.tensor([keys.setdefault(e.group, len(keys)) for e in self.rollout.episodes])
        return informative_groups(rewards, groups).numpy() if len(groups) else np.zeros(0, bool)

    def _rollout_done(self) -> bool:
        cfg = self.config
        if not cfg.dynamic_sampling:
            return super()._rollout_done()
        cap = int(cfg.max_sampling_factor * cfg.episodes_per_rollout)
        return int(self._informative().sum()) >= cfg.episodes_per_rollout or len(self.rollout) >= cap

    def _truncated(self, batch: RolloutBatch) -> torch.Tensor:
        """(E,) bool: the completion filled every slot and its last token is not a stop token."""
        stops = torch.as_tensor(np.atleast_1d(np.asarray(self.stop_token_ids)), device=batch.input_ids.device)
        full = batch.attention_mask[:, -1] > 0
        return full & ~torch.isin(batch.input_ids[:, -1], stops)

    # ---- learning ------------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, n_new = self.config, self.max_new_tokens
        assert self.rollout_batch is not None
        collected = len(self.rollout_batch.rewards)
        if cfg.dynamic_sampling:
            keep = torch.as_tensor(self._informative(), device=self.rollout_batch.rewards.device)
            self.rollout_batch = select_episodes(self.rollout_batch, keep)
            self.logger.record("rollout/dynamic_collected", collected)
            self.logger.record("rollout/dynamic_kept_fraction", float(keep.float().mean()))
            if not bool(keep.any()):  # every group had equal rewards, up to the cap: nothing to learn from
                self.logger.record("train/skipped_update", 1.0)
                return
        correcting = self.rollout_copy is not None  # log the copy's ratio; correct it if asked
        batch, scored, shared_groups = self._score_rollout(recompute=correcting)
        mask = batch.gen_mask  # (E, N)
        if cfg.mask_truncated_completions:
            mask = mask * (~self._truncated(batch)).to(mask.dtype)[:, None]
        rewards = batch.rewards
        if cfg.overlong_buffer:
            rewards = rewards + overlong_penalty(batch.gen_mask.sum(-1), n_new, cfg.overlong_buffer)
        if cfg.turn_level_credit:  # (E, N): one advantage per agent turn; scale_rewards is not used
            token_rewards = batch.token_rewards.clone()
            if cfg.overlong_buffer:  # on the last agent token, as the episode's reward
                last = mask.shape[1] - 1 - torch.flip(batch.gen_mask, [1]).argmax(1)
                token_rewards[torch.arange(len(rewards)), last] += rewards - batch.rewards
            advantages = self._turn_advantages(batch._replace(gen_mask=mask), token_rewards)
        else:
            advantages = group_advantages(rewards, batch.group_ids, cfg.scale_rewards)  # (E,)
        weights: torch.Tensor | None = None
        stats: dict[str, Any] = {}
        if correcting and batch.old_logprobs is not None:  # the copy's log-probs vs the update path's
            corr = rollout_correction(
                scored.old_logprobs,
                batch.old_logprobs,
                mask,
                mode=cfg.rollout_correction,
                threshold=cfg.rollout_correction_threshold,
            )
            weights = corr.weights if cfg.rollout_correction != "none" else None
            stats |= {"rollout_ratio_min": corr.ratio_min, "rollout_ratio_mean": corr.ratio_mean}
            stats |= {"rollout_ratio_max": corr.ratio_max, "rollout_masked_fraction": corr.masked_fraction}
        epsilon_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        batch = batch._replace(gen_mask=mask)  # the minibatches carry the loss mask

        losses, clip_low, clip_high, kls, entropies = [], [], [], [], []
        for _epoch in range(cfg.n_epochs):
            for samples in self._minibatches(batch, scored, shared_groups, advantages, rewards, weights):
                ev = self._evaluate(samples)  # (b, N) log-probs and entropy, with gradients
                assert ev.entropy is not None
                mb_mask = samples.gen_mask
                tokens = distributed.all_mean(float(mb_mask.sum())) if cfg.loss_type == "dapo" else 0.0
                terms = group_policy_loss(
                    ev.logprobs,
                    samples.old_logprobs,
                    samples.advantages,
                    mb_mask,
                    epsilon=cfg.epsilon,
                    epsilon_high=epsilon_high,
                    importance_sampling_level=cfg.importance_sampling_level,
                    loss_type=cfg.loss_type,
                    max_new_tokens=n_new,
                    token_count=tokens,
                    weights=samples.weights,
                    ref_logprobs=samples.ref_logprobs,
                    beta=cfg.beta,
                )
                entropy = masked_mean(ev.entropy, mb_mask)
                self._gradient_step(self._with_ptx(terms.loss - cfg.ent_coef * entropy))
                losses.append(terms.loss.item())
                clip_low.append(terms.clip_low.item())
                clip_high.append(terms.clip_high.item())
                kls.append(terms.kl.item())
                entropies.append(entropy.item())
            self._n_updates += 1

        stats |= {"policy_loss": losses, "clip_ratio_low": clip_low, "clip_ratio_high": clip_high}
        stats |= {"kl_k3": kls, "entropy": entropies, "advantage_abs": float(advantages.abs().mean())}
        self._finish_update(scored, episodes=len(rewards), stats=stats)
