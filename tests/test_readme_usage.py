"""The README's quick tour, run as written but with the tiny model and a small budget."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from transformers import AutoModelForCausalLM

import rewards
import textenv  # noqa: F401
from agents import PPO
from agents.vec_env import wrap_vector_env

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"model": "tiny-sp", "max_new_tokens": 6}


def test_env_tour() -> None:
    env = gym.make("TextGen-v0", render_mode="ansi", **SMALL)
    obs, info = env.reset(seed=0)
    assert obs["input_ids"].shape == (64 + 6,) and "prompt" in info
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(env.render(), str) and env.render()
    venv = gym.make_vec("TextGen-v0", num_envs=8, vectorization_mode="vector_entry_point", **SMALL)
    assert venv.reset(seed=0)[0]["input_ids"].shape == (8, 70)
    seq = gym.make("TextGenSeq-v0", **SMALL)
    assert seq.reset(seed=0)[0]["input_ids"].shape == (64,)


def test_agent_tour(tmp_path: Path) -> None:
    reward_fn = rewards.WeightedSum(
        [rewards.VaderSentiment(), rewards.RepetitionPenalty()], weights=[1.0, 0.2]
    )
    env = gym.make_vec(
        "TextGen-v0", num_envs=4, vectorization_mode="vector_entry_point", reward_fn=reward_fn, **SMALL
    )
    eval_env = wrap_vector_env(
        gym.make_vec(
            "TextGen-v0",
            num_envs=2,
            split="test",
            vectorization_mode="vector_entry_point",
            reward_fn=reward_fn,
            **SMALL,
        )
    )
    agent = PPO(
        env,
        model="tiny-sp",
        deepspeed_config=str(ROOT / "agents/configs/ds_cpu.json"),
        tensorboard_log=str(tmp_path / "runs"),
        episodes_per_rollout=8,
        minibatch_size=4,
        seed=0,
    )
    checkpoints = tmp_path / "ckpt"
    agent.learn(
        total_timesteps=160,
        callback=[CheckpointCallback(20, str(checkpoints)), EvalCallback(eval_env, eval_freq=20)],
    )
    assert agent.num_timesteps >= 160
    assert any(checkpoints.iterdir()), "CheckpointCallback wrote nothing"
    mean, std = evaluate_policy(agent, eval_env, n_eval_episodes=4)
    assert np.isfinite(mean) and np.isfinite(std)

    agent.save(tmp_path / "ppo_sentiment")
    loaded = PPO.load(tmp_path / "ppo_sentiment", env=env)
    for (name, a), (_, b) in zip(
        agent.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    agent.export(tmp_path / "ppo_sentiment_hf")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ppo_sentiment_hf")
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, agent.policy.lm.state_dict()[name]), name


def test_readme_commands_parse() -> None:
    """Every ``python -m <script>`` command in the README is a valid command line of today's CLI (a script's
    options are its module's ``Args`` dataclass, parsed by ``tyro.cli``)."""
    import importlib

    import tyro

    parts = (ROOT / "README.md").read_text().replace("\\\n", " ").split("```")
    prose, fenced = "".join(parts[::2]), "".join(parts[1::2])
    script = r"(benchmarks\.\w+|rewards\.train|textenv)\b"
    inline = re.findall(rf"`[^`]*?-m {script}([^`]*)`", prose)  # may wrap lines
    blocks = re.findall(rf"^\S*python -m {script}([^#\n]*)", fenced, flags=re.MULTILINE)
    runs = [module for module, _ in inline + blocks if module in ("benchmarks.run", "benchmarks.suite")]
    assert len(runs) >= 4 and {"benchmarks.report", "rewards.train"} <= {module for module, _ in blocks}
    for module, command in inline + blocks:
        args = importlib.import_module("textenv.__main__" if module == "textenv" else module).Args
        tyro.cli(args, args=shlex.split(command))  # exits on an unknown option or a bad value


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but ``-``/``_`` dropped, spaces ``-``.

    >>> anchor("Set-up: the two commands"), anchor("`TextGen-v0`, the token level")
    ('set-up-the-two-commands', 'textgen-v0-the-token-level')
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_and_architecture_links_resolve() -> None:
    """Every relative link of README.md and ARCHITECTURE.md names a file or folder of the repository, and
    every ``#anchor`` one of the target's headings (a moved file or a renamed section breaks the map)."""
    checked = 0
    for doc in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / doc).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", "".join(text.split("```")[::2])):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, fragment = target.partition("#")
            where = ROOT / doc if not path else ROOT / path
            assert where.exists(), f"{doc}: the link ({target}) names a missing {where.relative_to(ROOT)}"
            if fragment:
                headings = re.findall(r"^#+ (.+)$", where.read_text(), flags=re.MULTILINE)
                assert fragment in {anchor(h) for h in headings}, f"{doc}: ({target}) names no heading"
            checked += 1
    assert checked >= 20, checked
