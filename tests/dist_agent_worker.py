"""One rank of the whole-agent multi-process checks in ``tests/test_agents_scaling.py`` (not a test module).

Launched as ``torchrun --nproc_per_node 2 tests/dist_agent_worker.py OUT_DIR PHASE`` (or with
``deepspeed --num_gpus 2``, which appends ``--local_rank``). Tiny models, fp32, CPU (gloo). Phases:

- ``update``: every rank builds the same PPO and REINFORCE(RLOO) agents, takes its half of a fixed rollout of
  ``2 * B`` episodes (:func:`fixed_rollout`) and runs one ``train()``, under ZeRO-0 and under ZeRO-3
  (``agents/configs/ds_zero3.json``); the weights after the update go to ``update_rank{R}.pt``. The test
  compares them with one process training on all ``2 * B`` episodes.
- ``zero3``: a PPO ``learn`` under ZeRO-3 with optimizer and parameter offload
  (``agents/configs/ds_zero3_offload.json``): rollouts act on the whole-weights copy (gathered once per
  rollout),
  a checkpoint is saved and loaded again under the launcher; facts go to ``zero3_rank{R}.json``.
- ``learn``: ``learn()`` end to end for PPO, REINFORCE and DQN on each rank's env shard, then PPO saves a
  checkpoint (``OUT_DIR/ppo``) that the test loads in one process; facts go to ``learn_rank{R}.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_agents_learning.make_env

EPISODES_PER_RANK = 4  # B
WORLD = 2
CONFIGS = Path(__file__).resolve().parents[1] / "agents" / "configs"
SGD_LIKE = {"type": "AdamW", "params": {"lr": 0.1, "eps": 1.0, "weight_decay": 0.0}}
"""AdamW with eps far above the gradients: a step proportional to the gradient (Adam's step is otherwise
invariant to the gradient's scale, so a sum over ranks where a mean belongs would go unseen)."""


def update_config(stage: int) -> dict[str, Any]:
    base = json.loads((CONFIGS / "ds_zero3.json").read_text()) if stage == 3 else {"zero_optimization": {}}
    base["zero_optimization"]["stage"] = stage
    return base | {"optimizer": SGD_LIKE}


def make_env(num_envs: int = 2, group_size: int = 1) -> Any:
    from test_agents_learning import make_env as learning_env

    return learning_env(num_envs, group_size=group_size)


def agent_kwargs(algo: str, episodes: int) -> dict[str, Any]:
    """Settings under which B episodes on each of 2 ranks and 2B in one process take the same update: one
    minibatch per rank and epoch, per-rank statistics turned off (PPO whitening; REINFORCE's moving baseline
    is replaced by RLOO over groups that stay on one rank)."""
    common = {"episodes_per_rollout": episodes, "minibatch_size": episodes, "seed": 0, "precision": "fp32"}
    common |= {"learning_rate": 1e-3, "max_grad_norm": None, "init_kl_coef": 0.05}
    if algo == "ppo":
        return common | {"n_epochs": 2, "whiten_advantages": False, "target_kl": None, "vf_coef": 0.5}
    if algo == "grpo":  # DAPO's token mean: the token count is all-reduced, so the ranks' mean is the whole's
        grpo = {"n_epochs": 2, "beta": 0.04, "loss_type": "dapo", "epsilon_high": 0.28, "init_kl_coef": 0.0}
        return common | grpo
    return common | {"baseline": "rloo"}


def build(algo: str, episodes: int, deepspeed_config: Any) -> Any:
    from stable_baselines3.common.logger import configure

    from agents import GRPO, PPO, REINFORCE

    cls = {"ppo": PPO, "grpo": GRPO}.get(algo, REINFORCE)
    env = make_env(group_size=2 if algo == "grpo" else 1)
    agent = cls(env, model="tiny-sp", deepspeed_config=deepspeed_config, **agent_kwargs(algo, episodes))
    agent.set_logger(configure(None, []))
    return agent


def fixed_rollout(agent: Any, episodes: int) -> Any:
    """``episodes`` full-length episodes (every completion fills its N slots, so each rank's token mean is a
    mean over the same number of tokens), some prompts left-padded, varied rewards, prompt groups of two."""
    from agents.rollout import RolloutBatch

    prompt_len, n_new = agent.prompt_len, agent.max_new_tokens
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(4, agent.n_actions, (episodes, prompt_len + n_new), generator=gen)
    mask = torch.ones_like(ids)
    mask[::3, :3] = 0
    ids = ids.masked_fill(mask == 0, agent.pad_token_id)
    rewards = torch.linspace(-0.5, 1.0, episodes)  # not zero-mean: the value bias gets a real gradient
    token_rewards = torch.zeros(episodes, n_new)
    token_rewards[:, -1] = rewards
    return RolloutBatch(
        input_ids=ids,
        attention_mask=mask,
        gen_mask=torch.ones(episodes, n_new),
        old_logprobs=None,  # scored on the update path
        old_values=None,
        rewards=rewards,
        group_ids=torch.arange(episodes) // 2,
        token_rewards=token_rewards,
    )


def rows(batch: Any, index: slice) -> Any:
    return type(batch)(*(None if t is None else t[index] for t in batch))


def whole_weights(agent: Any) -> dict[str, torch.Tensor]:
    from agents import distributed

    with distributed.gathered(agent.policy):
        return {n: p.detach().clone().float() for n, p in agent.policy.named_parameters()}


def one_update(algo: str, deepspeed_config: Any, rank: int, world: int) -> dict[str, torch.Tensor]:
    """The weights after one ``train()`` on this rank's share of :func:`fixed_rollout` (all of it for 1)."""
    episodes = EPISODES_PER_RANK * WORLD // world
    agent = build(algo, episodes, deepspeed_config)
    batch = fixed_rollout(agent, EPISODES_PER_RANK * WORLD)
    agent.rollout_batch = rows(batch, slice(rank * episodes, (rank + 1) * episodes))
    agent.train()
    return whole_weights(agent)


def phase_update(out: Path, rank: int) -> None:
    results = {}
    for algo in ("ppo", "reinforce", "grpo"):
        for stage in (0, 3):
            print(f"rank {rank}: {algo} under ZeRO-{stage}", flush=True)  # names the case in a failure
            results[f"{algo}_zero{stage}"] = one_update(algo, update_config(stage), rank, WORLD)
    torch.save(results, out / f"update_rank{rank}.pt")


def phase_zero3(out: Path, rank: int) -> None:
    from agents import PPO, distributed

    config = str(CONFIGS / "ds_zero3_offload.json")
    agent = PPO(make_env(), model="tiny-sp", deepspeed_config=config, **agent_kwargs("ppo", 4))
    partitioned = distributed.is_partitioned(agent.policy)
    actor_partitioned = distributed.is_partitioned(agent.actor)
    before = whole_weights(agent)
    agent.learn(total_timesteps=2 * 2 * 24)  # a few rollouts of 4 episodes per rank
    agent.rollout_copy.sync()  # collective: the acting copy catches up with the trained weights
    after = whole_weights(agent)
    acting = {n: p.detach().float() for n, p in agent.actor.named_parameters()}
    copy_gap = max(float((acting[n] - after[n]).abs().max()) for n in after)
    moved = max(float((after[n] - before[n]).abs().max()) for n in after)
    agent.save(out / "zero3")
    loaded = PPO.load(out / "zero3", env=make_env(), deepspeed_config=config)
    reloaded = whole_weights(loaded)
    load_gap = max(float((reloaded[n] - after[n]).abs().max()) for n in after)
    facts = {
        "partitioned": partitioned,
        "actor_partitioned": actor_partitioned,
        "stage": agent.zero_stage,
        "updates": agent._n_updates,
        "timesteps": agent.num_timesteps,
        "moved": moved,
        "copy_gap": copy_gap,
        "load_gap": load_gap,
        "loaded_updates": loaded._n_updates,
    }
    (out / f"zero3_rank{rank}.json").write_text(json.dumps(facts))


def phase_learn(out: Path, rank: int) -> None:
    from agents import DQN, GRPO, PPO, REINFORCE

    facts: dict[str, Any] = {}
    kwargs = agent_kwargs("ppo", 4) | {"learning_rate": 1e-4, "target_kl": 1e-6}  # all ranks stop together
    ppo = PPO(make_env(), model="tiny-sp", tensorboard_log=str(out / "tb"), **kwargs)
    ppo.learn(total_timesteps=2 * 2 * 30)
    facts["ppo"] = {"timesteps": ppo.num_timesteps, "updates": ppo._n_updates, "kl_coef": ppo.kl_ctl.value}
    facts["ppo_weights"] = float(sum(p.detach().double().sum() for p in ppo.policy.parameters()))
    assert ppo.rollout_batch is not None
    facts["ppo_last_rollout"] = ppo.rollout_batch.input_ids.tolist()  # differs by rank: its own env shard
    ppo.save(out / "ppo")
    reinforce = REINFORCE(make_env(), model="tiny-sp", **agent_kwargs("reinforce", 4))
    reinforce.learn(total_timesteps=2 * 2 * 20)
    facts["reinforce"] = {"timesteps": reinforce.num_timesteps, "updates": reinforce._n_updates}
    grpo = GRPO(make_env(group_size=2), model="tiny-sp", **agent_kwargs("grpo", 4))
    grpo.learn(total_timesteps=2 * 2 * 20)
    facts["grpo"] = {"timesteps": grpo.num_timesteps, "updates": grpo._n_updates}
    facts["grpo_weights"] = float(sum(p.detach().double().sum() for p in grpo.policy.parameters()))
    dqn = DQN(
        make_env(),
        model="tiny-sp",
        seed=0,
        precision="fp32",
        learning_starts=0,
        batch_size=8,
        gradient_steps=2,
        train_freq=(2, "episode"),
        buffer_size=512,
        target_update_interval=16,
    )
    dqn.learn(total_timesteps=2 * 2 * 20)
    facts["dqn"] = {"timesteps": dqn.num_timesteps, "updates": dqn._n_updates}
    facts["dqn_weights"] = float(sum(p.detach().double().sum() for p in dqn.policy.parameters()))
    (out / f"learn_rank{rank}.json").write_text(json.dumps(facts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("phases", nargs="+", choices=("update", "zero3", "learn"))
    args, _ = parser.parse_known_args()  # the deepspeed launcher appends --local_rank
    torch.set_num_threads(1)
    import os

    rank = int(os.environ["RANK"])
    for phase in args.phases:
        {"update": phase_update, "zero3": phase_zero3, "learn": phase_learn}[phase](args.out_dir, rank)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
