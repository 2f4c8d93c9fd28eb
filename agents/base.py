"""TextAlgorithm: the shared base of the transformer agents (an SB3 ``BaseAlgorithm``).

It owns what every agent needs: loading the LM, the trained network (``self.policy``, an
:class:`~agents.policy.ActorCritic`, wrapped by the DeepSpeed engine ``self.engine``) and the frozen reference
(``self.reference``), acting through the environment API (the per-env KV cache ``self._step_cache`` of
:mod:`agents.kv_cache`), the rollout collector (:mod:`agents.rollout`), ``predict`` for SB3 tools, the run
logger, the guarded gradient step, and checkpoints (:class:`agents.saving.Checkpointing`).

Each family's base holds its own loop, as SB3's ``OnPolicyAlgorithm`` / ``OffPolicyAlgorithm`` do: the
policy-gradient agents subclass :class:`agents.on_policy.OnPolicyAlgorithm`, DQN subclasses this class
directly. A subclass sets ``config_class`` and ``algo_name`` and implements the hooks every algorithm has:
``learn`` (SB3's), ``train``, ``_act`` (the actions of one env step and what the rollout records of them),
``_predict_actions`` (``predict``'s actions and state), ``_rollout_done`` (when a rollout ends),
``_store_rollout`` (what it keeps of a collected rollout) and the checkpoint hooks ``_extra_state`` /
``_load_extra_state`` (JSON-able state) and ``_extra_modules`` (networks saved as safetensors).
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
from agents.config import AlgorithmConfig
from agents.decode import Decoder
from agents.kv_cache import StepCache
from agents.layout import env_attr, load_lm, read_layout
from agents.packing import packed_linears
from agents.policy import ActorCritic, FrozenLM
from agents.rollout import RolloutCollector
from agents.saving import Checkpointing
from agents.vec_env import wrap_vector_env
from infra import engine


class TextAlgorithm(Checkpointing, BaseAlgorithm):  # type: ignore[misc]  # save/load take directories
    """Shared base of :class:`~agents.PPO`, :class:`~agents.REINFORCE` and :class:`~agents.DQN`; see the
    module docstring."""

    config_class: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    algo_name: ClassVar[str] = "text"
    action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (spaces.Discrete, spaces.MultiDiscrete)
    """The env action spaces the agent acts in: token level ``Discrete(vocab)``, sequence level
    ``MultiDiscrete([vocab] * N)``."""
    action_space_hint: ClassVar[str] = "use an env with textenv's contract (TextGen-v0, TextGenSeq-v0)"
    """How to fix an env whose action space is not among :attr:`action_spaces`."""
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
        vector = isinstance(env, gym.vector.VectorEnv)
        space = getattr(env, "single_action_space" if vector else "action_space", None)
        if space is not None and not isinstance(space, self.action_spaces):  # checked before the LM loads
            names = " or ".join(kind.__name__ for kind in self.action_spaces)
            raise ValueError(
                f"{self.algo_name} acts in {names} action spaces, got {space}; {self.action_space_hint}"
            )
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
            supported_action_spaces=self.action_spaces,
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

    def _before_engine(self) -> None:
        """Extension point, run just before DeepSpeed wraps the policy (so still on its fp32, unpartitioned
        weights): what must be copied from them (the on-policy base's EMA and ZeRO-3 acting copy). Here:
        refuse ZeRO stage 3 for an agent that keeps copies of the weights (:meth:`_extra_modules`)."""
        copies = sorted(self._extra_modules())
        if self.zero_stage == 3 and copies:  # a DQN target network, an EMA: copied from partitioned weights
            raise ValueError(
                f"ZeRO stage 3 is not supported for {self.algo_name} with {copies} (copied from the "
                'partitioned weights); use "stage": 2, with "offload_optimizer" if memory is short'
            )

    def _param_groups(self) -> list[dict[str, Any]] | None:
        """Extension point: the optimizer's parameter groups of ``self.policy``'s trainable parameters (a head
        with its own ``"lr"``: :func:`infra.engine.initialize`), or None for one group (the default)."""
        return None

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
            learning_rate=self.config.learning_rate,
            max_grad_norm=self.config.max_grad_norm,
            train_batch_size=self.config.micro_batch_size,
            on_gpu=self.device.type == "cuda",
            precision=self.config.precision,
        )
        self.precision = "bf16" if self.ds_config["bf16"]["enabled"] else "fp32"
        if self.verbose:
            print(f"{self.algo_name}: precision {self.precision} (setting {self.config.precision!r})")
        self.zero_stage = engine.zero_stage(self.ds_config)
        self._before_engine()
        self.engine = engine.initialize(self.policy, self.ds_config, self._param_groups())
        engine.cast_parameters(self.reference, next(self.policy.parameters()).dtype)  # as the policy's
        self.rollout = RolloutCollector(
            num_envs=self.n_envs,
            prompt_len=self.prompt_len,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.pad_token_id,
            stop_token_ids=self.stop_token_ids,
            token_level=self.token_level,
        )
        self._step_cache = StepCache()
        self.decoder: Decoder | None = None  # the compiled decode step (policy-gradient agents' ``decode``)
        self._rollout_start = 0  # num_timesteps when the current rollout began
        self._good_weights: list[torch.Tensor] | None = None
        self._diverged = False
        self.run_dir: Path | None = None

    @property
    def actor(self) -> ActorCritic:
        """The network the rollouts act with: the trained one (the on-policy base may act with a copy)."""
        return self.policy

    # ---- acting --------------------------------------------------------------------------------------------
    def _obs_tensors(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(np.asarray(obs["input_ids"]), device=self.device).long()
        mask = torch.as_tensor(np.asarray(obs["attention_mask"]), device=self.device).long()
        return ids, mask

    def _obs_batch(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(B, T) ids and mask of ``predict``'s observation, and whether it was a single (T,) one."""
        ids, mask = self._obs_tensors(obs)
        return (ids[None], mask[None], True) if ids.dim() == 1 else (ids, mask, False)

    def predict(  # type: ignore[override]  # textenv observations are always Dict(input_ids, attention_mask)
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's predict. ``state`` is the agent's opaque KV-cache state (None: a fresh one); pass it back."""
        ids, mask, single = self._obs_batch(observation)
        actions, state = self._predict_actions(ids, mask, state, deterministic)
        np_actions = actions.cpu().numpy()
        return (np_actions[0] if single else np_actions), state

    def _predict_actions(
        self, ids: torch.Tensor, mask: torch.Tensor, state: Any, deterministic: bool
    ) -> tuple[torch.Tensor, Any]:
        """Hook: ``predict``'s actions for (B, T) observations, and the state to hand back."""
        raise NotImplementedError

    def _act(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """Hook: the actions of one rollout step for (B, T) observations, and the per-token
        ``(log-probs, values)`` the collector records for them (None: nothing)."""
        raise NotImplementedError

    # ---- rollouts ------------------------------------------------------------------------------------------
    def _rollout_done(self) -> bool:
        """Hook: when the current rollout is complete."""
        raise NotImplementedError

    def _store_rollout(self, completed: bool) -> None:
        """Hook: keep what the algorithm needs of the rollout just collected (``completed``: False when a
        callback stopped it): the on-policy base builds its batch, DQN moves the episodes into its replay."""
        raise NotImplementedError

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback) -> bool:
        """Step ``env`` until the rollout is done, then hand it to :meth:`_store_rollout`; False if a callback
        stopped training."""
        self._rollout_start = self.num_timesteps
        running = self._step_rollout(env, callback)
        self._store_rollout(completed=running)
        if running:
            callback.on_rollout_end()
        return running

    def _step_rollout(self, env: VecEnv, callback: BaseCallback) -> bool:
        """The env steps of one rollout, recorded by the collector; False if a callback stopped training."""
        self.rollout.clear()
        self._phase_seconds = {"act": 0.0, "env": 0.0, "reward": -self._reward_seconds()}
        self._score_seconds = 0.0  # set by the algorithm's scoring pass (OnPolicyAlgorithm._score_rollout)
        self._good_weights = None  # the next update snapshots the weights it starts from
        self._before_rollout()
        start, start_timesteps = time.perf_counter(), self.num_timesteps
        tokenizer = self._env_attr("tokenizer")
        callback.on_rollout_start()
        # agents.packing: bitwise the same outputs; a compiled decode step brings its own kernels
        pack = getattr(self.config, "pack_cpu_weights", False) and not (self.decoder and self.decoder.active)
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
                    input_ids=np.asarray(obs["input_ids"]),
                    attention_mask=np.asarray(obs["attention_mask"]),
                    actions=np_actions,
                    stats=stats,
                    rewards=rewards,
                    dones=dones,
                    infos=infos,
                    tokenizer=tokenizer,
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
        return True

    def _resume_arrays(self) -> dict[str, np.ndarray]:
        """The running episodes' statistics that a checkpoint keeps (the on-policy base adds a kept KV
        cache); see :func:`agents.saving.resume_files`."""
        return self.rollout.state_arrays()

    def _before_rollout(self) -> None:
        """Extension point, at the start of every rollout (the on-policy base syncs its acting copy here)."""

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
        """Hook: one update on what the last rollout collected (DQN's takes the number of gradient steps)."""
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

    def _start_learning(
        self,
        total_timesteps: int,
        callback: Any,
        reset_num_timesteps: bool,
        tb_log_name: str | None,
        progress_bar: bool,
    ) -> tuple[int, BaseCallback]:
        """What every ``learn`` does first: SB3's ``_setup_learn`` (with the run logger), the callbacks'
        training start and the hyperparameters table. Returns the total timesteps and the callback."""
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or self.algo_name, progress_bar
        )
        callback.on_training_start({"total_timesteps": total_timesteps}, {})
        run_logging.record_hparams(self.logger, self._hparams())
        return total_timesteps, callback

    def _reward_seconds(self) -> float:
        """Seconds the envs have spent in their reward function so far (textenv's envs count it)."""
        cores = self.env.get_attr("core") if self.env is not None and env_attr(self.env, "core") else []
        return sum(core.reward_seconds for core in {id(c): c for c in cores}.values())

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
            self._after_step()
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

    def _after_step(self) -> None:
        """Extension point, after every finite optimizer step (the on-policy base updates its EMA here)."""
