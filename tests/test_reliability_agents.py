"""The agents hold against tampered checkpoints, a user's own directories and bad settings: a clear error that
names the file, key or option, and nothing of the user's lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401  (registers the envs)
from agents import PPO


def letter_e(prompts, completions, references=None) -> np.ndarray:
    return np.array([c.count("e") / max(1, len(c.replace(" ", ""))) for c in completions], dtype=np.float32)


def make_env() -> gym.Env:
    return gym.make("TextGen-v0", model="tiny-sp", max_new_tokens=6, max_prompt_tokens=12, reward_fn=letter_e)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO checkpoint saved mid-episode."""
    path = tmp_path_factory.mktemp("ckpt") / "agent"
    agent = PPO(make_env(), model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=4)
    agent.learn(27)
    agent.save(path)
    return path


def tampered(saved: Path, tmp_path: Path, file: str, edit) -> Path:  # noqa: ANN001
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    data = json.loads((copy / file).read_text())
    edit(data)
    (copy / file).write_text(json.dumps(data))
    return copy


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("counters", "num_timesteps", "lots"),
        ("counters", "num_timesteps", -5),
        ("counters", "n_updates", 1.5),
        ("counters", "episode_num", True),
        ("counters", "num_timesteps", None),
        ("settings", "seed", "zero"),
        ("settings", "max_new_tokens", -1),
        ("settings", "model_source", 3),
        ("settings", "deepspeed_config", [1]),
    ],
)
def test_a_tampered_counter_or_setting_is_refused_naming_the_file_and_key(
    saved: Path, tmp_path: Path, section: str, key: str, value: object
) -> None:
    path = tampered(saved, tmp_path, "agent.json", lambda state: state[section].update({key: value}))
    with pytest.raises(ValueError, match=rf"agent\.json.*{section}\.{key}"):
        PPO.load(path, env=make_env())


@pytest.mark.parametrize(("key", "value"), [("_length", -3), ("_index", 10**9), ("_length", "lots")])
def test_a_tampered_env_state_file_is_refused_naming_the_file_and_key(
    saved: Path, tmp_path: Path, key: str, value: object
) -> None:
    path = tampered(saved, tmp_path, "env_state.json", lambda states: states[0].update({key: value}))
    with pytest.raises(ValueError, match=rf"env_state\.json.*{key}"):
        PPO.load(path, env=make_env())


def users_model_dir(tmp_path: Path) -> Path:
    """A user's own HF model folder, with files an export would not write."""
    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "README.md").write_text("my notes")
    return folder


def test_export_and_save_never_replace_a_users_model_folder(tmp_path: Path) -> None:
    agent = PPO(make_env(), model="tiny-sp", seed=0, episodes_per_rollout=4, minibatch_size=4)
    folder = users_model_dir(tmp_path)
    for write in (agent.export, agent.save):
        with pytest.raises(FileExistsError, match="did not write"):
            write(folder)
    assert (folder / "README.md").read_text() == "my notes"
    agent.export(tmp_path / "export")
    agent.export(tmp_path / "export")  # our own export may be replaced
    agent.save(tmp_path / "ckpt")
    agent.save(tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="holds a textenv checkpoint"):
        agent.export(tmp_path / "ckpt")  # an export does not replace a checkpoint
    with pytest.raises(FileExistsError, match="holds a textenv export"):
        agent.save(tmp_path / "export")
    assert (tmp_path / "ckpt" / "agent.json").is_file()


def test_a_reward_model_save_never_replaces_a_users_folder(tmp_path: Path) -> None:
    from rewards.models import PreferenceRewardModel

    model = PreferenceRewardModel.create(str(textenv.models.model_dir("tiny-sp")))
    folder = users_model_dir(tmp_path)
    with pytest.raises(FileExistsError, match="did not write"):
        model.save(folder)
    assert (folder / "README.md").read_text() == "my notes"
    model.save(tmp_path / "rm")
    model.save(tmp_path / "rm")


def sft_records(count: int) -> list[dict[str, str]]:
    return [{"prompt": f"Review {i}:", "completion": " good and fine"} for i in range(count)]


def test_a_diverging_sft_run_exports_nothing_and_fails(tmp_path: Path) -> None:
    """The weights turn NaN at the last step (as SmolLM2's do under a diverging learning rate; tiny-sp's
    layer norms keep them finite), so no later loss shows it."""

    from agents.sft import SFTConfig, SFTTrainer

    config = SFTConfig(epochs=1, batch_size=4, max_length=32, precision="fp32", progress_bar=False)
    trainer = SFTTrainer("tiny-sp", sft_records(16), tmp_path / "run", config)
    step = trainer.engine.step

    def diverging_step() -> None:
        step()
        if trainer.step == trainer.total_steps - 1:
            next(trainer.engine.module.parameters()).data.fill_(float("nan"))

    trainer.engine.step = diverging_step
    with pytest.raises(FloatingPointError, match="learning_rate"):
        trainer.train()
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_a_diverging_reward_model_run_fails_before_anything_is_saved() -> None:
    """The weights turn NaN in the last step (a learning rate within the allowed (0, 1) can do that to a
    large backbone; tiny-sp's layer norms keep it finite), so the trainer must look at the weights."""
    from rewards.fitting import TrainConfig, fit
    from rewards.models import ClassifierRewardModel

    model = ClassifierRewardModel.create(str(textenv.models.model_dir("tiny-sp")), max_length=16)
    settings = {"epochs": 1, "batch_size": 4, "logdir": "", "progress_bar": False}
    calls = []

    def loss_fn(model: ClassifierRewardModel, batch: list) -> object:
        calls.append(1)
        if len(calls) == 2:  # the last of two steps
            model.head.weight.data.fill_(float("nan"))
        return model.logits(None, batch).float() ** 2

    with pytest.raises(FloatingPointError, match="learning_rate"):
        fit(
            model,
            ["a", "b", "c", "d", "e", "f"],
            loss_fn,
            lambda m: {"eval_accuracy": 0.0},
            TrainConfig(**settings),
        )


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0", "TextChat-v0"])
def test_an_absurd_sequence_length_gets_a_bound_error(env_id: str) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        gym.make(env_id, model="tiny-sp", max_new_tokens=10**9)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        gym.make(env_id, model="tiny-sp", max_prompt_tokens=10**9)


@pytest.mark.parametrize("bad", [[1, 2], 3, b"x"])
def test_a_deepspeed_config_of_another_type_is_refused_naming_it(bad: object) -> None:
    from infra.engine import load_config

    with pytest.raises(TypeError, match="deepspeed_config"):
        load_config(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [("minibatch_size", 2.5), ("episodes_per_rollout", True), ("kl_horizon", "10"), ("max_new_tokens", 4.0)],
)
def test_integer_settings_must_be_ints(name: str, value: object) -> None:
    from agents.ppo import PPOConfig

    with pytest.raises(TypeError, match=name):
        PPOConfig(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"), [("batch_size", 2.5), ("learning_starts", True), ("gradient_steps", 1.0)]
)
def test_integer_dqn_settings_must_be_ints(name: str, value: object) -> None:
    from agents.dqn import DQNConfig

    with pytest.raises(TypeError, match=name):
        DQNConfig(**{name: value})


def test_a_checkpoint_loaded_in_the_other_precision_says_how_to_load_it(tmp_path: Path) -> None:
    settings = {"episodes_per_rollout": 4, "minibatch_size": 4, "precision": "fp32"}
    agent = PPO(make_env(), model="tiny-sp", seed=0, **settings)
    agent.save(tmp_path / "fp32")
    with pytest.raises(ValueError, match="trained in fp32.*precision='fp32'") as error:
        PPO.load(tmp_path / "fp32", env=make_env(), precision="bf16")
    assert "damaged" not in str(error.value)
    assert PPO.load(tmp_path / "fp32", env=make_env(), precision="fp32").precision == "fp32"


def test_a_replaced_model_folder_is_named_in_a_short_message(tmp_path: Path) -> None:
    settings = {"episodes_per_rollout": 4, "minibatch_size": 4, "precision": "fp32"}
    agent = PPO(make_env(), model="tiny-sp", seed=0, **settings)
    agent.save(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "model")
    textenv.load_model("tiny-gpt2").save_pretrained(tmp_path / "ckpt" / "model")
    with pytest.raises(ValueError, match=r"ckpt/model does not hold the network") as error:
        PPO.load(tmp_path / "ckpt", env=make_env())
    assert len(str(error.value)) < 400


@pytest.mark.parametrize(
    ("key", "value"), [("value", "x"), ("value", -1.0), ("horizon", 0), ("target", float("nan"))]
)
def test_a_tampered_kl_controller_is_refused_naming_the_file(
    saved: Path, tmp_path: Path, key: str, value: object
) -> None:
    path = tampered(
        saved, tmp_path, "agent.json", lambda state: state["extra"]["kl_ctl"].update({key: value})
    )
    with pytest.raises(ValueError, match=r"agent\.json.*kl_ctl"):
        PPO.load(path, env=make_env())
