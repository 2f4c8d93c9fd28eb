"""Smoke runs of the benchmark scripts on the tiny model with tiny budgets (each a few seconds on 2 cores)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu, plots, report, run, sweep, throughput, vs_trl

TINY = [
    "--model",
    "tiny-sp",
    "--threads",
    "1",
    "--no-progress-bar",
    "--eval-prompts",
    "4",
    "--eval-batch-size",
    "4",
]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_run_then_report(tmp_path: Path) -> None:
    logdir = str(tmp_path / "runs")
    zero = run.main(
        [
            "--task",
            "sentiment",
            "--reward",
            "vader",
            "--algo",
            "zero-shot",
            "--seeds",
            "0",
            "1",
            "--heldout-texts",
            "2",
            "--max-new-tokens",
            "6",
            "--logdir",
            logdir,
            *TINY,
        ]
    )
    ppo = run.main(
        [
            "--task",
            "error-rate",
            "--algo",
            "ppo",
            "--budget",
            "1it",
            "--num-envs",
            "4",
            "--episodes-per-rollout",
            "4",
            "--minibatch-size",
            "4",
            "--max-new-tokens",
            "4",
            "--logdir",
            logdir,
            *TINY,
        ]
    )
    assert [p.parent.name for p in zero] == ["zero-shot", "zero-shot"] and zero[
        0
    ].parent.parent.name == "TextGen-Sentiment-v0"
    summary = json.loads((ppo[0] / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["versions"]["torch"] and summary["timesteps"] > 0
    assert {"reward", "kl_to_reference", "distinct_1", "distinct_2", "cer"} <= set(summary["eval_after"])
    assert "heldout_perplexity" in json.loads((zero[0] / "summary.json").read_text())["eval_after"]

    markdown = report.main([logdir, "--out", str(tmp_path / "report")]).read_text()
    assert "## TextGen-ErrorRate-v0" in markdown and "| eval/reward |" in markdown and "(n = 2)" in markdown
    assert "tiny-sp" in markdown  # provenance from the summaries
    assert (tmp_path / "report" / "TextGen-ErrorRate-v0__rollout_ep_rew_mean.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "report" / "table.json").read_text())
    assert {"env_id", "algo", "metric", "mean", "std", "n", "values"} <= set(rows[0])
    change = next(r for r in rows if r["algo"] == "zero-shot" and r["metric"] == report.CHANGE)
    assert change["n"] == 2 and change["values"] == [0.0, 0.0] and change["t_interval"] == [0.0, 0.0]
    reward = next(r for r in rows if r["algo"] == "ppo" and r["metric"] == "reward")
    assert reward["n"] == 1 and reward["mean"] == summary["eval_after"]["reward"]


def test_run_seeds_are_reproducible(tmp_path: Path) -> None:
    args = [
        "--task",
        "similarity",
        "--reward",
        "chrf",
        "--max-new-tokens",
        "4",
        "--logdir",
        str(tmp_path),
        *TINY,
    ]
    first, second = run.main(args), run.main(args)
    rewards = [json.loads((d / "summary.json").read_text())["eval_after"]["reward"] for d in first + second]
    assert rewards[0] == rewards[1]  # the same seed in the same process: bit-identical


def test_evaluations_during_training_leave_the_run_unchanged(tmp_path: Path) -> None:
    """--evals 3 evaluates after one and two of three iterations (plus before and after): the curve has 4
    points at increasing env steps, and the training run is the one --evals 1 gives (the RNG is forked)."""
    argv = ["--task", "error-rate", "--algo", "reinforce", "--budget", "3it", "--num-envs", "2"]
    argv += ["--episodes-per-rollout", "2", "--minibatch-size", "2", "--max-new-tokens", "3", *TINY]
    runs = {n: run.main([*argv, "--evals", str(n), "--logdir", str(tmp_path / str(n))])[0] for n in (1, 3)}
    summaries = {n: json.loads((d / "summary.json").read_text()) for n, d in runs.items()}
    history = summaries[3]["eval_history"]
    steps = [point["timesteps"] for point in history]
    assert len(history) == 4 and steps[0] == 0 and steps == sorted(set(steps))
    assert steps[-1] == summaries[3]["timesteps"] and all(p["train_seconds"] >= 0 for p in history)
    assert len(summaries[1]["eval_history"]) == 2
    assert summaries[1]["timesteps"] == summaries[3]["timesteps"]
    assert summaries[1]["eval_after"]["_scores"] == summaries[3]["eval_after"]["_scores"]
    train = {n: report.load_run(d).scalars["rollout/ep_rew_mean"][1].tolist() for n, d in runs.items()}
    assert train[1] == train[3]
    assert len(report.load_run(runs[3]).scalars["eval/reward"][0]) == 4
    report.main([str(tmp_path / "3"), "--out", str(tmp_path / "report")])
    png = tmp_path / "report" / "TextGen-ErrorRate-v0__eval_vs_seconds_reward.png"
    assert png.stat().st_size > 1000  # the held-out reward against training wall time


def test_sweep_varies_one_setting_at_a_time_and_resumes(tmp_path: Path) -> None:
    argv = ["--task", "error-rate", "--budget", "1it", "--num-envs", "2", "--episodes-per-rollout", "4"]
    argv += ["--minibatch-size", "2", "--max-new-tokens", "3", "--evals", "1", "--learning-rates", "1e-4"]
    argv += ["--kl-coefs", "--epochs", "1", "--episodes", "2", "--out", str(tmp_path / "sweep"), *TINY]
    rows = sweep.main([*argv, "--logdir", str(tmp_path / "runs")])
    assert [r["setting"] for r in rows] == [
        "base",
        "learning_rate=0.0001",
        "n_epochs=1",
        "episodes_per_rollout=2",
    ]
    payload = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert payload["pick"] in {r["setting"] for r in rows} and len(payload["rows"]) == 4
    committed = sorted((tmp_path / "sweep" / "runs").rglob("summary.json"))
    assert len(committed) == 4
    # a second sweep elsewhere runs nothing: the committed runs count as finished
    again = sweep.main([*argv, "--logdir", str(tmp_path / "elsewhere")])
    assert again == rows and not (tmp_path / "elsewhere").exists()
    with pytest.raises(ValueError, match="minibatch-size"):
        sweep.main([*argv, "--logdir", str(tmp_path / "runs"), "--episodes", "1"])


def test_run_dqn(tmp_path: Path) -> None:
    argv = [
        "--task",
        "error-rate",
        "--algo",
        "dqn",
        "--budget",
        "80",
        "--num-envs",
        "2",
        "--max-new-tokens",
        "2",
    ]
    (run_dir,) = run.main([*argv, "--logdir", str(tmp_path), *TINY])
    assert json.loads((run_dir / "summary.json").read_text())["timesteps"] >= 80
    # learning starts after one round of 16 episodes (32 tokens), so even this budget trains
    assert "train/td_loss" in report.load_run(run_dir).scalars


def test_bad_budget_says_how_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="20it"):
        run.Args(budget="lots")
    with pytest.raises(SystemExit):  # the command line prints the same message
        run.parse_args(["--budget", "lots"])
    assert "'lots' is not valid" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eval-prompts", "0"], "--eval-prompts 0 must be at least 1, e.g. --eval-prompts 64."),
        (["--num-envs", "0"], "--num-envs 0 must be at least 1, e.g. --num-envs 16."),
        (["--episodes-per-rollout", "-2"], "--episodes-per-rollout -2 must be at least 1"),
        (["--eval-batch-size", "0"], "--eval-batch-size 0 must be at least 1"),
        (["--heldout-texts", "-1"], "--heldout-texts -1 must be at least 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),
        (["--threads", "0"], "--threads 0 must be at least 1"),
        (["--seeds", "-1"], "--seeds -1: give distinct seeds >= 0, e.g. --seeds 0 1 2."),
        (["--seeds", "0", "0"], "--seeds 0 0: give distinct seeds >= 0"),
        (["--learning-rate", "0"], "--learning-rate 0.0 must be > 0, e.g. --learning-rate 1e-5."),
        (["--init-kl-coef", "nan"], "--init-kl-coef nan must be >= 0"),
        (["--reward", "sentiment"], "--reward 'sentiment' is not known; use one of classifier, vader"),
        (["--algo", "rloo", "--group-size", "1"], "--algo rloo needs --group-size 2 or more (got 1)"),
        (["--dqn-td-lambda", "1.5"], "--dqn-td-lambda 1.5 must be in [0, 1] (1: Monte Carlo returns), e.g."),
        (["--dqn-td-lambda", "nan"], "--dqn-td-lambda nan must be in [0, 1]"),
        (["--dqn-value-expectile", "1"], "--dqn-value-expectile 1.0 must be in (0, 1), e.g."),
        (["--dqn-value-lr-scale", "0"], "--dqn-value-lr-scale 0.0 must be > 0 (1: off), e.g."),
        (["--dqn-value-lr-scale", "inf"], "--dqn-value-lr-scale inf must be > 0"),
        (
            ["--algo", "dqn", "--no-dqn-dueling", "--dqn-value-expectile", "0.7"],
            "act on the value head, which raw-logit Q (--no-dqn-dueling) lacks",
        ),
    ],
)
def test_bad_run_settings_say_how_to_fix(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())  # unwrap tyro's box
    with pytest.raises(ValueError, match="--eval-prompts 0 must be at least 1"):
        run.Args(eval_prompts=0)  # the same check from Python (benchmarks.suite builds its jobs this way)


def test_quickstart_smoke(tmp_path: Path) -> None:
    """The main command in a fresh process (as a user runs it): a progress bar with iteration, reward and KL,
    the paired held-out change with its interval, and none of the libraries' chatter."""
    args = ["--model", "tiny-sp", "--iterations", "1", "--episodes-per-rollout", "4", "--num-envs", "4"]
    args += [
        "--minibatch-size",
        "4",
        "--max-new-tokens",
        "4",
        "--eval-prompts",
        "4",
        "--logdir",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # show every warning once, as a user's shell would
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.quickstart", *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out, err = done.stdout, done.stderr
    assert "before training: mean vader reward" in out and "tensorboard --logdir" in out
    (summary_path,) = tmp_path.glob("TextGen-v0/ppo/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["iterations"] == 1 and summary["reward_change"]["n"] == 4
    assert {"time/act_s", "time/update_s", "time/reward_s"} <= set(summary["seconds_per_phase"])
    assert re.search(r"held-out change, paired on the same prompts: [+-]\d\.\d{3} \(95% CI", out), out
    assert re.search(r"PPO iteration 1 \| reward -?\d\.\d{3} \| KL -?\d\.\d\d", err), err[-2000:]
    for noise in ("Warning", "WARNING", "built successfully", "Loading weights"):
        assert noise not in out + err, f"{noise!r} in the output:\n{out}\n{err}"


def test_quickstart_hands_its_decode_option_to_the_agent(tmp_path: Path) -> None:
    from benchmarks import quickstart

    args = ["--model", "tiny-sp", "--iterations", "1", "--eval-prompts", "2", "--logdir", str(tmp_path)]
    with pytest.raises(ValueError, match="decode='fast'"):
        quickstart.main([*args, "--decode", "fast"])


def test_vs_trl_smoke(tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    results = vs_trl.main(
        [
            "--model",
            "tiny-sp",
            "--reward",
            "vader",
            "--seconds",
            "0.5",
            "--batch-size",
            "4",
            "--group-size",
            "2",
            "--max-new-tokens",
            "4",
            "--eval-prompts",
            "2",
            "--contestants",
            "trl-grpo",
            "ours-rloo",
            "ours-grpo",
            "--json",
            str(out),
        ]
    )
    assert [r["contestant"] for r in results] == ["trl-grpo", "ours-rloo", "ours-grpo"]
    assert results[0]["precision"] == "bf16" and results[1]["precision"] in ("bf16", "fp32")
    assert all(r["iterations"] >= 1 and r["completion_tokens_per_s"] > 0 for r in results)
    assert json.loads(out.read_text())["versions"]["trl"]


@pytest.mark.parametrize(
    "lora", [[], ["--lora-rank", "2", "--rollout-merge-lora"]], ids=["full", "lora-merged"]
)
def test_throughput_smoke(tmp_path: Path, lora: list[str]) -> None:
    """The full-weights run also compares eager and compiled decoding and sweeps one point of each scaling
    axis, at the shapes of tests/test_agents_decode.py (torch's compile cache then has the step)."""
    out = tmp_path / "throughput.json"
    argv = ["--model", "tiny-sp", "--num-envs", "4", "--max-new-tokens", "8", "--max-prompt-tokens", "12"]
    argv += [
        "--minibatch-size",
        "2",
        "--n-epochs",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
    ]
    if lora:
        argv += [*lora, "--no-compare-decode"]
    else:
        argv += ["--precision", "fp32", "--scaling", "--scaling-batches", "4", "--scaling-lengths", "8"]
        argv += ["--plot", str(tmp_path / "scaling.png")]
    result = throughput.main(argv)
    assert json.loads(out.read_text()) == result and result["num_envs"] == 4 and result["n_epochs"] == 1
    assert result["rollout_tokens_per_s"] > 0 and result["ppo_update_tokens_per_s"] > 0
    assert result["rollout_merge_lora"] == bool(lora) and result["lora_rank"] == (2 if lora else 0)
    assert result["linear_ms"] > 0 and result["decode_vs_linear"] > 1  # a step does more than its linears
    assert result["gemm_peak_gflops"] > 0 and 0 < result["update_vs_peak"]
    if not lora:
        assert set(result["rollout_tokens_per_s_by_decode"]) == {"eager", "compiled"}
        assert result["compiled_vs_eager"] > 0 and result["decode_compile_s"] > 0
        sweep = result["scaling"]
        assert [p["num_envs"] for p in sweep["batch"]] == [4] and [
            p["max_new_tokens"] for p in sweep["length"]
        ] == [8]
        assert (tmp_path / "scaling.png").stat().st_size > 0


def test_gpu_cases_run_in_their_own_processes_and_failures_are_recorded(tmp_path: Path) -> None:
    """``benchmarks.gpu`` on a CPU with a tiny model: a case that runs reports its figures, and a case that
    fails (a bad DeepSpeed config) is recorded with its error instead of stopping the run."""
    from textenv.models import model_dir

    model = gpu.random_weights(model_dir("tiny-sp"), tmp_path / "random")
    assert (model / "config.json").is_file()
    gpu.CASES["bad-config"] = ["--deepspeed-config", '{"zero_optimization": {"stage": 7}}']
    try:
        argv = ["--model", str(model), "--cases", "zero2-bf16", "bad-config", "--num-envs", "2"]
        argv += ["--minibatch-size", "2", "--max-new-tokens", "4", "--n-epochs", "1", "--repeats", "1"]
        summary = gpu.main([*argv, "--json", str(tmp_path / "gpu.json")])
    finally:
        del gpu.CASES["bad-config"]
    ok, bad = summary["cases"]["zero2-bf16"], summary["cases"]["bad-config"]
    assert ok["status"] == "ok" and ok["zero_stage"] == 2 and ok["precision"] == "bf16"
    assert ok["rollout_tokens_per_s"] > 0 and ok["update_vs_bare"] > 0
    assert bad["status"] == "failed" and "zero_optimization.stage" in bad["error"]
    assert json.loads((tmp_path / "gpu.json").read_text())["cases"]["bad-config"]["status"] == "failed"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        gpu.random_weights(tmp_path, tmp_path / "out")
    with pytest.raises(SystemExit, match="unknown"):
        gpu.main(["--cases", "zero9"])
    with pytest.raises(SystemExit, match="--deepspeed-config is not valid JSON"):
        throughput.main(["--deepspeed-config", "{stage: 2}"])
    with pytest.raises(SystemExit, match="--lora-rank -1: give a rank >= 1"):
        throughput.main(["--lora-rank", "-1"])


def test_report_aggregates_seeds_and_plots_proxy_against_gold(tmp_path: Path) -> None:
    from stable_baselines3.common.logger import configure

    for algo, offset in [("ppo", 0.0), ("reinforce", 1.0)]:
        for seed in (0, 1):
            logger = configure(
                str(tmp_path / "TextGen-Preference-v0" / algo / f"seed{seed}-x"), ["tensorboard"]
            )
            for step in (10, 20, 30):
                logger.record("rollout/ep_rew_mean", offset + seed + step / 10)
                logger.record("rollout/kl", step / 10)
                logger.record("rollout/classifier", 1.0 - (step / 10 - 2) ** 2)  # gold peaks at KL 2
                logger.dump(step=step)
            logger.close()
    markdown = report.main([str(tmp_path)]).read_text()
    # last values: ppo seeds 3 and 4 -> 3.5 ± 0.71; reinforce 4 and 5 -> 4.5 ± 0.71
    assert "| rollout/ep_rew_mean | 3.5 ± 0.71 (n = 2) | 4.5 ± 0.71 (n = 2) |" in markdown
    assert (tmp_path / "report" / "TextGen-Preference-v0__overoptimisation.png").is_file()
    assert "TextGen-Preference-v0 ppo: mean gold rollout/classifier peaks at KL 2.02 nats (0.980;" in markdown
    assert "at least 3 points per run" in markdown
    assert "each run's largest: 3.00 / 3.00)" in markdown  # the thin per-run lines reach that far
    assert plots.moving_average(np.array([1.0, 1.0, 4.0]), window=3).tolist() == [1.0, 2.0, 2.5]
    runs = report.find_runs([tmp_path / "TextGen-Preference-v0" / "ppo"])
    curves = plots.kl_curves(runs, ("rollout/ep_rew_mean", "rollout/classifier"))
    assert curves is not None
    grid, ((proxy, proxy_std), (gold, gold_std)) = curves
    assert grid[-1] == 3.0 and proxy[-1] == 3.5 and abs(proxy_std[-1] - 0.7071) < 1e-3  # seeds 0 and 1
    assert gold_std.max() == 0.0 and abs(gold.max() - 0.98) < 1e-3  # grid point 2.02: 1 - 0.02
    result = plots.curve(report.find_runs([tmp_path / "TextGen-Preference-v0" / "ppo"]), "rollout/kl")
    assert result is not None
    steps, mean, std = result
    assert steps.tolist() == [10, 20, 30] and mean.tolist() == [1.0, 2.0, 3.0] and std.tolist() == [0, 0, 0]


def test_zero_shot_is_evaluated_in_the_agents_precision(tmp_path: Path) -> None:
    """The zero-shot column is the untrained model in the precision the agents train in: its evaluation
    equals a bf16 PPO run's evaluation before training (same prompts, same sampling seed)."""
    common = ["--task", "sentiment", "--reward", "vader", "--heldout-texts", "2", "--seeds", "0"]
    common += ["--max-new-tokens", "4", "--precision", "bf16", "--logdir", str(tmp_path), *TINY]
    (zero,) = run.main([*common, "--algo", "zero-shot"])
    settings = ["--num-envs", "4", "--episodes-per-rollout", "4", "--minibatch-size", "4", "--evals", "1"]
    (ppo,) = run.main([*common, "--algo", "ppo", "--budget", "1it", *settings])
    zero_summary, ppo_summary = (json.loads((d / "summary.json").read_text()) for d in (zero, ppo))
    assert zero_summary["precision"] == ppo_summary["precision"] == "bf16"
    assert zero_summary["eval_after"]["_samples"] == ppo_summary["eval_before"]["_samples"]
    assert zero_summary["eval_after"]["reward"] == pytest.approx(ppo_summary["eval_before"]["reward"])
    # the very same numbers: parameters in bf16, buffers (rotary frequencies) in fp32, as DeepSpeed casts the
    # policy (an fp32 zero-shot model was 1.7e-5 off in perplexity; casting its buffers too, 1.4e-6); and the
    # agent's reference, cast the same way, computes what its policy computes before training: KL exactly 0
    perplexity = zero_summary["eval_after"]["heldout_perplexity"]
    assert perplexity == ppo_summary["eval_before"]["heldout_perplexity"]
    assert ppo_summary["eval_before"]["kl_to_reference"] == 0.0


def test_report_rewrites_only_the_readme_block(tmp_path: Path) -> None:
    from stable_baselines3.common.logger import configure

    for algo, reward in [("zero-shot", 0.25), ("ppo", 0.75)]:
        run_dir = tmp_path / "runs" / "TextGen-Sentiment-v0" / algo / "seed0-x"
        logger = configure(str(run_dir), ["tensorboard"])
        logger.record("eval/reward", reward)
        logger.record("rollout/ep_rew_mean", reward)
        logger.dump(step=0)
        logger.close()
        evals = {"before": {"reward": 0.25, "kl_to_reference": 0.0}, "after": {"reward": reward}}
        summary = {"env_id": "TextGen-Sentiment-v0", "args": {"algo": algo}, "seed": 0, "wall_time_s": 5.0}
        summary |= {f"eval_{when}": values for when, values in evals.items()}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nstale\n{report.README_END}\noutro\n")
    argv = [str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--readme", str(readme)]
    report.main(argv)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert "| TextGen-Sentiment-v0 | reward change (paired) | 0 (n = 1) | 0.5 (n = 1) |" in text
    assert "](results/TextGen-Sentiment-v0__eval_reward.png)" in text  # the learning curves
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="benchmarks.report: begin"):
        report.main(argv)
