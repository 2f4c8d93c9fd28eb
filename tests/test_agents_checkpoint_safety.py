"""Loading an untrusted checkpoint never runs code, and saving never destroys what is already on disk."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import textenv  # noqa: F401  (registers the envs)
from agents import DQN, PPO


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: the attack loading must never allow."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def make_env() -> gym.vector.VectorEnv:
    return gym.make_vec(
        "TextGen-v0", num_envs=2, model="tiny-sp", max_new_tokens=4, vectorization_mode="vector_entry_point"
    )


def plant(file: Path, marker: Path) -> None:
    """Replace ``file`` by a pickle payload in the format its name suggests (torch zip or plain pickle)."""
    if file.suffix in (".pt", ".bin"):
        torch.save({"state": Payload(marker)}, file)
    else:
        file.write_bytes(pickle.dumps(Payload(marker)))


@pytest.mark.parametrize("algo", [PPO, DQN], ids=["ppo", "dqn"])
def test_planted_pickles_never_run(tmp_path: Path, algo) -> None:
    env = make_env()
    settings = {"learning_starts": 4, "batch_size": 4} if algo is DQN else {"episodes_per_rollout": 4}
    agent = (
        algo(env, model="tiny-sp", seed=0, minibatch_size=2, **settings)
        if algo is PPO
        else algo(env, model="tiny-sp", seed=0, **settings)
    )
    agent.learn(total_timesteps=16)
    saved = tmp_path / "agent"
    agent.save(saved)
    files = sorted(p.relative_to(saved) for p in saved.rglob("*") if p.is_file())
    assert any(f.suffix == ".pt" for f in files) and any(f.name == "rng.json" for f in files)
    marker = tmp_path / "pwned"
    outcomes = {}
    for relative in [
        *files,
        Path("model") / "pytorch_model.bin",
    ]:  # every file, plus a pickle beside the weights
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(saved, copy)
        plant(copy / relative, marker)
        try:
            algo.load(copy, env=env)
            outcomes[str(relative)] = "ignored"
        except Exception as error:  # noqa: BLE001  (any clear refusal is fine; running the payload is not)
            outcomes[str(relative)] = type(error).__name__
        assert not marker.exists(), f"loading ran a pickle planted in {relative}"
    refused = [name for name, outcome in outcomes.items() if outcome != "ignored"]
    assert any(name.endswith(".pt") for name in refused), outcomes  # DeepSpeed's files are read, and refused
    assert outcomes[str(Path("model") / "pytorch_model.bin")] == "ignored", outcomes


def test_save_refuses_to_replace_user_data(tmp_path: Path) -> None:
    env = make_env()
    agent = PPO(env, model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=2)
    user_dir = tmp_path / "notes"
    user_dir.mkdir()
    (user_dir / "thesis.txt").write_text("keep me")
    user_file = tmp_path / "file.txt"
    user_file.write_text("keep me too")
    for target in (user_dir, tmp_path / "notes.zip", user_file):
        with pytest.raises(FileExistsError, match="Choose"):
            agent.save(target)
        with pytest.raises(FileExistsError, match="Choose"):
            agent.export(target)
    assert (user_dir / "thesis.txt").read_text() == "keep me" and user_file.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "notes"]  # no leftovers either


def test_overwriting_a_checkpoint_keeps_it_whole(tmp_path: Path) -> None:
    env = make_env()
    agent = PPO(env, model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=2)
    path = tmp_path / "ckpt"
    agent.save(path)
    agent.learn(total_timesteps=8)
    agent.save(path)  # a checkpoint of ours may be replaced
    resumed = PPO.load(path, env=env)
    assert resumed.num_timesteps == agent.num_timesteps
    assert all(
        torch.equal(a, b) for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_creating_an_agent_leaves_the_environment_alone() -> None:
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    before = {name: os.environ.get(name) for name in names}
    PPO(make_env(), model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=2)
    assert {name: os.environ.get(name) for name in names} == before
