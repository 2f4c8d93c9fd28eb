"""OnPolicyAlgorithm: the base of the policy-gradient agents (PPO, REINFORCE, GRPO), as SB3's
``OnPolicyAlgorithm``.

On top of :class:`~agents.base.TextAlgorithm` it owns what only the policy-gradient family has:

- the sampling distribution (``temperature``, ``top_k``, ``top_p``: :class:`~agents.sampling.Sampling`) that
  rollouts draw from and updates score under, for token-level (KV-cached) and sequence-level
  (``generate``) envs;
- the adaptive KL controller ``self.kl_ctl``: created, moved after each update by the rollout's episode KL,
  averaged over the ranks of a launcher, logged and checkpointed here and nowhere else (the algorithms read
  its ``value``);
- the rollout copy (:class:`~agents.precision.RolloutCopy`: bf16, merged LoRA or ZeRO-3's whole weights), the
  EMA of the weights (:mod:`agents.ema`) and the pretraining mix (:mod:`agents.ptx`);
- the rollout batch (``self.rollout_batch``, built once per rollout), its scoring before an update
  (:mod:`agents.scoring`) and ``learn``: collect ``episodes_per_rollout`` episodes, ``train()``, log; repeat.

A subclass implements ``train()``: :meth:`OnPolicyAlgorithm._score_rollout`, its advantages, a loop over
the ``RolloutSamples`` of :meth:`OnPolicyAlgorithm._minibatches` scored by :meth:`OnPolicyAlgorithm._evaluate`
and stepped by ``_gradient_step(self._with_ptx(loss))``, then :meth:`OnPolicyAlgorithm._finish_update`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from agents import distributed, run_logging
from agents.base import TextAlgorithm
from agents.config import PolicyGradientConfig
from agents.decode import Decoder, resolve_decode
from agents.ema import ExponentialMovingAverage
from agents.kv_cache import StepCache, cached_step
from agents.losses import AdaptiveKLController, logprobs_from_logits
from agents.policy import (
    ActorCritic,
    CompletionEval,
    action_logits,
    evaluate_completions,
    generate_completions,
)
from agents.precision import RolloutCopy, acting_copy
from agents.ptx import PretrainingMix
from agents.rollout import RolloutBatch
from agents.sampling import Sampling, draw, process_logits
from agents.saving import cache_arrays
from agents.scoring import RolloutSamples, ScoredBatch, rollout_samples, score_batch
from agents.turn_credit import turn_advantages

SelfOnPolicy = TypeVar("SelfOnPolicy", bound="OnPolicyAlgorithm")


class OnPolicyAlgorithm(TextAlgorithm):
    """Shared base of :class:`~agents.PPO`, :class:`~agents.REINFORCE` and :class:`~agents.GRPO`; see the
    module docstring."""

    config_class = PolicyGradientConfig
    config: PolicyGradientConfig

    # ---- setup ---------------------------------------------------------------------------------------------
    def _before_engine(self) -> None:
        decay = self.config.ema_decay
        # before the engine casts the LM to bf16: the average starts from the fp32 weights
        self.ema = ExponentialMovingAverage(self.policy.lm, decay) if decay is not None else None
        super()._before_engine()  # refuses ZeRO-3 with an EMA
        self.rollout_copy: RolloutCopy | None = None
        if self.zero_stage == 3:  # the whole-weights network the rollouts act with (one gather per rollout)
            self.rollout_copy = acting_copy(self.policy, self.precision, self.config)

    def _setup_model(self) -> None:
        super()._setup_model()
        cfg = self.config
        self.kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl_ref, cfg.kl_horizon)
        self.sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p)
        self.decoder = Decoder() if resolve_decode(cfg.decode, self.device) == "compiled" else None
        bf16_copy = cfg.rollout_precision == "bf16" and self.precision == "fp32"
        if (bf16_copy or cfg.rollout_merge_lora) and self.rollout_copy is None:
            self.rollout_copy = acting_copy(self.policy, self.precision, cfg)
        self.rollout_batch: RolloutBatch | None = None
        self.ptx: PretrainingMix | None = None
        self._ptx_losses: list[float] = []
        if cfg.ptx_coef > 0 and cfg.ptx_dataset is not None:
            tokenizer = self._env_attr("tokenizer")
            if tokenizer is None:
                raise ValueError(
                    "ptx_dataset needs the policy's tokenizer, but the env has no `tokenizer` attribute; "
                    "give the env one (textenv's envs have it) or set ptx_coef=0"
                )
            mix = cfg.ptx_dataset
            self.ptx = PretrainingMix(mix, tokenizer, cfg.minibatch_size, pad_token_id=self.pad_token_id)

    @property
    def actor(self) -> ActorCritic:
        """The network the rollouts act with: the rollout copy if there is one, else the trained network."""
        return self.rollout_copy.network if self.rollout_copy else self.policy

    # ---- acting --------------------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """(B, n_actions) processed logits -> (B,) token ids (sampled, or argmax when deterministic)."""
        return logits.argmax(-1) if deterministic else draw(logits)

    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Sequence-level action: (B, N) completion ids; see :func:`agents.policy.generate_completions`
        (compiled, on a static cache, with ``decode="compiled"``)."""

        def run(compiled: bool) -> torch.Tensor:
            return generate_completions(
                self.actor.lm,
                ids,
                mask,
                max_new_tokens=self.max_new_tokens,
                n_actions=self.n_actions,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.stop_token_ids,
                deterministic=deterministic,
                sampling=self.sampling,
                compiled=compiled,
            )

        return self.decoder.attempt(run) if self.decoder is not None else run(False)

    def _predict_actions(
        self, ids: torch.Tensor, mask: torch.Tensor, state: Any, deterministic: bool
    ) -> tuple[torch.Tensor, StepCache | None]:
        """Sampled (or greedy) tokens with the per-env KV cache ``state``, or whole completions."""
        if not self.token_level:
            return self._generate(ids, mask, deterministic), None
        cache = state if isinstance(state, StepCache) else StepCache()
        logits, _ = cached_step(self.actor, ids, mask, self.prompt_len, cache)
        logits = process_logits(action_logits(logits, self.n_actions), self.sampling)
        return self._sample(logits, deterministic), cache

    def _act(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """Token level: (B,) sampled tokens and their (log-prob, value), recorded for the update. Sequence
        level: (B, N) generated completions, whose log-probs are computed when the rollout is scored."""
        if not self.token_level:
            return self._generate(ids, mask, deterministic=False), None
        logits, values = cached_step(
            self.actor, ids, mask, self.prompt_len, self._step_cache, decoder=self.decoder
        )
        logits = process_logits(action_logits(logits, self.n_actions), self.sampling)  # (B, A) float32
        actions = self._sample(logits, deterministic=False)
        assert values is not None
        return actions, (logprobs_from_logits(logits, actions).cpu().numpy(), values.float().cpu().numpy())

    # ---- rollouts ------------------------------------------------------------------------------------------
    def _before_rollout(self) -> None:
        self.rollout_batch = None
        if self.rollout_copy is not None:
            self.rollout_copy.sync()  # the trained weights, cast (ZeRO-3: gathered once) into the copy

    def _rollout_done(self) -> bool:
        return len(self.rollout) >= self.config.episodes_per_rollout

    def _store_rollout(self, completed: bool) -> None:
        """The finished episodes, stacked once into ``self.rollout_batch`` (None after a stopped rollout)."""
        self.rollout_batch = self.rollout.build(self.device) if completed else None

    def _score_rollout(
        self, recompute: bool = False
    ) -> tuple[RolloutBatch, ScoredBatch, torch.Tensor | None]:
        """The rollout batch, scored before the update (:func:`agents.scoring.score_batch` under the agent's
        sampling, recomputed on the update path when a rollout copy in another dtype acted or ``recompute``
        asks for it), and the group ids whose prompts are computed once (None without prompt groups)."""
        batch = self.rollout_batch
        assert batch is not None, "train() runs after collect_rollouts() has built the batch"
        shared_groups = batch.group_ids if self.group_size > 1 else None
        copy = self.rollout_copy
        recompute = recompute or (copy is not None and copy.dtype != next(self.policy.parameters()).dtype)
        start = time.perf_counter()
        scored = score_batch(
            batch,
            self.policy,
            self.reference,
            max_new_tokens=self.max_new_tokens,
            n_actions=self.n_actions,
            chunk_size=self.config.minibatch_size,
            sampling=self.sampling,
            recompute=recompute,
            shared_groups=shared_groups,
        )
        self._score_seconds = time.perf_counter() - start  # the time breakdown's "score" phase
        return batch, scored, shared_groups

    # ---- learning ------------------------------------------------------------------------------------------
    def _minibatches(
        self,
        batch: RolloutBatch,
        scored: ScoredBatch,
        shared_groups: torch.Tensor | None,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> Iterator[RolloutSamples]:
        """One shuffled pass over the scored rollout in minibatches of ``config.minibatch_size`` episodes
        (whole prompt groups with ``shared_groups``), each carrying its advantages, returns and ``weights``
        (:func:`agents.scoring.rollout_samples`): SB3's ``rollout_buffer.get(batch_size)``."""
        return rollout_samples(
            batch,
            scored,
            advantages=advantages,
            returns=returns,
            minibatch_size=self.config.minibatch_size,
            shared_groups=shared_groups,
            weights=weights,
        )

    def _turn_advantages(self, batch: RolloutBatch, token_rewards: torch.Tensor) -> torch.Tensor:
        """(E, N) turn-level advantages (``turn_level_credit``; :func:`agents.turn_credit.turn_advantages`)
        of (E, N) ``token_rewards`` over the agent tokens; the leave-one-out baseline compares episodes of
        one prompt group when the env has groups (``group_size > 1``), else the whole batch."""
        cfg = self.config
        groups = batch.group_ids if self.group_size > 1 else torch.zeros_like(batch.group_ids)
        return turn_advantages(token_rewards, batch.gen_mask, groups, cfg.turn_gamma, cfg.turn_baseline)

    def _evaluate(self, samples: RolloutSamples) -> CompletionEval:
        """Log-probs, entropy and values of a minibatch's tokens under the trained network (with gradients),
        scored under the rollout's sampling distribution: SB3's ``evaluate_actions``."""
        return evaluate_completions(
            self.engine,
            samples.input_ids,
            samples.attention_mask,
            n_new=self.max_new_tokens,
            n_actions=self.n_actions,
            with_entropy=True,
            sampling=self.sampling,
            group_ids=samples.group_ids,
        )  # (b, N)

    def _with_ptx(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus ``ptx_coef`` times the LM loss on a fresh ``ptx_dataset`` minibatch (PPO-ptx; see
        :mod:`agents.ptx`), recorded for ``train/ptx_loss``; ``loss`` itself without a pretraining mix."""
        if self.ptx is None:
            return loss
        lm_loss = self.ptx.loss(self.engine, self.device)
        self._ptx_losses.append(lm_loss.item())
        return loss + self.config.ptx_coef * lm_loss

    def _after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.policy.lm)

    def _finish_update(self, scored: ScoredBatch, episodes: int, stats: dict[str, Any]) -> None:
        """After an update: move the adaptive KL coefficient by the rollout's mean episode KL and log it, the
        rollout-copy gap (if any), ``stats`` (``train/<name>``: the mean of a list, or a value) and the ptx
        loss of this update."""
        episode_kl = float(scored.kl.sum(-1).mean())
        self.kl_ctl.update(episode_kl, n_steps=episodes)
        self.logger.record("rollout/kl", episode_kl)
        if scored.rollout_gap is not None:
            self.logger.record("train/rollout_logprob_gap", scored.rollout_gap)
        losses, self._ptx_losses = self._ptx_losses, []
        for name, value in {**stats, **({"ptx_loss": losses} if losses else {})}.items():
            self.logger.record(f"train/{name}", float(np.mean(value)))
        self.logger.record("train/kl_coef", self.kl_ctl.value)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def learn(  # type: ignore[override]  # SB3's signature; returns the agent
        self: SelfOnPolicy,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfOnPolicy:
        """SB3's learn: collect ``episodes_per_rollout`` episodes, ``train()``, log; repeat."""
        total_timesteps, callback = self._start_learning(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        iteration = 0
        assert self.env is not None
        while self.num_timesteps < total_timesteps:
            iteration_start = time.perf_counter()
            if not self.collect_rollouts(self.env, callback):
                break
            iteration += 1
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self._log_rollout()
            train_start = time.perf_counter()
            self.train()
            if distributed.world_size() > 1:  # one KL coefficient for all ranks
                self.kl_ctl.value = distributed.all_mean(self.kl_ctl.value)
            if self.config.keep_kv_cache:
                self._step_cache.mark_outdated()  # rows finish their episodes on it; no prompt reuse
            else:
                self._step_cache = StepCache()  # cached K/V were computed with the old weights
            assert self.rollout_batch is not None
            tokens = float(self.rollout_batch.gen_mask.sum())
            train_time = time.perf_counter() - train_start
            self.logger.record("time/train_tokens_per_s", tokens / max(train_time, 1e-9))
            self._log_phases(train_time, time.perf_counter() - iteration_start)
            if log_interval and iteration % log_interval == 0:
                self.logger.record("time/iterations", iteration, exclude="tensorboard")
                self.logger.dump(step=self.num_timesteps)
        if self.rollout_copy is not None:
            self.rollout_copy.sync()  # predict() after learn acts with the final weights (every rank: ZeRO-3)
        callback.on_training_end()
        return self

    def _log_rollout(self) -> None:
        batch = self.rollout_batch
        assert batch is not None
        self.logger.record("rollout/ep_rew_mean", float(batch.rewards.mean()))
        self.logger.record("rollout/ep_len_mean", float(batch.gen_mask.sum(-1).mean()))
        self.logger.record("time/tokens_per_s", self.rollout.tokens / max(self._rollout_time, 1e-9))
        if self.decoder is not None and self.decoder.compile_seconds is not None:
            self.logger.record("time/decode_compile_s", self.decoder.compile_seconds)
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        run_logging.log_samples(self.logger, self.rollout.samples, self.num_timesteps)

    def _log_phases(self, train_time: float, iteration_time: float) -> None:
        """Where an iteration's time went, in seconds, under ``time/``: the policy's forwards and sampling in
        the rollout (``act_s``), the reward function (``reward_s``), the rest of the env's steps (``env_s``),
        the pre-update scoring pass with the reference forward (``score_s``), the update (``update_s``) and
        everything else, the agent's own Python (``other_s``)."""
        phases = dict(self._phase_seconds)
        phases["env"] -= phases["reward"]
        phases["score"] = self._score_seconds
        phases["update"] = train_time - phases["score"]
        phases["other"] = iteration_time - sum(phases.values())
        for name, seconds in phases.items():
            self.logger.record(f"time/{name}_s", seconds)

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"kl_ctl": self.kl_ctl.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    def _extra_modules(self) -> dict[str, nn.Module]:
        """``{"ema": the fp32 average}`` when the agent keeps an EMA of its weights (``ema_decay``)."""
        return {"ema": self.ema.model} if self.ema is not None else {}

    def _restored_modules(self, saved_config: dict[str, Any]) -> dict[str, nn.Module]:
        """A checkpoint saved without an EMA holds none: a new one starts from the loaded weights."""
        saved_ema = saved_config.get("ema_decay") is not None
        return self._extra_modules() if saved_ema else {}

    def _resume_arrays(self) -> dict[str, np.ndarray]:
        arrays = super()._resume_arrays()
        if self.config.keep_kv_cache:  # computed with earlier weights: not recomputable
            arrays |= cache_arrays(self._step_cache)
        return arrays

    def _after_load(self, directory: Path) -> None:
        if self.rollout_copy is not None:
            self.rollout_copy.sync()
