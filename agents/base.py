"""TextAlgorithm: the shared base of the transformer agents (an SB3 ``BaseAlgorithm``).

It owns what every agent needs: loading the LM, the actor-critic and the frozen reference model, the DeepSpeed
engine, collecting rollouts through the environment API (token-level envs with the per-env KV cache, one
incremental forward per step; sequence-level envs with ``model.generate``), ``predict`` for SB3 tools,
``learn`` with SB3 callbacks and logger, and checkpoints (see :mod:`agents.checkpoint`).

A subclass sets ``config_class`` and ``algo_name`` and implements ``train()``, which consumes
``self.buffer.get()`` (an :class:`~agents.buffer.EpisodeBatch`). Extension points for other agents (e.g. a
value-based DQN): ``_build_modules()`` (what is trained), ``_action_from_logits()`` (how actions are chosen),
``_on_step_stats()`` (what a rollout records per token), ``_rollout_done()`` (when a rollout ends), and for
checkpoints ``_extra_state()`` (JSON-able state) and ``_save_extra_files()`` (files such as a target network).
Run records (run directory, HParams, sample texts) live in :mod:`agents.run_logging`, the pre-update scoring
of a rollout in :mod:`agents.scoring`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from transformers import PreTrainedModel

from agents import checkpoint, engine, run_logging
from agents.buffer import EpisodeBatch, EpisodeBuffer
from agents.config import AgentConfig, AlgorithmConfig
from agents.layout import env_attr, load_lm, read_layout
from agents.losses import AdaptiveKLController, logprobs_from_logits
from agents.policy import ActorCritic, ReferenceModel, StepCache, cached_step, generate_completions
from agents.scoring import ScoredBatch, score_batch
from agents.vec_env import wrap_vector_env

SelfTextAlgorithm = TypeVar("SelfTextAlgorithm", bound="TextAlgorithm")


class TextAlgorithm(BaseAlgorithm):
    """Shared base of :class:`~agents.PPO` and :class:`~agents.REINFORCE`; see the module docstring."""

    config_class: ClassVar[type[AlgorithmConfig]] = AgentConfig
    algo_name: ClassVar[str] = "text"
    config: AlgorithmConfig

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
        **config_kwargs: Any,
    ) -> None:
        if isinstance(env, gym.vector.VectorEnv):
            env = wrap_vector_env(env)
        self.config = dataclasses.replace(config or self.config_class(), **config_kwargs)
        self.model_source = model if not isinstance(model, PreTrainedModel) else None
        self._lm = load_lm(model)
        self._reference_lm = load_lm(reference_model) if reference_model is not None else None
        self.deepspeed_config = deepspeed_config
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

    def _build_modules(self) -> None:
        """Extension point: the trainable module (here the actor-critic) and the reference model."""
        self.module = ActorCritic(self._lm).to(self.device)
        self.reference = ReferenceModel(self._reference_lm or self._lm).to(self.device)

    def _setup_model(self) -> None:
        assert self.env is not None  # __init__ and load always pass an env
        layout = read_layout(self.env, self._lm, self.config.max_new_tokens, self.model_source)
        self.token_level, self.n_actions = layout.token_level, layout.n_actions
        self.prompt_len, self.max_new_tokens = layout.prompt_len, layout.max_new_tokens
        self.pad_token_id, self.eos_token_id = layout.pad_token_id, layout.eos_token_id
        self.set_random_seed(self.seed)
        self._build_modules()
        ds_config = engine.build_config(
            self.deepspeed_config,
            self.config.learning_rate,
            self.config.max_grad_norm,
            self.config.minibatch_size,
            on_gpu=self.device.type == "cuda",
        )
        self.ds_config = ds_config
        self.engine = engine.initialize(self.module, ds_config)
        # SB3 names the trained module `policy`; ours is an nn.Module, not an SB3 BasePolicy
        self.policy = self.module  # type: ignore[assignment]
        self.kl_ctl = AdaptiveKLController(
            self.config.init_kl_coef, self.config.target_kl_ref, self.config.kl_horizon
        )
        self.buffer = EpisodeBuffer(self.prompt_len, self.max_new_tokens, self.pad_token_id)
        self._step_cache = StepCache()
        self._untracked: set[int] = set()
        self.run_dir: Path | None = None
        self._samples: list[tuple[str, str]] = []

    # ---- acting --------------------------------------------------------------------------------------------
    def _mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] > self.n_actions:
            logits = logits.clone()
            logits[..., self.n_actions :] = -torch.inf
        return logits

    def _action_from_logits(self, logits: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Extension point: (B, V) logits -> (B,) token ids (sampled, or argmax when deterministic)."""
        if deterministic:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits).sample()

    def _obs_tensors(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(np.asarray(obs["input_ids"]), device=self.device).long()
        mask = torch.as_tensor(np.asarray(obs["attention_mask"]), device=self.device).long()
        return ids, mask

    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Sequence-level action: (B, N) completion ids; see :func:`agents.policy.generate_completions`."""
        n_new, n_actions, pad, eos = self.max_new_tokens, self.n_actions, self.pad_token_id, self.eos_token_id
        return generate_completions(self.module.lm, ids, mask, n_new, n_actions, pad, eos, deterministic)

    def predict(  # type: ignore[override]  # textenv observations are always Dict(input_ids, attention_mask)
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's predict. ``state`` is the opaque per-env KV cache (None: a fresh one); pass it back."""
        ids, mask = self._obs_tensors(observation)
        single = ids.dim() == 1
        if single:
            ids, mask = ids[None], mask[None]  # (1, T)
        if not self.token_level:
            actions = self._generate(ids, mask, deterministic).cpu().numpy()
            return (actions[0] if single else actions), None
        cache = state if isinstance(state, StepCache) else StepCache()
        logits, _ = cached_step(self.module, ids, mask, self.prompt_len, cache)
        actions = self._action_from_logits(self._mask_logits(logits), deterministic).cpu().numpy()
        return (actions[0] if single else actions), cache

    # ---- rollouts ------------------------------------------------------------------------------------------
    def _rollout_done(self) -> bool:
        """Extension point: when the current rollout is complete (here: ``episodes_per_rollout`` episodes)."""
        if not isinstance(self.config, AgentConfig):
            raise NotImplementedError(f"{type(self).__name__} must override _rollout_done")
        return len(self.buffer) >= self.config.episodes_per_rollout

    def _record_sample(self, info: dict[str, Any], tokens: list[int] | np.ndarray) -> None:
        if len(self._samples) >= 4:
            return
        completion = info.get("completion")
        if completion is None:
            tokenizer = self._env_attr("tokenizer")
            completion = tokenizer.decode(list(tokens)) if tokenizer is not None else str(list(tokens))
        self._samples.append((str(info.get("prompt", "")), str(completion)))

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback) -> bool:
        """Step ``env`` until ``episodes_per_rollout`` episodes have finished; False if a callback stopped."""
        self.buffer.clear()
        self._samples = []
        self._rollout_tokens, start = 0, time.perf_counter()
        callback.on_rollout_start()
        while not self._rollout_done():
            obs = self._last_obs
            assert isinstance(obs, dict)
            ids, mask = self._obs_tensors(obs)
            if self.token_level:
                actions, stats = self._token_step(ids, mask)
            else:
                actions, stats = self._generate(ids, mask, deterministic=False), None
            np_actions = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(np_actions)
            self.num_timesteps += env.num_envs
            self._store(ids, mask, np_actions, stats, rewards, dones, infos)
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
                return False
            self._update_info_buffer(infos, dones)
            self._last_obs, self._last_episode_starts = new_obs, dones  # type: ignore[assignment]
        self._rollout_time = time.perf_counter() - start
        callback.on_rollout_end()
        return True

    def _token_step(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits, values = cached_step(self.module, ids, mask, self.prompt_len, self._step_cache)
        logits = self._mask_logits(logits)
        actions = self._action_from_logits(logits, deterministic=False)
        return actions, self._on_step_stats(logits, values, actions)

    def _on_step_stats(self, logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor) -> tuple:
        """Extension point: per-token statistics a token-level rollout stores (log-prob, value)."""
        return logprobs_from_logits(logits, actions).cpu(), values.float().cpu()

    def _store(self, ids, mask, actions, stats, rewards, dones, infos) -> None:  # noqa: ANN001
        prompt_ids = ids[:, : self.prompt_len].cpu().numpy()
        prompt_mask = mask[:, : self.prompt_len].cpu().numpy()
        if not self.token_level:
            for i in range(len(actions)):
                tokens = list(actions[i])
                if self.eos_token_id is not None and self.eos_token_id in tokens:
                    tokens = tokens[: tokens.index(self.eos_token_id) + 1]
                self.buffer.add(prompt_ids[i], prompt_mask[i], tokens, float(rewards[i]))
                self._rollout_tokens += len(tokens)
                self._record_sample(infos[i], tokens)
            return
        gen_len = mask[:, self.prompt_len :].sum(-1).cpu().numpy()
        logprobs, values = stats
        for i in range(len(actions)):
            if gen_len[i] == 0:
                self._untracked.discard(i)
                self.buffer.start(i, prompt_ids[i], prompt_mask[i])
            elif not self.buffer.is_running(i):
                self._untracked.add(i)  # joined mid-episode (e.g. after load): skip until it ends
            self._rollout_tokens += 1
            if i not in self._untracked:
                self.buffer.append(i, int(actions[i]), float(logprobs[i]), float(values[i]))
                if dones[i]:
                    episode = self.buffer.running[i]
                    self._record_sample(infos[i], episode.tokens)
                    self.buffer.finish(i, float(rewards[i]))
            elif dones[i]:
                self._untracked.discard(i)

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
            "deepspeed": self.ds_config,
        }

    def _record_hparams(self) -> None:
        """The scalar settings as TensorBoard's HParams table (see :mod:`agents.run_logging`)."""
        run_logging.record_hparams(self.logger, self._hparams())

    def _log_samples(self, samples: list[tuple[str, str]]) -> None:
        """(prompt, completion) pairs as TensorBoard text at the current timestep."""
        run_logging.log_samples(self.logger, samples, self.num_timesteps)

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
        self._record_hparams()
        iteration = 0
        assert self.env is not None
        while self.num_timesteps < total_timesteps:
            if not self.collect_rollouts(self.env, callback):
                break
            iteration += 1
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self._log_rollout()
            train_start = time.perf_counter()
            self.train()
            self._step_cache = StepCache()  # cached K/V were computed with the old weights
            tokens = float(self.buffer.get().gen_mask.sum())
            self.logger.record(
                "time/train_tokens_per_s", tokens / max(time.perf_counter() - train_start, 1e-9)
            )
            if log_interval and iteration % log_interval == 0:
                self.logger.record("time/iterations", iteration, exclude="tensorboard")
                self.logger.dump(step=self.num_timesteps)
        callback.on_training_end()
        return self

    def _log_rollout(self) -> None:
        batch = self.buffer.get()
        self.logger.record("rollout/ep_rew_mean", float(batch.rewards.mean()))
        self.logger.record("rollout/ep_len_mean", float(batch.gen_mask.sum(-1).mean()))
        self.logger.record("time/tokens_per_s", self._rollout_tokens / max(self._rollout_time, 1e-9))
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self._log_samples(self._samples)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite loss ({float(loss)}) at update {self._n_updates}, "
                f"timestep {self.num_timesteps}; "
                "stopped before applying it: weights and the last checkpoint are the last good ones. "
                "Lower learning_rate, or check the reward function for NaN/inf"
            )

    def _score_batch(self, batch: EpisodeBatch) -> ScoredBatch:
        """See :func:`agents.scoring.score_batch` (forwards over ``minibatch_size`` episodes at a time)."""
        chunk = self.config.minibatch_size
        return score_batch(batch, self.module, self.reference, self.max_new_tokens, chunk, self._mask_logits)

    def _extra_state(self) -> dict[str, Any]:
        """Extension point: algorithm state (JSON-able) that a checkpoint must restore, e.g. a baseline."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _save_extra_files(self, directory: Path) -> None:
        """Extension point: write extra checkpoint files into ``directory`` (before its atomic swap)."""

    def _load_extra_files(self, directory: Path) -> None:
        """Extension point: read what :meth:`_save_extra_files` wrote (last step of :meth:`load`)."""

    # ---- saving --------------------------------------------------------------------------------------------
    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "engine", "module", "reference", "_lm", "_reference_lm"]

    # override: a checkpoint is a directory, so no file objects (SB3's save also takes a BufferedIOBase)
    def save(self, path: str | os.PathLike, exclude: Any = None, include: Any = None) -> None:  # type: ignore[override]  # noqa: ARG002
        """A resumable checkpoint directory: HF export (``model/``), reference, optimizer, KL, RNG."""
        checkpoint.save(self, Path(path))

    def export(self, path: str | os.PathLike) -> None:
        """The trained LM alone as an HF directory (safetensors) that ``AutoModelForCausalLM`` loads."""
        checkpoint.export_lm(self, Path(path))

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfTextAlgorithm],
        path: str | os.PathLike,
        env: Any = None,
        device: torch.device | str = "auto",
        **kwargs: Any,
    ) -> SelfTextAlgorithm:
        """Rebuild an agent from :meth:`save`'s directory and restore its exact training state."""
        return checkpoint.load(cls, Path(path), env=env, device=device, **kwargs)
