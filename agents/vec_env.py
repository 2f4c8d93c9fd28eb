"""Adapter from a gymnasium ``VectorEnv`` (same-step autoreset) to Stable-Baselines3's ``VecEnv``.

SB3 expects a list of per-env info dicts and, for a finished env, the last observation of the episode in
``infos[i]["terminal_observation"]`` with the next episode's first observation already returned. That is
gymnasium's ``AutoresetMode.SAME_STEP``: its dict-of-arrays info carries ``final_obs`` / ``final_info``
(with ``_final_obs`` masks), which this adapter maps across. Other info keys are split per env using their
``_key`` masks. :func:`wrap_vector_env` also adds SB3's ``VecMonitor`` so ``info["episode"]`` exists for
``rollout/ep_rew_mean``, ``EvalCallback`` and ``evaluate_policy``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecMonitor


class GymnasiumVecEnv(VecEnv):
    """SB3 ``VecEnv`` view of a gymnasium ``VectorEnv`` that autoresets in the same step."""

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode is not None and getattr(mode, "name", str(mode)) != "SAME_STEP":
            raise ValueError(
                f"the vector env autoresets with {mode}; SB3 needs same-step autoreset. Create it with "
                "gymnasium.vector.AutoresetMode.SAME_STEP (our TextGen envs' vector_entry_point already does)"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.render_mode = getattr(venv, "render_mode", None)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    def reset(self) -> Any:
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> Any:
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            if key.startswith("_") or key in ("final_obs", "final_info"):
                continue
            present = info.get(f"_{key}", np.ones(self.num_envs, dtype=bool))
            for i in np.flatnonzero(present):
                infos[i][key] = value[i]
        final_mask = info.get("_final_obs", dones)
        for i in np.flatnonzero(final_mask):
            final_obs = info["final_obs"][i]
            infos[i]["terminal_observation"] = final_obs
            final_info = info.get("final_info")
            if isinstance(final_info, dict):
                for key, value in final_info.items():
                    if not key.startswith("_") and final_info.get(f"_{key}", np.ones(self.num_envs, bool))[i]:
                        infos[i][key] = value[i]
        for env_index in range(self.num_envs):
            infos[env_index]["TimeLimit.truncated"] = bool(truncated[env_index] and not terminated[env_index])
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._seed = seed
        return [seed] * self.num_envs

    def _target(self) -> Any:
        return getattr(self.venv, "unwrapped", self.venv)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        value = getattr(self._target(), attr_name)
        return [value] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self._target(), attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        result = getattr(self._target(), method_name)(*method_args, **method_kwargs)
        return [result] * len(list(self._get_indices(indices)))

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self) -> list[np.ndarray]:
        return []


def wrap_vector_env(venv: gym.vector.VectorEnv) -> VecEnv:
    """A gymnasium ``VectorEnv`` as an SB3 ``VecEnv`` with episode statistics (``VecMonitor``)."""
    return VecMonitor(GymnasiumVecEnv(venv))
