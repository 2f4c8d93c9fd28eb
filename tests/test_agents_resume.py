"""Resume continues exactly, divergence stops training with good weights, damaged checkpoints say what is
wrong, and a save killed at any moment leaves a loadable checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from test_agents_learning import make_env as learning_env

import textenv  # noqa: F401  (registers the envs)
from agents import DQN, PPO, REINFORCE
from infra import storage

ROOT = Path(__file__).resolve().parents[1]


def make_env() -> gym.vector.VectorEnv:
    return learning_env(4, max_new_tokens=6, max_prompt_tokens=12)


class EpisodeRewards(BaseCallback):
    def __init__(self, rewards: list[float]) -> None:
        super().__init__()
        self.rewards = rewards

    def _on_step(self) -> bool:
        self.rewards += [
            float(r) for r, d in zip(self.locals["rewards"], self.locals["dones"], strict=True) if d
        ]
        return True


SETTINGS = {
    "ppo": (PPO, {"episodes_per_rollout": 8, "minibatch_size": 4}),
    "reinforce": (REINFORCE, {"episodes_per_rollout": 8, "minibatch_size": 4}),
    # a schedule in env steps (SB3's linear schedule spans each learn() call's own total_timesteps)
    "dqn": (
        DQN,
        {
            "learning_starts": 16,
            "batch_size": 8,
            "train_freq": (4, "episode"),
            "gradient_steps": 2,
            "target_update_interval": 24,
            "exploration_schedule": "exponential",
            "exploration_decay": 0.99,
        },
    ),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_resume_with_a_vector_env_is_exact(tmp_path: Path, name: str) -> None:
    """N steps straight equal N/2 + save + load + N/2 with 4 envs: same parameters, same episode rewards
    (in-flight episodes, prompt samplers and env RNGs are part of the checkpoint)."""
    algo, settings = SETTINGS[name]
    total = 192
    straight: list[float] = []
    agent = algo(make_env(), model="tiny-sp", seed=0, learning_rate=1e-3, **settings)
    agent.learn(total, callback=EpisodeRewards(straight))

    resumed_rewards: list[float] = []
    first = algo(make_env(), model="tiny-sp", seed=0, learning_rate=1e-3, **settings)
    first.learn(total // 2, callback=EpisodeRewards(resumed_rewards))
    first.save(tmp_path / "half")
    resumed = algo.load(tmp_path / "half", env=make_env())
    resumed.learn(
        total - resumed.num_timesteps, callback=EpisodeRewards(resumed_rewards), reset_num_timesteps=False
    )
    if name == "ppo":  # the kept KV cache of the rows that were mid-episode travels with the checkpoint
        with np.load(tmp_path / "half" / "rollout_state.npz") as data:
            assert "kv_keys_0" in data.files and (data["attention_mask"][:, 12:].sum(-1) > 0).any()
    assert resumed.num_timesteps == agent.num_timesteps
    assert len(straight) > 20 and resumed_rewards == straight
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_divergence_rolls_back_and_save_refuses(tmp_path: Path) -> None:
    """learning_rate=1e6 in fp32 drives the weights to inf in one AdamW step (in bf16 they stay finite)."""
    agent = PPO(
        make_env(),
        model="tiny-sp",
        seed=0,
        learning_rate=1e6,
        episodes_per_rollout=8,
        minibatch_size=4,
        precision="fp32",
    )
    with pytest.raises(FloatingPointError, match="weights became non-finite"):
        agent.learn(total_timesteps=2000)
    assert agent._diverged and all(bool(torch.isfinite(p).all()) for p in agent.policy.parameters())
    with pytest.raises(RuntimeError, match="diverged"):
        agent.save(tmp_path / "bad")
    agent.export(tmp_path / "weights")  # the rolled-back weights are exportable
    assert (tmp_path / "weights" / "config.json").is_file()


def test_save_refuses_non_finite_weights(tmp_path: Path) -> None:
    agent = PPO(make_env(), model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4)
    with torch.no_grad():
        next(agent.policy.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        agent.save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "agent"
    agent = PPO(make_env(), model="tiny-sp", seed=0, episodes_per_rollout=8, minibatch_size=4)
    agent.learn(total_timesteps=32)
    agent.save(path)
    return path


def damage(path: Path, how: str) -> str:
    """Damage the checkpoint at ``path``; returns the file the error must name."""
    if how == "truncated weights":
        weights = path / "model" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        return "model"
    if how == "garbage agent.json":
        (path / "agent.json").write_text("{not json")
        return "agent.json"
    if how == "missing key":
        state = json.loads((path / "agent.json").read_text())
        del state["counters"]
        (path / "agent.json").write_text(json.dumps(state))
        return "agent.json"
    if how == "unknown setting":
        state = json.loads((path / "agent.json").read_text())
        state["config"]["learning_rat"] = 1e-5
        (path / "agent.json").write_text(json.dumps(state))
        return "agent.json"
    if how == "no deepspeed folder":
        import shutil

        shutil.rmtree(path / "deepspeed")
        return "deepspeed"
    if how == "truncated value head":
        head = path / "value_head.safetensors"
        head.write_bytes(head.read_bytes()[:20])
        return "value_head.safetensors"
    if how in ("kv cache of another shape", "kv cache short of a layer"):
        file = path / "rollout_state.npz"
        with np.load(file) as data:
            arrays = dict(data)
        assert "kv_keys_0" in arrays  # the kept KV cache is part of the checkpoint
        if how == "kv cache of another shape":
            arrays["kv_keys_0"] = arrays["kv_keys_0"][:, :, :-1]
        else:
            del arrays["kv_keys_1"], arrays["kv_values_1"]
        with open(file, "wb") as handle:
            np.savez(handle, **arrays)
        return "rollout_state.npz"
    if how == "garbage rng":
        (path / "rng.json").write_text("[1, 2")
        return "rng.json"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "truncated weights",
        "garbage agent.json",
        "missing key",
        "unknown setting",
        "no deepspeed folder",
        "truncated value head",
        "garbage rng",
        "kv cache of another shape",
        "kv cache short of a layer",
    ],
)
def test_damaged_checkpoints_name_the_file(saved: Path, tmp_path: Path, how: str) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    file = damage(copy, how)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        PPO.load(copy, env=make_env())
    message = str(error.value)
    assert file in message and ("save it again" in message or "pass the directory" in message), message


CHILD = """
import sys, textenv, gymnasium as gym
from agents import PPO
env = gym.make_vec(
    "TextGen-v0", num_envs=2, model="tiny-sp", max_new_tokens=4, vectorization_mode="vector_entry_point"
)
agent = PPO(env, model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=2)
agent.save(sys.argv[1])
print("ready", flush=True)
while True:
    agent.num_timesteps += 1
    agent.save(sys.argv[1])
"""


def test_a_save_killed_at_any_moment_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    env = {
        key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    counts = []
    for delay in (0.05, 0.4, 0.9, 1.7):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True
        )
        assert child.stdout is not None
        while (line := child.stdout.readline()) and line.strip() != "ready":
            pass  # DeepSpeed's start-up notices
        assert line.strip() == "ready", "the child died before its first save"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        loaded = PPO.load(path, env=make_env())  # the old or the new checkpoint, whole
        counts.append(loaded.num_timesteps)
    assert counts[-1] > 0  # saves did happen before the kills
    PPO(make_env(), model="tiny-sp", episodes_per_rollout=4, minibatch_size=2).save(path)
    assert storage.leftovers(path) == []  # the next save cleans up what the kills left


def test_recovery_between_the_two_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the atomic swap is unavailable, a kill between 'old aside' and 'new in place' leaves the old
    checkpoint under a side name, which load finds."""
    agent = PPO(make_env(), model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=2)
    path = tmp_path / "ckpt"
    agent.save(path)
    monkeypatch.setattr(storage, "_rename_exchange", lambda src, dst: False)
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):  # noqa: ANN001, ANN202
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        return real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", dying_replace)
    agent.num_timesteps = 99
    with pytest.raises(KeyboardInterrupt):
        agent.save(path)
    monkeypatch.setattr(storage.os, "replace", real_replace)
    assert not path.exists()
    assert PPO.load(path, env=make_env()).num_timesteps == 0  # the old checkpoint, found aside
    agent.save(path)  # the next save puts things in order
    assert PPO.load(path, env=make_env()).num_timesteps == 99 and storage.leftovers(path) == []


def test_env_id_and_bad_settings() -> None:
    agent = PPO("TextGen-v0", model="tiny-sp", episodes_per_rollout=4, minibatch_size=2)
    assert agent.n_envs == 1 and agent.max_new_tokens == 48
    with pytest.raises(TypeError, match="learning_rate must be a number, got '1e-5'"):
        PPO(make_env(), model="tiny-sp", learning_rate="1e-5")
