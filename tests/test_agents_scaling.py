"""Scaling out: whole agents under torchrun (2 CPU processes, gloo), ZeRO-3, offload, and their clear errors.

The multi-process checks launch ``tests/dist_agent_worker.py`` with
``torchrun --nproc_per_node 2 --master_port <free port>`` (the command of docs/scaling-out.md),
each in its own process group with a free port, so they run beside other tests under pytest-xdist.
Tolerances: parameters after an update agree to 1e-6 absolute while the update moves them by more than 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from launch import DEEPSPEED, REPO, failure_report, load_module, needs_torchrun, torchrun

from agents import DQN, PPO, distributed, lora
from infra import engine

WORKER = Path(__file__).with_name("dist_agent_worker.py")
CONFIGS = REPO / "agents" / "configs"


def load_worker() -> ModuleType:
    return load_module(WORKER)


def run_worker(out_dir: Path, *phases: str, timeout: float = 240.0) -> str:
    """``torchrun --nproc_per_node 2`` on the worker's ``phases``; the process group is killed on timeout."""
    result = torchrun([str(WORKER), str(out_dir), *phases], timeout)
    assert result.returncode == 0, failure_report(result.stdout)
    return result.stdout


@needs_torchrun
def test_two_ranks_update_like_one_process_on_both_shards_under_zero0_and_zero3(tmp_path: Path) -> None:
    """2 ranks x B episodes give the parameters of 1 process x 2B episodes after one ``train()`` (PPO with 2
    epochs, REINFORCE with RLOO), under ZeRO-0 and ZeRO-3: the first update under ZeRO-3 matches ZeRO-0."""
    torch.set_num_threads(1)
    run_worker(tmp_path, "update")
    worker = load_worker()
    ranks = [torch.load(tmp_path / f"update_rank{rank}.pt") for rank in range(2)]
    for algo in ("ppo", "reinforce", "grpo"):
        initial = worker.whole_weights(worker.build(algo, 8, worker.update_config(0)))
        reference = worker.one_update(algo, worker.update_config(0), rank=0, world=1)  # 1 process, 2B
        moved = max(float((reference[n] - initial[n]).abs().max()) for n in reference)
        assert moved > 1e-3, moved  # the update is large enough for the comparison to mean something
        for rank, results in enumerate(ranks):
            for stage in (0, 3):
                weights = results[f"{algo}_zero{stage}"]
                assert weights.keys() == reference.keys()
                for name, tensor in reference.items():
                    where = f"{algo} ZeRO-{stage} rank {rank} {name}"
                    torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=0, msg=where)


@needs_torchrun
def test_whole_runs_under_torchrun_and_a_one_process_load_resumes(tmp_path: Path) -> None:
    """``learn()`` end to end for PPO, REINFORCE and DQN on 2 ranks, a ZeRO-3 run with optimizer and parameter
    offload whose rollouts act on a whole-weights copy, save/load under the launcher, and a checkpoint of the
    2-process PPO run that one process loads and trains on."""
    run_worker(tmp_path, "zero3", "learn")
    learned = [json.loads((tmp_path / f"learn_rank{rank}.json").read_text()) for rank in range(2)]
    zero3 = [json.loads((tmp_path / f"zero3_rank{rank}.json").read_text()) for rank in range(2)]
    # every rank ran the same number of optimizer steps and holds the same weights ...
    for algo in ("ppo", "reinforce", "grpo", "dqn"):
        assert learned[0][algo] == learned[1][algo], algo
        assert learned[0][algo]["updates"] >= 2 and learned[0][algo]["timesteps"] >= 80
    assert learned[0]["ppo_weights"] == learned[1]["ppo_weights"]
    assert learned[0]["dqn_weights"] == learned[1]["dqn_weights"]
    assert learned[0]["grpo_weights"] == learned[1]["grpo_weights"]
    # ... on episodes of its own env shard, and only rank 0 wrote TensorBoard logs
    assert learned[0]["ppo_last_rollout"] != learned[1]["ppo_last_rollout"]
    assert len(list((tmp_path / "tb").glob("*/*/*"))) == 1
    # ZeRO-3 (+ offload): partitioned training weights, rollouts on a whole copy gathered once per rollout
    for facts in zero3:
        assert facts["stage"] == 3 and facts["partitioned"] and not facts["actor_partitioned"]
        assert facts["moved"] > 1e-4 and facts["copy_gap"] == 0.0
        assert facts["load_gap"] == 0.0 and facts["loaded_updates"] == facts["updates"] >= 2

    torch.set_num_threads(1)
    worker = load_worker()
    agent = PPO.load(tmp_path / "ppo", env=worker.make_env())  # one process, no launcher
    assert agent.num_timesteps == learned[0]["ppo"]["timesteps"]
    assert agent._n_updates == learned[0]["ppo"]["updates"]
    weights = float(sum(p.detach().double().sum() for p in agent.policy.parameters()))
    assert weights == pytest.approx(learned[0]["ppo_weights"], rel=1e-12)
    agent.learn(total_timesteps=agent.num_timesteps + 24, reset_num_timesteps=False)
    assert agent._n_updates > learned[0]["ppo"]["updates"]


@pytest.mark.skipif(not DEEPSPEED.is_file(), reason="the deepspeed launcher is not installed next to Python")
def test_whole_runs_under_the_deepspeed_launcher(tmp_path: Path) -> None:
    """The ``deepspeed`` launcher (2 CPU processes; it appends ``--local_rank=R`` to the script's arguments)
    runs the same whole runs as torchrun: equal steps and weights on both ranks, each on its own episodes."""
    result = torchrun([str(WORKER), str(tmp_path), "learn"], timeout=240, launcher="deepspeed")
    assert result.returncode == 0, failure_report(result.stdout)
    learned = [json.loads((tmp_path / f"learn_rank{rank}.json").read_text()) for rank in range(2)]
    for algo in ("ppo", "reinforce", "grpo", "dqn"):
        assert learned[0][algo] == learned[1][algo] and learned[0][algo]["updates"] >= 2, algo
    assert learned[0]["ppo_weights"] == learned[1]["ppo_weights"]
    assert learned[0]["ppo_last_rollout"] != learned[1]["ppo_last_rollout"]


def test_zero3_in_one_process_acts_on_a_whole_copy_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZeRO-3 without a launcher (the shipped config): a whole-weights acting copy, synced every rollout."""
    torch.set_num_threads(1)
    monkeypatch.setenv("LOCAL_RANK", "0")  # what the engine sets for ZeRO-3; removed again after this test
    worker = load_worker()
    config = str(CONFIGS / "ds_zero3.json")
    agent = PPO(worker.make_env(), model="tiny-sp", deepspeed_config=config, **worker.agent_kwargs("ppo", 4))
    assert agent.zero_stage == 3 and distributed.is_partitioned(agent.policy)
    assert agent.rollout_copy is not None and not distributed.is_partitioned(agent.actor)
    agent.learn(total_timesteps=24)
    agent.rollout_copy.sync()
    trained = worker.whole_weights(agent)
    for name, param in agent.actor.named_parameters():
        torch.testing.assert_close(param.float(), trained[name], atol=0, rtol=0, msg=name)
    agent.save(tmp_path / "z3")
    loaded = PPO.load(tmp_path / "z3", env=worker.make_env())
    for name, tensor in worker.whole_weights(loaded).items():
        torch.testing.assert_close(tensor, trained[name], atol=0, rtol=0, msg=name)
    agent.export(tmp_path / "export")  # gathered whole weights, a plain HF directory
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", use_safetensors=True)
    torch.testing.assert_close(
        exported.model.embed_tokens.weight.float(), trained["lm.model.embed_tokens.weight"], atol=0, rtol=0
    )


def test_zero3_lora_rollouts_act_on_merged_whole_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-3 with LoRA and rollout_merge_lora: the acting copy (whole weights under ZeRO-3 anyway) holds
    W + B A * scale, gathered layer by layer from the partitions after every update."""
    from peft import LoraConfig

    torch.set_num_threads(1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    worker = load_worker()
    lora_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    agent = PPO(
        worker.make_env(),
        model="tiny-sp",
        deepspeed_config=str(CONFIGS / "ds_zero3.json"),
        peft_config=lora_config,
        rollout_merge_lora=True,
        **worker.agent_kwargs("ppo", 4) | {"learning_rate": 1e-2},
    )
    assert agent.zero_stage == 3 and distributed.is_partitioned(agent.policy)
    assert agent.rollout_copy is not None and not distributed.is_partitioned(agent.actor)
    agent.learn(total_timesteps=24)
    acting = dict(agent.actor.lm.named_parameters())
    with distributed.gathered(agent.policy):
        merged = lora.merged_state_dict(agent.policy.lm)
        adapters = [p for n, p in agent.policy.named_parameters() if "lora_B" in n]
        assert max(float(p.detach().abs().max()) for p in adapters) > 0  # adapters trained: merging matters
    assert set(acting) <= set(merged)
    for name, param in acting.items():
        torch.testing.assert_close(param, merged[name].to(param.dtype), atol=0, rtol=0, msg=name)


def test_offload_and_stage_settings_are_checked() -> None:
    build = engine.build_config
    for name in ("ds_zero3.json", "ds_zero3_offload.json", "ds_cpu.json"):
        cfg = build(str(CONFIGS / name), 1e-5, 1.0, 8, on_gpu=False, precision="fp32")
        assert engine.zero_stage(cfg) in (0, 3)
    assert engine.offloads(build(str(CONFIGS / "ds_zero3_offload.json"), 1e-5, 1.0, 8, on_gpu=False))
    bad = [
        ({"stage": 2, "offload_param": {"device": "cpu"}}, "offload_param' needs ZeRO stage 3"),
        ({"stage": 0, "offload_optimizer": {"device": "cpu"}}, "offload_optimizer' needs ZeRO stage 1 or 2"),
        ({"stage": 3, "offload_param": {"device": "gpu"}}, r"offload_param'.device is 'gpu'"),
        ({"stage": 3, "offload_optimizer": {"device": "nvme"}}, "nvme_path"),
        ({"stage": 3, "offload_param": "cpu"}, "must be an object"),
        ({"stage": 5}, "zero_optimization.stage"),
    ]
    for zero, message in bad:
        with pytest.raises(ValueError, match=message):
            build({"zero_optimization": zero}, 1e-5, 1.0, 8, on_gpu=False)
    build(
        {"zero_optimization": {"stage": 3, "offload_param": {"device": "none"}}}, 1e-5, 1.0, 8, on_gpu=False
    )


def test_what_zero3_refuses_is_named() -> None:
    worker = load_worker()
    with pytest.raises(ValueError, match="ZeRO stage 3 is not supported for DQN"):
        DQN(worker.make_env(), model="tiny-sp", deepspeed_config=str(CONFIGS / "ds_zero3.json"))


def test_rank_helpers_in_one_process() -> None:
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.rank_seed(3) == 3 and distributed.all_mean(2.5) == 2.5
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2).to(torch.bfloat16)
    distributed.gather_into(target, source)  # not partitioned: a plain cast-copy
    torch.testing.assert_close(target.weight, source.weight.detach().to(torch.bfloat16))


def test_memory_benchmark_smoke(tmp_path: Path) -> None:
    """``benchmarks.memory`` on the tiny model in one process (the published run: a process per case)."""
    from benchmarks import memory

    out = tmp_path / "memory.json"
    argv = ["--model", "tiny-sp", "--parts", "lora", "checkpointing", "--in-process", "--json", str(out)]
    argv += ["--batch", "2", "--prompt-tokens", "8", "--new-tokens", "4", "--long-tokens", "32"]
    argv += ["--long-batch", "2", "--steps", "1", "--lora-rank", "4"]
    report = memory.main(argv)
    results = json.loads(out.read_text())["results"]
    assert results == json.loads(json.dumps(report["results"]))
    assert results["lora"]["reference_weights_gib"] == 0.0 < results["full"]["reference_weights_gib"]
    assert results["lora"]["trainable_params"] < results["full"]["trainable_params"]
    assert results["lora"]["optimizer_state_gib"] < results["full"]["optimizer_state_gib"]
    assert {"ckpt-off-12", "ckpt-on-12", "ckpt-off-32", "ckpt-on-32"} <= set(results)


@pytest.mark.parametrize("on_gpu", [False, True])
def test_hybrid_engine_is_switched_off_with_a_reason(on_gpu: bool) -> None:
    config = {"zero_optimization": {"stage": 3}, "hybrid_engine": {"enabled": True, "max_out_tokens": 512}}
    with pytest.warns(UserWarning, match="'hybrid_engine.enabled' is switched off: textenv's rollouts"):
        cfg = engine.build_config(config, 1e-5, 1.0, 8, on_gpu=on_gpu)
    assert cfg["hybrid_engine"] == {"enabled": False, "max_out_tokens": 512}


def test_cpu_configs_do_not_overlap_communication() -> None:
    """On a CPU there are no streams to overlap on: ``overlap_comm`` (set by the shipped ZeRO-3 config) is
    switched off there, and kept on a GPU."""
    user = json.loads((Path(__file__).parents[1] / "agents/configs/ds_zero3.json").read_text())
    assert user["zero_optimization"]["overlap_comm"] is True
    cpu = engine.build_config(user, 1e-5, 1.0, 4, on_gpu=False, precision="fp32")
    assert cpu["zero_optimization"]["overlap_comm"] is False and cpu["zero_optimization"]["stage"] == 3
    gpu = engine.build_config(user, 1e-5, 1.0, 4, on_gpu=True, precision="fp32")
    assert gpu["zero_optimization"]["overlap_comm"] is True
