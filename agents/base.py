"""TextAlgorithm: the shared base of the transformer agents (an SB3 ``BaseAlgorithm``).

It owns what every agent needs: loading the LM, the trained network (``self.policy``, an
:class:`~agents.policy.ActorCritic`, wrapped by the DeepSpeed engine ``self.engine``) and the frozen reference
(``self.reference``), acting through the environment API (token-level envs with the per-env KV cache, one
incremental forward per step; sequence-level envs with ``model.generate``), the rollout collector
(:mod:`agents.rollout`), ``predict`` for SB3 tools, ``learn`` with SB3 callbacks and logger, and checkpoints
(:mod:`agents.checkpoint` writes what :meth:`TextAlgorithm._checkpoint_state` hands over).

A subclass sets ``config_class`` and ``algo_name`` and implements ``train()``, which consumes
``self.rollout_batch`` (a :class:`~agents.rollout.RolloutBatch`, built once per rollout). Extension points
for other agents (e.g. the value-based DQN): ``_build_networks()`` (what is trained), ``_token_step()``
(how a token is chosen and what is recorded), ``_rollout_done()`` (when a rollout ends), and for
checkpoints ``_extra_state()`` / ``_load_extra_state()`` (JSON-able state) and ``_extra_modules()``
(networks saved as safetensors, such as a target network).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from transformers import PreTrainedModel

from agents import distributed, lora, run_logging
from agents.config import AlgorithmConfig, PolicyGradientConfig
from agents.ema import ExponentialMovingAverage
from agents.layout import env_attr, load_lm, read_layout
from agents.losses import AdaptiveKLController, logprobs_from_logits
from agents.packing import packed_linears
from agents.policy import (
    ActorCritic,
    FrozenLM,
    Sampling,
    StepCache,
    action_logits,
    cached_step,
    generate_completions,
    process_logits,
)
from agents.precision import RolloutCopy, acting_copy
from agents.ptx import PretrainingMix
from agents.rollout import RolloutBatch, RolloutCollector
from agents.sampling import draw
from agents.saving import Checkpointing
from agents.vec_env import wrap_vector_env
from infra import engine


class TextAlgorithm(Checkpointing, BaseAlgorithm):  # type: ignore[misc]  # save/load take directories
    """Shared base of :class:`~agents.PPO`, :class:`~agents.REINFORCE` and :class:`~agents.DQN`; see the
    module docstring."""

    config_class: ClassVar[type[AlgorithmConfig]] = PolicyGradientConfig
    algo_name: ClassVar[str] = "text"
    config: AlgorithmConfig
    policy: ActorCritic  # type: ignore[assignment]  # SB3 types it as BasePolicy; ours is the trained nn.Module

    def __init__(
        self,
        env: gym.Env | gym.vector.VectorEnv | VecEnv | str,
        model: str | os.PathLike | PreTrainedModel = "smollm2-135m-instruct",
        config: AlgorithmConfig | None = None,
        deepspeed_config: str | os.PathLike | dict | None = None,
        tensorboard_log: str | None = None,
        seed: int | None = None,
        verbose: int = 0,
        device: torch.device | str = "auto",
        reference_model: str | os.PathLike | PreTrainedModel | None = None,
        peft_config: Any = None,
        **config_kwargs: Any,
    ) -> None:
        if isinstance(env, str):  # an env id: made with the agent's model, so that the tokenizers agree
            source: dict[str, Any] = {"model": str(model)} if isinstance(model, (str, os.PathLike)) else {}
            env = gym.make(env, **source)
        if isinstance(env, gym.vector.VectorEnv):
            env = wrap_vector_env(env)
        self.config = dataclasses.replace(config or self.config_class(), **config_kwargs)
        self.model_source = model if not isinstance(model, PreTrainedModel) else None
        self._initial_lm: PreTrainedModel | None = load_lm(model)
        self._reference_lm = load_lm(reference_model) if reference_model is not None else None
        self.deepspeed_config = deepspeed_config
        self.peft_config = peft_config  # a peft.LoraConfig: train adapters (see agents.lora)
        if not distributed.is_main():  # under a launcher rank 0 logs; the other ranks train silently
            tensorboard_log, verbose = None, 0
        super().__init__(
            policy=ActorCritic,  # type: ignore[arg-type]
            env=env,
            learning_rate=self.config.learning_rate,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            supported_action_spaces=(spaces.Discrete, spaces.MultiDiscrete),
        )
        self._setup_model()

    # ---- setup ---------------------------------------------------------------------------------------------
    def _env_attr(self, name: str) -> Any:
        assert self.env is not None
        return env_attr(self.env, name)

    def _build_networks(self, lm: PreTrainedModel, reference_lm: PreTrainedModel) -> None:
        """Extension point: the trained network ``self.policy`` and the frozen ``self.reference``."""
        self.policy = ActorCritic(lm).to(self.device)
        reference: Any = (  # LoRA: the same network with its adapters off, no second copy
            lora.AdapterDisabledLM(self.policy.lm)
            if lora.is_peft(lm) and reference_lm is lm
            else FrozenLM(reference_lm).to(self.device)
        )
        self.reference = reference

    def _zero3_acting_copy(self) -> RolloutCopy:
        """ZeRO-3: the whole-weights network the rollouts act with, made before DeepSpeed partitions the
        policy and refreshed by one gather per rollout (:func:`agents.distributed.gather_into`)."""
        copies = sorted(self._extra_modules()) + (["ema"] if getattr(self, "ema", None) is not None else [])
        if copies:  # a DQN target network, an EMA (ema_decay): they copy or average the partitioned weights
            raise ValueError(
                f"ZeRO stage 3 is not supported for {self.algo_name} with {copies} (copied from the "
                'partitioned weights); use "stage": 2, with "offload_optimizer" if memory is short'
            )
        return acting_copy(self.policy, self.precision, self.config)

    def _setup_model(self) -> None:
        assert self.env is not None and self._initial_lm is not None  # __init__ and load always pass them
        lm, self._initial_lm = self._initial_lm, None  # from here on the LM is self.policy.lm
        layout = read_layout(self.env, lm, self.config.max_new_tokens, self.model_source)
        self.token_level, self.n_actions = layout.token_level, layout.n_actions
        self.prompt_len, self.max_new_tokens = layout.prompt_len, layout.max_new_tokens
        self.pad_token_id, self.eos_token_id = layout.pad_token_id, layout.eos_token_id
        stops = layout.stop_token_ids  # a completion ends at EOS or any of these (the env's stop tokens)
        self.stop_token_ids = list(stops) if stops else self.eos_token_id
        self.group_size = int(self._env_attr("group_size") or 1)  # k episodes per prompt draw (RLOO)
        self.set_random_seed(self.seed)  # the same on every rank: the networks start identical
        if self.peft_config is not None:
            lm = lora.wrap(lm, self.peft_config)
        if self.config.gradient_checkpointing:
            distributed.enable_activation_checkpointing(lm)
            self.group_size = 1  # a checkpointed layer keeps no KV cache with gradients: no shared prompts
        self._build_networks(lm, self._reference_lm or lm)
        self._reference_lm = None
        if distributed.world_size() > 1:
            self.set_random_seed(distributed.rank_seed(self.seed))  # each rank its own env shard and samples
        self.ds_config = engine.build_config(
            self.deepspeed_config,
            self.config.learning_rate,
            self.config.max_grad_norm,
            self.config.micro_batch_size,
            on_gpu=self.device.type == "cuda",
            precision=self.config.precision,
        )
        self.precision = "bf16" if self.ds_config["bf16"]["enabled"] else "fp32"
        if self.verbose:
            print(f"{self.algo_name}: precision {self.precision} (setting {self.config.precision!r})")
        cfg = self.config
        ema_decay = cfg.ema_decay if isinstance(cfg, PolicyGradientConfig) else None
        # before the engine casts the LM to bf16: the average starts from the fp32 weights
        self.ema = ExponentialMovingAverage(self.policy.lm, ema_decay) if ema_decay is not None else None
        self.zero_stage = engine.zero_stage(self.ds_config)
        zero3_copy = self._zero3_acting_copy() if self.zero_stage == 3 else None  # before partitioning
        self.engine = engine.initialize(self.policy, self.ds_config)
        engine.cast_parameters(self.reference, next(self.policy.parameters()).dtype)  # as the policy's
        self.kl_ctl: AdaptiveKLController | None = None
        self.sampling = Sampling()
        self.rollout_copy: RolloutCopy | None = zero3_copy
        if isinstance(self.config, PolicyGradientConfig):
            cfg = self.config
            self.kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl_ref, cfg.kl_horizon)
            self.sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p)
            bf16_copy = cfg.rollout_precision == "bf16" and self.precision == "fp32"
            if (bf16_copy or cfg.rollout_merge_lora) and self.rollout_copy is None:
                self.rollout_copy = acting_copy(self.policy, self.precision, cfg)
        self.actor = self.rollout_copy.network if self.rollout_copy else self.policy  # acts in rollouts
        self.rollout = RolloutCollector(
            self.n_envs,
            self.prompt_len,
            self.max_new_tokens,
            self.pad_token_id,
            self.stop_token_ids,
            self.token_level,
        )
        self.rollout_batch: RolloutBatch | None = None
        self._act = self._token_step if self.token_level else self._sequence_step
        self._step_cache = StepCache()
        self._good_weights: list[torch.Tensor] | None = None
        self._diverged = False
        self.run_dir: Path | None = None
        self.ptx: PretrainingMix | None = None
        self._ptx_losses: list[float] = []
        if isinstance(cfg, PolicyGradientConfig) and cfg.ptx_coef > 0 and cfg.ptx_dataset is not None:
            tokenizer = self._env_attr("tokenizer")
            if tokenizer is None:
                raise ValueError(
                    "ptx_dataset needs the policy's tokenizer, but the env has no `tokenizer` attribute; "
                    "give the env one (textenv's envs have it) or set ptx_coef=0"
                )
            mix = cfg.ptx_dataset
            self.ptx = PretrainingMix(mix, tokenizer, cfg.minibatch_size, pad_token_id=self.pad_token_id)

    # ---- acting --------------------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """(B, n_actions) processed logits -> (B,) token ids (sampled, or argmax when deterministic)."""
        return logits.argmax(-1) if deterministic else draw(logits)

    def _obs_tensors(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(np.asarray(obs["input_ids"]), device=self.device).long()
        mask = torch.as_tensor(np.asarray(obs["attention_mask"]), device=self.device).long()
        return ids, mask

    def _obs_batch(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(B, T) ids and mask of ``predict``'s observation, and whether it was a single (T,) one."""
        ids, mask = self._obs_tensors(obs)
        return (ids[None], mask[None], True) if ids.dim() == 1 else (ids, mask, False)

    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Sequence-level action: (B, N) completion ids; see :func:`agents.policy.generate_completions`."""
        n_new, n_actions, pad, eos = (
            self.max_new_tokens,
            self.n_actions,
            self.pad_token_id,
            self.stop_token_ids,
        )
        lm = self.actor.lm
        return generate_completions(lm, ids, mask, n_new, n_actions, pad, eos, deterministic, self.sampling)

    def predict(  # type: ignore[override]  # textenv observations are always Dict(input_ids, attention_mask)
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's predict. ``state`` is the opaque per-env KV cache (None: a fresh one); pass it back."""
        ids, mask, single = self._obs_batch(observation)
        if not self.token_level:
            actions = self._generate(ids, mask, deterministic).cpu().numpy()
            return (actions[0] if single else actions), None
        cache = state if isinstance(state, StepCache) else StepCache()
        logits, _ = cached_step(self.actor, ids, mask, self.prompt_len, cache)
        logits = process_logits(action_logits(logits, self.n_actions), self.sampling)
        actions = self._sample(logits, deterministic).cpu().numpy()
        return (actions[0] if single else actions), cache

    def _token_step(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """Extension point: (B,) sampled tokens and the per-token (log-prob, value) the update needs."""
        logits, values = cached_step(self.actor, ids, mask, self.prompt_len, self._step_cache)
        logits = process_logits(action_logits(logits, self.n_actions), self.sampling)  # (B, A) float32
        actions = self._sample(logits, deterministic=False)
        assert values is not None
        return actions, (logprobs_from_logits(logits, actions).cpu().numpy(), values.float().cpu().numpy())

    def _sequence_step(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(B, N) generated completions; their log-probs are computed when the rollout is scored."""
        return self._generate(ids, mask, deterministic=False), None

    # ---- rollouts ------------------------------------------------------------------------------------------
    def _rollout_done(self) -> bool:
        """Extension point: when the current rollout is complete (here: ``episodes_per_rollout`` episodes)."""
        assert isinstance(self.config, PolicyGradientConfig)
        return len(self.rollout) >= self.config.episodes_per_rollout

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback) -> bool:
        """Step ``env`` until the rollout is done, then build ``self.rollout_batch``; False if a callback
        stopped training."""
        self.rollout.clear()
        self.rollout_batch = None
        self._phase_seconds = {"act": 0.0, "env": 0.0, "reward": -self._reward_seconds()}
        self._score_seconds = 0.0  # set by the algorithm's scoring pass (agents.scoring.score_rollout)
        self._good_weights = None  # the next update snapshots the weights it starts from
        if self.rollout_copy is not None:
            self.rollout_copy.sync()  # the trained weights, cast (ZeRO-3: gathered once) into the copy
        start, start_timesteps = time.perf_counter(), self.num_timesteps
        tokenizer = self._env_attr("tokenizer")
        callback.on_rollout_start()
        pack = getattr(self.config, "pack_cpu_weights", False)  # agents.packing: bitwise the same outputs
        with packed_linears(self.actor, enabled=pack, rows=self.n_envs):
            while not self._rollout_done():
                obs = self._last_obs
                assert isinstance(obs, dict)
                act_start = time.perf_counter()
                ids, mask = self._obs_tensors(obs)
                actions, stats = self._act(ids, mask)
                np_actions = actions.cpu().numpy()
                env_start = time.perf_counter()
                new_obs, rewards, dones, infos = env.step(np_actions)
                self._phase_seconds["act"] += env_start - act_start
                self._phase_seconds["env"] += time.perf_counter() - env_start
                self.num_timesteps += env.num_envs
                self.rollout.record(
                    np.asarray(obs["input_ids"]),
                    np.asarray(obs["attention_mask"]),
                    np_actions,
                    stats,
                    rewards,
                    dones,
                    infos,
                    tokenizer,
                )
                callback.update_locals(
                    {
                        "new_obs": new_obs,
                        "rewards": rewards,
                        "dones": dones,
                        "infos": infos,
                        "actions": np_actions,
                    }
                )
                if not callback.on_step():
                    self._ranks_agree(start_timesteps, stopped=True)
                    return False
                self._update_info_buffer(infos, dones)
                self._last_obs, self._last_episode_starts = new_obs, dones  # type: ignore[assignment]
        if not self._ranks_agree(start_timesteps, stopped=False):
            return False
        self._rollout_time = time.perf_counter() - start
        self._phase_seconds["reward"] += self._reward_seconds()
        self.rollout_batch = self.rollout.build(self.device)
        callback.on_rollout_end()
        return True

    def _ranks_agree(self, start_timesteps: int, stopped: bool) -> bool:
        """End of a rollout under a launcher: ``num_timesteps`` becomes the count of all ranks (so every rank
        ends ``learn`` together) and a callback's stop on any rank stops all; True to go on. One process:
        nothing changes."""
        if distributed.world_size() > 1:
            steps = distributed.all_sum(self.num_timesteps - start_timesteps)
            self.num_timesteps = start_timesteps + int(steps)
            stopped = distributed.any_rank(stopped)
        return not stopped

    # ---- learning ------------------------------------------------------------------------------------------
    def train(self) -> None:
        raise NotImplementedError

    def _setup_learn(
        self, total_timesteps, callback=None, reset_num_timesteps=True, tb_log_name="run", progress_bar=False
    ):  # noqa: ANN001, ANN202
        custom = self._custom_logger
        if not custom and self.tensorboard_log is not None:
            self._logger = self._run_logger(tb_log_name)
            self._custom_logger = True
        try:
            return super()._setup_learn(
                total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
            )
        finally:
            self._custom_logger = custom

    def _run_logger(self, tb_log_name: str) -> Any:
        """A logger writing to ``<tensorboard_log>/<env-id>/<algo>/seed<k>-<time>/`` + config.json."""
        env_id = getattr(self._env_attr("spec"), "id", None) or "env"
        self.run_dir = run_logging.make_run_dir(str(self.tensorboard_log), env_id, tb_log_name, self.seed)
        return run_logging.configure_run(self.run_dir, self._hparams(), self.verbose)

    def _hparams(self) -> dict[str, Any]:
        return {
            "algo": self.algo_name,
            "model": str(self.model_source),
            "seed": self.seed,
            "n_envs": self.n_envs,
            "prompt_len": self.prompt_len,
            "max_new_tokens": self.max_new_tokens,
            **dataclasses.asdict(self.config),
            "precision_used": self.precision,
            "deepspeed": self.ds_config,
        }

    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ):
        """SB3's learn: collect ``episodes_per_rollout`` episodes, ``train()``, log; repeat."""
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or self.algo_name, progress_bar
        )
        callback.on_training_start({"total_timesteps": total_timesteps}, {})
        run_logging.record_hparams(self.logger, self._hparams())
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
            if self.kl_ctl is not None and distributed.world_size() > 1:  # one coefficient for all ranks
                self.kl_ctl.value = distributed.all_mean(self.kl_ctl.value)
            if isinstance(self.config, PolicyGradientConfig) and self.config.keep_kv_cache:
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

    def _reward_seconds(self) -> float:
        """Seconds the envs have spent in their reward function so far (textenv's envs count it)."""
        cores = self.env.get_attr("core") if self.env is not None and env_attr(self.env, "core") else []
        return sum(core.reward_seconds for core in {id(c): c for c in cores}.values())

    def _log_phases(self, train_time: float, iteration_time: float) -> None:
        """Where an iteration's time went, in seconds, under ``time/``: the policy's forwards and sampling in
        the rollout (``act_s``), the reward function (``reward_s``), the rest of the env's steps (``env_s``),
        the pre-update scoring pass with the reference forward (``score_s``, set by the algorithm), the
        update (``update_s``) and everything else, the agent's own Python (``other_s``)."""
        phases = dict(self._phase_seconds)
        phases["env"] -= phases["reward"]
        phases["score"] = self._score_seconds
        phases["update"] = train_time - phases["score"]
        phases["other"] = iteration_time - sum(phases.values())
        for name, seconds in phases.items():
            self.logger.record(f"time/{name}_s", seconds)

    def _log_rollout(self) -> None:
        batch = self.rollout_batch
        assert batch is not None
        self.logger.record("rollout/ep_rew_mean", float(batch.rewards.mean()))
        self.logger.record("rollout/ep_len_mean", float(batch.gen_mask.sum(-1).mean()))
        self.logger.record("time/tokens_per_s", self.rollout.tokens / max(self._rollout_time, 1e-9))
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        run_logging.log_samples(self.logger, self.rollout.samples, self.num_timesteps)

    def _gradient_step(self, loss: torch.Tensor) -> None:
        """Backward and optimizer step of ``loss``, guarded against divergence.

        A non-finite loss stops training before the step. After the step, non-finite weights stop training
        too: the network is rolled back to the weights it had when this update began (a copy taken at its
        first step), and :meth:`save` refuses from then on, since the optimizer's state is spoiled as well.
        """
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite loss ({float(loss.detach())}) at update {self._n_updates}, "
                f"timestep {self.num_timesteps}; "
                "stopped before applying it: weights and the last checkpoint are the last good ones. "
                "Lower learning_rate, or check the reward function for NaN/inf"
            )
        params = distributed.local_shards(self.policy)  # ZeRO-3: this rank's partitions
        if self._good_weights is None:
            self._good_weights = [p.detach().clone() for p in params]
        self.engine.backward(loss)
        self.engine.step()
        if all(bool(torch.isfinite(p).all()) for p in params):
            if self.ema is not None:
                self.ema.update(self.policy.lm)
            return
        with torch.no_grad():
            for param, good in zip(params, self._good_weights, strict=True):
                param.copy_(good)
        self._diverged = True
        raise FloatingPointError(
            f"the weights became non-finite (inf/NaN) in the optimizer step of update {self._n_updates}, "
            f"timestep {self.num_timesteps}: training diverged. The network was rolled back to its weights "
            "at the start of this update; the optimizer state is not usable, so save() refuses. Load the "
            "last checkpoint and lower learning_rate (or max_grad_norm)"
        )

    def _with_ptx(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus ``ptx_coef`` times the LM loss on a fresh ``ptx_dataset`` minibatch (PPO-ptx; see
        :mod:`agents.ptx`), recorded for ``train/ptx_loss``; ``loss`` itself without a pretraining mix."""
        if self.ptx is None:
            return loss
        assert isinstance(self.config, PolicyGradientConfig)
        lm_loss = self.ptx.loss(self.engine, self.device)
        self._ptx_losses.append(lm_loss.item())
        return loss + self.config.ptx_coef * lm_loss

    def _ptx_stats(self) -> dict[str, list[float]]:
        """``{"ptx_loss": [...]}`` of this update (empty without a pretraining mix), then cleared."""
        losses, self._ptx_losses = self._ptx_losses, []
        return {"ptx_loss": losses} if losses else {}
