"""SB3 tooling works unchanged with the agents; saving, resuming, exporting; bad input gives clear errors."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from transformers import AutoModelForCausalLM

import textenv  # noqa: F401
from agents import PPO, REINFORCE
from agents.vec_env import wrap_vector_env

KW = {"model": "tiny-sp", "max_new_tokens": 4, "max_prompt_tokens": 8}


def reward(prompts, completions, references=None) -> np.ndarray:
    return np.array([c.count("e") / max(1, len(c)) for c in completions], dtype=np.float32)


def small(algo=PPO, env=None, **kwargs):
    env = env if env is not None else gym.make("TextGen-v0", reward_fn=reward, **KW)
    settings = {"episodes_per_rollout": 4, "minibatch_size": 2, "seed": 0, **kwargs}
    return algo(env, model="tiny-sp", **settings)


def optimizer_tensors(engine) -> list[torch.Tensor]:
    """The optimizer's fp32 master weights and Adam moments (inside DeepSpeed's bf16 wrapper, if any)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    state = [t for s in inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return state + [p.detach() for group in inner.param_groups for p in group["params"]]


def test_callbacks_logging_checkpoint_resume_export(tmp_path) -> None:
    agent = small(tensorboard_log=str(tmp_path / "runs"))
    eval_env = gym.make("TextGen-v0", reward_fn=reward, **KW)
    callbacks = [
        CheckpointCallback(save_freq=20, save_path=str(tmp_path / "ckpt")),
        EvalCallback(eval_env, eval_freq=20, n_eval_episodes=2, log_path=str(tmp_path / "eval")),
    ]
    agent.learn(total_timesteps=40, callback=callbacks)
    (run_dir,) = (tmp_path / "runs" / "TextGen-v0" / "PPO").iterdir()
    assert run_dir.name.startswith("seed0-")
    assert json.loads((run_dir / "config.json").read_text())["algo"] == "PPO"
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    assert (tmp_path / "ckpt" / "rl_model_20_steps" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "eval" / "evaluations.npz").is_file()

    agent.save(tmp_path / "agent")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "agent" / "model")
    assert plain.config.vocab_size == agent.policy.lm.config.vocab_size
    resumed = PPO.load(tmp_path / "agent", env=gym.make("TextGen-v0", reward_fn=reward, **KW))
    assert resumed.num_timesteps == agent.num_timesteps and resumed.kl_ctl.value == agent.kl_ctl.value
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(agent.reference.parameters(), resumed.reference.parameters(), strict=True):
        assert torch.equal(a, b)
    opt_a, opt_b = optimizer_tensors(agent.engine), optimizer_tensors(resumed.engine)
    assert len(opt_a) == len(opt_b) > len(list(agent.policy.parameters()))  # master weights and Adam moments
    assert all(torch.equal(a, b) for a, b in zip(opt_a, opt_b, strict=True))
    mean, _ = evaluate_policy(resumed, resumed.get_env(), n_eval_episodes=2)
    assert 0.0 <= mean <= 1.0


def test_sequence_env_and_gymnasium_vector_env() -> None:
    env = gym.make_vec(
        "TextGenSeq-v0", num_envs=2, reward_fn=reward, vectorization_mode="vector_entry_point", **KW
    )
    agent = small(REINFORCE, env=env)
    agent.learn(total_timesteps=8)
    assert agent.num_timesteps >= 8
    mean, _ = evaluate_policy(agent, wrap_vector_env(env), n_eval_episodes=2)
    assert 0.0 <= mean <= 1.0


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_train(stage) -> None:
    agent = small(deepspeed_config={"zero_optimization": {"stage": stage}})
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=8)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))


class BadObsEnv(gym.Env):
    observation_space = spaces.Box(0, 1, (4,))
    action_space = spaces.Discrete(4)


def test_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="incompatible observation space"):
        small(env=BadObsEnv())
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        PPO(gym.make("TextGen-v0", reward_fn=reward, **KW), model="tiny-gpt2")
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        small(deepspeed_config=str(bad))
    with pytest.raises(ValueError, match="zero_optimization.stage"):
        small(deepspeed_config={"zero_optimization": {"stage": 4}})  # 0-3 exist
    with pytest.raises(ValueError, match="minibatch_size"):
        small(minibatch_size=8)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path) -> None:
    agent = small()
    agent.kl_ctl.value = float("nan")  # poisons the per-token rewards, hence the loss
    agent.save(tmp_path / "good")
    with pytest.raises(FloatingPointError, match="at update 0, timestep"):
        checkpoints = CheckpointCallback(save_freq=1, save_path=str(tmp_path / "c"))
        agent.learn(total_timesteps=8, callback=checkpoints)
    assert (tmp_path / "good" / "agent.json").is_file()
    assert not list(tmp_path.glob(".*tmp"))
