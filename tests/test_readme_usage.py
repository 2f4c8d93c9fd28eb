"""The quick tour (README.md, docs/getting-started.md) with the tiny model and a small budget, checked in more
detail than tests/test_docs.py, which runs the blocks as written; and the links of every page."""

from __future__ import annotations

import re
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


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but ``-``/``_`` dropped, spaces ``-``.

    >>> anchor("Set-up: the two commands"), anchor("`TextGen-v0`, the token level")
    ('set-up-the-two-commands', 'textgen-v0-the-token-level')
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> set[str]:
    """The anchors of ``page``'s headings, those of the files it pulls in with MyST's ``{include}`` too."""
    text = page.read_text()
    found = {anchor(h) for h in re.findall(r"^#+ (.+)$", "".join(text.split("```")[::2]), flags=re.MULTILINE)}
    for included in re.findall(r"^```\{include\} (\S+)", text, flags=re.MULTILINE):
        found |= headings(page.parent / included)
    return found


def test_readme_and_architecture_links_resolve() -> None:
    """Every relative link of README.md, ARCHITECTURE.md and the docs pages names a file or folder of the
    repository, and every ``#anchor`` one of the target's headings (a moved file or a renamed section breaks
    the map). The docs build (Sphinx with -W, in CI) checks the pages' links too; this needs no Sphinx."""
    checked = 0
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in (p for p in pages if "_build" not in p.parts):
        doc = page.relative_to(ROOT)
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", "".join(text.split("```")[::2])):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, fragment = target.partition("#")
            where = page if not path else (page.parent / path).resolve()
            assert where.exists(), f"{doc}: the link ({target}) names a missing {where}"
            if fragment:
                assert fragment in headings(where), f"{doc}: ({target}) names no heading"
            checked += 1
    assert checked >= 60, checked
