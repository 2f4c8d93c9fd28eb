"""DQN for token-level text generation: the LM head read as Q-values over the vocabulary.

Q(s, a) for a state s (prompt plus the tokens generated so far) and a token a is read from the logit the
causal LM gives a after s, raw or as a dueling network (``dueling``); either way, initialised from the
pretrained LM, the greedy action argmax_a Q(s, a) is greedy decoding. A whole episode is one sequence, so one
forward pass over E sampled episodes yields Q(s_t, .) for every one of their tokens (E, N, V), and the n-step
targets come from one target-network forward over the same episodes. The math (the four targets, the CQL
penalty) is in :mod:`agents.q_learning`, exploration and its schedules in :mod:`agents.exploration`, the
settings (:class:`DQNConfig`, importable from here too) in :mod:`agents.dqn_config`.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.utils import polyak_update, safe_mean
from torch import nn
from transformers import PreTrainedModel

from agents import dqn_diagnostics, q_learning, run_logging, soft_q
from agents.base import TextAlgorithm
from agents.dqn_config import DQNConfig
from agents.exploration import Exploration
from agents.kv_cache import StepCache, cached_step
from agents.policy import FrozenLM, action_logits
from agents.replay import ReplayBuffer
from infra.engine import cast_parameters

__all__ = ["DQN", "DQNConfig"]


class DQN(TextAlgorithm):
    """DQN with n-step returns on a DeepSpeed-backed causal LM whose logits are Q-values.

    Double DQN, Q-learning, SARSA or expected-SARSA targets (``target``) from a target network updated every
    ``target_update_interval`` env steps (hard copy for ``tau=1``, Polyak averaging for ``tau<1``), a Huber
    loss plus ``conservative_coef`` times a CQL term towards the reference LM, and epsilon-greedy or Boltzmann
    exploration on a linear or exponential schedule; :mod:`agents.q_learning` and :mod:`agents.exploration`
    define each of them.

    Works only on token-level envs (``Discrete(vocab)`` actions: ``TextGen-v0``, ``TextChat-v0``); for the
    sequence-level ``TextGenSeq-v0`` use PPO or REINFORCE. :meth:`save` checkpoints weights, optimizer,
    target network, replay buffer (``save_replay_buffer=True``), RNG states and counters, and the env's
    running episodes (its ``state_dict()``), so a resumed ``learn`` continues them. On multi-turn envs the
    replay keeps whole conversations, but only the agent's tokens (``agent_mask``) are transitions, each
    turn's reward follows the agent token that ended it, and the bootstrap goes from one agent token to the
    next across the other party's turn (:func:`agents.q_learning.agent_td_targets`).

    Example (DeepSpeed's start-up prints make it unfit for a doctest; the model defaults to SmolLM2)::

        env = gym.make_vec("TextGen-v0", num_envs=8, vectorization_mode="vector_entry_point")
        agent = DQN(env, config=DQNConfig.smollm2_sentiment(), seed=0).learn(total_timesteps=50_000)
    """

    config_class = DQNConfig
    algo_name = "DQN"
    config: DQNConfig
    action_spaces = (spaces.Discrete,)
    action_space_hint = (
        "DQN needs a token-level env (TextGen-v0, TextChat-v0). For the sequence-level TextGenSeq-v0 "
        "(MultiDiscrete) use agents.PPO or agents.REINFORCE"
    )

    def _build_networks(self, lm: PreTrainedModel, reference_lm: PreTrainedModel) -> None:
        """``self.policy`` (the Q-network), ``self.reference`` and ``self.target`` (a frozen copy)."""
        super()._build_networks(lm, reference_lm)
        target = q_learning.FrozenActorCritic(self.policy) if self.config.value_head else FrozenLM(lm)
        self.target: FrozenLM | q_learning.FrozenActorCritic = target.to(self.device)

    def _param_groups(self) -> list[dict[str, Any]] | None:
        """With ``value_lr_scale`` != 1, the value head in a group of its own at the engine's learning rate
        times it (:class:`DQNConfig`); otherwise one group."""
        scale = self.config.value_lr_scale
        if scale == 1:
            return None
        head = list(self.policy.value_head.parameters())
        rest = [p for p in self.policy.parameters() if p.requires_grad and all(p is not h for h in head)]
        learning_rate = self.ds_config["optimizer"]["params"]["lr"] * scale
        return [{"params": rest}, {"params": head, "lr": learning_rate}]

    def _setup_model(self) -> None:
        super()._setup_model()
        if not self.token_level:
            raise ValueError("DQN needs a token-level env (TextGen-v0); use agents.PPO or agents.REINFORCE")
        cfg = self.config
        cast_parameters(self.target, next(self.policy.parameters()).dtype)
        self.replay = ReplayBuffer(
            buffer_size=cfg.buffer_size,
            prompt_len=self.prompt_len,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.pad_token_id,
            vocab_size=self.n_actions,
        )
        self.replay_rng = np.random.default_rng(self.seed)
        self.exploration = Exploration.from_config(cfg)
        self.last_target_update, self.last_target_sync = 0, 0  # env steps, updates
        self._reference_cache = StepCache()
        self._pending_samples: list[tuple[str, str]] = []  # rollout samples not yet logged

    # ---- acting --------------------------------------------------------------------------------------------
    @property
    def exploration_rate(self) -> float:
        """SB3's name for the current epsilon (for Boltzmann exploration: the current temperature)."""
        return self.exploration.value

    def _choose(
        self, q: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ref_cache: StepCache, greedy: bool
    ) -> torch.Tensor:
        """(B,) tokens: argmax of (B, V) ``q`` if ``greedy``, else exploring (reference LM: ``ref_cache``)."""
        q, ref = action_logits(q, self.n_actions), None
        if not greedy and self.exploration.uses_reference:
            ref, _ = cached_step(self.reference, ids, mask, self.prompt_len, ref_cache)  # (B, V)
            ref = action_logits(ref, self.n_actions)
        return q.argmax(-1) if greedy else self.exploration.actions(q, ref)

    def _act(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The exploring token; nothing is recorded per token (the replay keeps whole episodes)."""
        self.exploration.update(self.num_timesteps, horizon=self._total_timesteps)
        q, _ = cached_step(self.policy, ids, mask, self.prompt_len, self._step_cache)  # (B, V)
        return self._choose(q, ids, mask, self._reference_cache, greedy=False), None

    def _predict_actions(
        self, ids: torch.Tensor, mask: torch.Tensor, state: Any, deterministic: bool
    ) -> tuple[torch.Tensor, tuple[StepCache, StepCache]]:
        """Greedy Q tokens (``deterministic``) or exploring ones; ``state`` is the pair of KV caches."""
        q_cache, ref_cache = state if isinstance(state, tuple) else (StepCache(), StepCache())
        q, _ = cached_step(self.policy, ids, mask, self.prompt_len, q_cache)
        return self._choose(q, ids, mask, ref_cache, greedy=deterministic), (q_cache, ref_cache)

    # ---- rollouts ------------------------------------------------------------------------------------------
    def _rollout_done(self) -> bool:
        frequency, unit = self.config.train_freq  # type: ignore[misc]
        if unit == "episode":
            return len(self.rollout) >= frequency
        return self.num_timesteps - self._rollout_start >= frequency * self.n_envs

    def _store_rollout(self, completed: bool) -> None:
        """Move the finished episodes into the replay (those of a stopped rollout too)."""
        for episode in self.rollout.episodes:
            self.replay.add_episode(episode, stamp=self._n_updates)  # for the replay's age
        self._episode_num += len(self.rollout)
        self._pending_samples = (self._pending_samples + self.rollout.samples)[:4]

    # ---- learning ------------------------------------------------------------------------------------------
    def train(self, gradient_steps: int, batch_size: int = 64) -> None:  # type: ignore[override]
        """``gradient_steps`` updates, each on ``batch_size`` transitions (``update_terms`` of
        :mod:`agents.q_learning`, or of :mod:`agents.soft_q` for soft Q-learning)."""
        cfg, explore = self.config, self.exploration
        networks = q_learning.QNetworks(online=self.engine, target=self.target, reference=self.reference)
        stats: dict[str, list[float]] = defaultdict(list)
        # dueling, soft: V(s) = the replay's mean return + the head, which learns how a state differs from it
        level = self.replay.mean_return() * cfg.reward_scale if cfg.value_head else 0.0
        update = soft_q.update_terms if cfg.soft_q_coef > 0 else q_learning.update_terms
        for _ in range(gradient_steps):
            batch = self.replay.sample(batch_size, self.replay_rng, self.device)
            terms = update(networks, batch, cfg, level=level, n_actions=self.n_actions, exploration=explore)
            now = dqn_diagnostics.update_stats(terms, cfg.conservative_coef)  # (module docstring)
            assert batch.stamps is not None
            now |= dqn_diagnostics.replay_age(self._n_updates, batch.stamps[batch.rows])
            now["target_lag"] = self._n_updates - self.last_target_sync
            self._gradient_step(terms.loss)
            if cfg.log_step_size and terms.detail is not None:
                now |= dqn_diagnostics.step_stats(self.engine, batch, terms.detail, self.n_actions)
            self._n_updates += 1
            for name, value in now.items():
                stats[name].append(value)
        if cfg.tau < 1:  # Polyak averaging: how far the target is behind, before this round's update
            pairs = self._target_source().parameters(), self.target.parameters()
            stats["target_distance"].append(dqn_diagnostics.relative_distance(*pairs))
        self._update_target()
        for name, values in stats.items():
            self.logger.record(f"train/{name}", float(np.mean(values)))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _update_target(self) -> None:
        """Catch up on the target updates due since the last one (k Polyak steps = one with 1-(1-tau)^k)."""
        due = (self.num_timesteps - self.last_target_update) // self.config.target_update_interval
        if due > 0:
            tau = 1.0 - (1.0 - self.config.tau) ** due
            polyak_update(self._target_source().parameters(), self.target.parameters(), tau)
            self.last_target_update += due * self.config.target_update_interval
            self.last_target_sync = self._n_updates

    def _target_source(self) -> nn.Module:
        """What the target network copies: the LM, with V(s) the whole Q-network (the value head too)."""
        return self.policy if self.config.value_head else self.policy.lm

    def learn(  # type: ignore[override]
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> DQN:
        """SB3's off-policy learn: collect ``train_freq``, then ``gradient_steps`` updates once
        ``learning_starts`` env steps are in; logs are dumped every ``log_interval`` finished episodes."""
        cfg = self.config
        total_timesteps, callback = self._start_learning(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        last_dump = self._episode_num
        assert self.env is not None
        while self.num_timesteps < total_timesteps:
            start = self.num_timesteps
            if not self.collect_rollouts(self.env, callback):
                break
            if self.num_timesteps > cfg.learning_starts and len(self.replay) > 0:
                vector_steps = (self.num_timesteps - start) // self.n_envs
                steps = cfg.gradient_steps if cfg.gradient_steps > 0 else vector_steps
                if steps > 0:
                    self.train(steps, cfg.batch_size)
                    self._step_cache = StepCache()  # cached K/V were computed with the old weights
                    self._reference_cache = StepCache()  # rebuilt like it, so a resumed run matches
            if log_interval and self._episode_num - last_dump >= log_interval:
                self._log_progress()
                last_dump = self._episode_num
        callback.on_training_end()
        return self

    def _log_progress(self) -> None:
        """SB3's off-policy log: returns and lengths of the last episodes, exploration, fps, samples."""
        elapsed = max((time.time_ns() - self.start_time) / 1e9, 1e-9)
        if self.ep_info_buffer:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in self.ep_info_buffer]))
        name = "temperature" if self.exploration.kind == "boltzmann" else "exploration_rate"
        self.logger.record(f"rollout/{name}", self.exploration.value)
        self.logger.record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        run_logging.log_samples(self.logger, self._pending_samples, self.num_timesteps)
        self._pending_samples = []
        self.logger.dump(step=self.num_timesteps)

    # ---- saving --------------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {
            "exploration_rate": self.exploration.value,
            "exploration_horizon": self.exploration.horizon,
            "last_target_update": self.last_target_update,
            "last_target_sync": self.last_target_sync,
            "replay_rng": self.replay_rng.bit_generator.state,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.exploration.value = float(state["exploration_rate"])
        self.exploration.horizon = state.get("exploration_horizon")  # absent in older checkpoints
        self.last_target_update = int(state["last_target_update"])
        self.last_target_sync = int(state.get("last_target_sync", 0))  # absent in older checkpoints
        self.replay_rng.bit_generator.state = state["replay_rng"]

    def _extra_modules(self) -> dict[str, nn.Module]:
        if isinstance(self.target, q_learning.FrozenActorCritic):  # dueling: its value head too
            return {"target": self.target.lm, "target_value_head": self.target.value_head}
        return {"target": self.target.lm}

    def _extra_files(self) -> dict[str, Any]:
        """The replay buffer (``replay.npz``) when ``save_replay_buffer`` is set."""
        return {"replay.npz": self.save_replay_buffer} if self.config.save_replay_buffer else {}

    def _after_load(self, directory: Path) -> None:
        """Read the replay buffer if the checkpoint holds one."""
        if (directory / "replay.npz").is_file():
            self.load_replay_buffer(directory / "replay.npz")

    def save_replay_buffer(self, path: str | os.PathLike) -> None:
        """SB3's ``save_replay_buffer``: the compact buffer as an ``.npz`` file."""
        self.replay.save(Path(path))

    def load_replay_buffer(self, path: str | os.PathLike) -> None:
        """SB3's ``load_replay_buffer``."""
        self.replay.load(Path(path))
