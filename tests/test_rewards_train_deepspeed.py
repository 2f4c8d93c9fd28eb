"""Reward models on the DeepSpeed engine: a causal-LM backbone (DeepSpeed-Chat's step 2), bf16 master weights,
two processes under torchrun training the same model as one, and the CLI's DeepSpeed flags."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from launch import needs_torchrun, torchrun

import rewards
from rewards.fitting import TrainConfig, train_preference
from rewards.models import PreferenceRewardModel
from rewards.train import main, read_preferences
from textenv.models import model_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
GOOD = ["great", "wonderful", "excellent", "helpful", "fantastic", "effective"]
BAD = ["awful", "terrible", "useless", "painful", "dreadful", "nasty"]
TEMPLATES = [" this drug was {}", " the pills felt {}", " {} results so far", " overall {}", " honestly {}"]
PROBE = (["Review 3:"] * 3, [" this drug was excellent", " this drug was nasty", ""])


def triples(seed: int, count: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        template = rng.choice(TEMPLATES)
        out.append(
            (
                f"Review {rng.randint(0, 9)}:",
                template.format(rng.choice(GOOD)),
                template.format(rng.choice(BAD)),
            )
        )
    return out


def config(**overrides) -> TrainConfig:
    settings = dict(
        max_length=16,
        epochs=4,
        batch_size=8,
        learning_rate=3e-3,
        head_learning_rate=None,
        warmup_fraction=0.0,
        logdir="",
        progress_bar=False,
        seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM on SmolLM2's tokenizer, saved in bf16 as an exported policy may be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_dir("tiny-smollm2")
    out = tmp_path_factory.mktemp("policy") / "export"
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def causal_model(causal_lm) -> PreferenceRewardModel:
    return train_preference(triples(0, 64), triples(1, 48), config(), backbone=str(causal_lm))


def test_causal_lm_reward_model_learns_saves_and_scores_in_env(causal_model, tmp_path) -> None:
    model = causal_model
    assert (model.text_format, model.pooling, model.include_prompt) == ("causal", "last", True)
    assert next(model.backbone.parameters()).dtype == torch.float32  # loaded fp32 from bf16 files
    assert not hasattr(model.backbone, "lm_head")  # the LM head is dropped, a scalar head replaces it
    metrics = model.metrics
    assert metrics["eval_accuracy"] >= 0.9, metrics  # held-out pairwise accuracy (chance: 0.5)
    assert metrics["eval_chosen_mean"] > metrics["eval_rejected_mean"] and metrics["eval_margin_std"] > 0
    path = model.save(tmp_path / "rm")
    names = set(os.listdir(path))
    assert {"model.safetensors", "head.safetensors", "reward_model.json", "tokenizer.json"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pkl"))]
    saved = json.loads((path / "reward_model.json").read_text())
    assert saved["text_format"] == "causal" and saved["metrics"]["eval_accuracy"] == metrics["eval_accuracy"]
    loaded = PreferenceRewardModel.load(path)
    np.testing.assert_allclose(loaded(*PROBE), model(*PROBE), rtol=1e-5, atol=1e-5)
    good, bad, empty = loaded(*PROBE)
    assert good > bad and np.isfinite(empty)
    assert isinstance(loaded, rewards.CheckedReward)  # a textenv reward: checked inputs and outputs
    with pytest.raises(ValueError, match="lengths differ"):
        loaded(["p"], ["a", "b"])
    import gymnasium as gym

    import textenv  # noqa: F401  (registers the envs)

    env = gym.make(
        "TextGen-v0", model="tiny-smollm2", task="drugs-sentiment", reward_fn=loaded, max_new_tokens=3
    )
    env.reset(seed=0)
    done, reward, info = False, 0.0, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        done = terminated or truncated
    assert reward == pytest.approx(float(loaded([info["prompt"]], [info["completion"]])[0]), abs=1e-6)


def test_causal_input_keeps_the_end_when_too_long(causal_model) -> None:
    """Past max_length the start of the prompt is cut, not the completion whose end the head reads."""
    long_prompt = "Review: " + "filler " * 40
    scores = causal_model([long_prompt] * 2, PROBE[1][:2])
    assert scores[0] > scores[1]


def test_bf16_trains_and_keeps_fp32_master_weights(causal_lm) -> None:
    model = train_preference(
        triples(0, 64), triples(1, 48), config(epochs=3), backbone=str(causal_lm), precision="bf16"
    )
    params = list(model.backbone.parameters())
    assert all(p.dtype == torch.float32 for p in params)
    # the fp32 master weights were copied back: most trained weights are not bf16-representable
    weight = params[-2].detach()
    assert (weight != weight.bfloat16().float()).float().mean() > 0.5
    assert model.metrics["eval_accuracy"] >= 0.8, model.metrics


def write_triples(path: Path, items: list[tuple[str, str, str]]) -> str:
    path.write_text(
        "".join(json.dumps(dict(zip(("prompt", "chosen", "rejected"), t, strict=True))) + "\n" for t in items)
    )
    return str(path)


@needs_torchrun
def test_two_processes_train_the_same_model_as_one(causal_lm, tmp_path) -> None:
    """torchrun --nproc_per_node 2 -m rewards.train: each rank takes half of every batch (45 triples, batch 8:
    the last batch splits 3/2), ZeRO-1; the saved model scores as one process trained on the same data."""
    data = write_triples(tmp_path / "train.jsonl", triples(0, 45))
    held_out = write_triples(tmp_path / "eval.jsonl", triples(1, 16))
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    flags = ["--max-length", "16", "--epochs", "2", "--batch-size", "8", "--learning-rate", "3e-3"]
    flags += [
        "--head-learning-rate",
        "None",
        "--warmup-fraction",
        "0.25",
        "--logdir",
        "",
        "--no-progress-bar",
    ]
    args = ["-m", "rewards.train", "preference", "--backbone", str(causal_lm), "--data", data]
    args += ["--eval-data", held_out, "--out", str(tmp_path / "rm2"), "--deepspeed-config", str(ds_config)]
    result = torchrun(args + flags, timeout=240)
    text = result.stdout
    assert result.returncode == 0, text[-4000:]
    assert text.count("held-out pairwise accuracy") == 1  # rank 0 alone reports and saves
    two = PreferenceRewardModel.load(tmp_path / "rm2")
    one = train_preference(
        read_preferences(data),
        read_preferences(held_out),
        config(epochs=2, warmup_fraction=0.25),
        backbone=str(causal_lm),
    )
    # same steps up to float rounding (gloo's sums, amplified a little by Adam over 12 steps) ...
    np.testing.assert_allclose(two(*PROBE), one(*PROBE), rtol=0, atol=5e-3)
    assert two.metrics["eval_accuracy"] == pytest.approx(one.metrics["eval_accuracy"])
    assert two.metrics["train_loss"] == pytest.approx(one.metrics["train_loss"], rel=1e-3)
    # ... while a batch of 16 (2 ranks x 8, the agents' per-rank convention) trains a clearly different model
    other = train_preference(
        read_preferences(data),
        read_preferences(held_out),
        config(epochs=2, warmup_fraction=0.25, batch_size=16),
        backbone=str(causal_lm),
    )
    assert np.abs(other(*PROBE) - one(*PROBE)).max() > 0.1


def test_cli_backbone_precision_and_bad_deepspeed_config(causal_lm, tmp_path) -> None:
    data = write_triples(tmp_path / "train.jsonl", triples(2, 24))
    common = [
        "preference",
        "--backbone",
        str(causal_lm),
        "--data",
        data,
        "--epochs",
        "1",
        "--max-length",
        "12",
    ]
    common += ["--logdir", "", "--no-progress-bar"]
    # --local_rank=R is what the deepspeed launcher appends; it is dropped
    assert main([*common, "--out", str(tmp_path / "rm"), "--precision", "bf16", "--local_rank=0"]) == 0
    loaded = PreferenceRewardModel.load(tmp_path / "rm")
    assert loaded.text_format == "causal" and np.isfinite(loaded(*PROBE)).all()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    with pytest.raises(ValueError, match="'zero_optimization.stage' is 7"):
        main([*common, "--out", str(tmp_path / "rm-bad"), "--deepspeed-config", str(bad)])
    assert not (tmp_path / "rm-bad").exists()


def test_op_build_failure_on_an_arch_variant_says_how_to_fix(monkeypatch) -> None:
    """DeepSpeed cannot JIT-build FusedAdam when TORCH_CUDA_ARCH_LIST names an arch variant ('9.0a', as on
    the H200 image): the engine's error names the variable and both ways out; other errors pass unchanged."""
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    from infra.engine import op_build_hint

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    with pytest.raises(ValueError, match="invalid literal") as caught:
        FusedAdamBuilder().compute_capability_args()  # the step that fails inside deepspeed.initialize
    hint = op_build_hint(caught.value)
    assert hint is not None
    assert "TORCH_CUDA_ARCH_LIST='8.0;9.0a'" in hint and "TORCH_CUDA_ARCH_LIST='8.0;9.0'" in hint
    assert '"torch_adam": true' in hint
    try:
        int("x")
    except ValueError as other:  # not raised in DeepSpeed's op builder
        assert op_build_hint(other) is None
