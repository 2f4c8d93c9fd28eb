"""benchmarks.pipeline: a tiny-model smoke run of SFT -> reward model -> PPO, and steps run alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import pipeline

TINY = """
    --model tiny-sp --precision fp32 --seed 0
    --sft-examples 32 --sft-eval-examples 8 --sft-learning-rate 1e-3 --sft-max-length 64
    --rm-backbone sft --rm-pairs 16 --rm-eval-pairs 16
    --ppo-iterations 1 --num-envs 4 --episodes-per-rollout 4 --minibatch-size 4
    --n-epochs 1 --max-new-tokens 8 --eval-prompts 4 --heldout-texts 4
""".split()


def test_whole_recipe_then_steps_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    results = pipeline.main([*TINY, "--run-dir", str(run), "--ema-decay", "0.9", "--ptx-coef", "0.5"])
    printed = capsys.readouterr().out
    assert "step 1 SFT: held-out perplexity" in printed
    assert "step 2 reward model (sft): pairwise accuracy" in printed
    assert "step 3 PPO: held-out reward" in printed and "KL to the SFT model" in printed and "EMA" in printed

    saved = json.loads((run / "pipeline.json").read_text())
    assert saved["sft"]["eval_perplexity"] < saved["sft"]["eval_perplexity_before"]  # SFT learned
    assert 0.0 <= saved["reward_model"]["pairwise_accuracy"] <= 1.0
    for key in ("reward", "kl_to_reference", "heldout_perplexity"):
        assert key in saved["ppo"]["after"] and key in saved["ppo"]["ema"]
    # each step's output is the next one's input, all inside the run directory
    sft_model = run / "sft" / "model"
    assert saved["inputs"] == {
        "sft_model": str(sft_model),
        "reward_model": str((run / "reward_model").resolve()),
    }
    assert saved["reward_model"]["backbone"] == str(sft_model)
    assert json.loads((run / "reward_model" / "reward_model.json").read_text())["kind"] == "preference"
    for path in ("data/sft_train.jsonl", "data/preference_train.jsonl", "data/ptx.jsonl", "sft/metrics.json"):
        assert (run / path).is_file(), path
    for path in ("ppo/policy", "ppo/policy_ema"):
        assert (run / path / "model.safetensors").is_file(), path
    assert results["ppo"]["timesteps"] > 0

    alone = tmp_path / "alone"
    results = pipeline.main([*TINY, "--run-dir", str(alone), "--steps", "2,3", "--sft-model", str(sft_model)])
    printed = capsys.readouterr().out
    assert "step 1" not in printed and "step 3 PPO" in printed
    assert "sft" not in results and not (alone / "sft").exists()
    assert results["inputs"]["sft_model"] == str(sft_model)
    assert (alone / "reward_model" / "head.safetensors").is_file()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": "2,3"}, "--sft-model"),
        ({"steps": "3", "sft_model": "x"}, "--reward-model"),
        ({"steps": "1,4"}, "among 1, 2, 3"),
        ({"steps": "one"}, "must list step numbers"),
        ({"rm_backbone": "bert"}, "minilm"),
    ],
)
def test_bad_settings_say_what_to_pass(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline.Args(**settings)  # type: ignore[arg-type]
