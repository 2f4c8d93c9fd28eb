"""LoRA through peft and activation checkpointing (agents/lora.py, agents/distributed.py), on tiny models.

LoRA: the reference is the adapters-disabled network (no second copy of the weights); a checkpoint holds the
base weights once, the adapters, the value head and the optimizer state of the trained parameters only; load
resumes it; export merges the adapters into a plain transformers directory; PPO learns with LoRA.
Activation checkpointing: the same loss and gradients as without, and the checkpointed path really runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from test_agents_learning import held_out_reward, make_env
from test_agents_sampling import first_epoch_ratio, first_rollout
from transformers import AutoModelForCausalLM

import textenv
from agents import PPO, REINFORCE, distributed, lora
from agents.policy import ActorCritic, evaluate_completions
from infra.engine import safe_torch_load


def lora_config(r: int = 4) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"])


def small_agent(**kwargs) -> PPO:
    torch.set_num_threads(1)
    return PPO(
        make_env(4),
        model="tiny-sp",
        episodes_per_rollout=8,
        minibatch_size=4,
        seed=0,
        learning_rate=1e-2,
        target_kl=None,
        **{"peft_config": lora_config()} | kwargs,
    )


def episodes(
    n: int = 4, length: int = 20, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 500, (n, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded prompt
    return ids.to(device), mask.to(device)


def test_reference_is_the_adapter_disabled_network() -> None:
    agent = small_agent()
    assert isinstance(agent.reference, lora.AdapterDisabledLM)
    assert agent.reference.lm is agent.policy.lm  # the same network ...
    assert list(agent.reference.parameters()) == [] and agent.reference.state_dict() == {}  # ... no copy
    trained = {n for n, p in agent.policy.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n or n.startswith("value_head") for n in trained)
    with torch.no_grad():  # make the adapters matter
        for name, param in agent.policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    ids, mask = episodes(device=agent.device)
    base = textenv.load_model("tiny-sp").to(agent.device, next(agent.policy.parameters()).dtype)
    with torch.no_grad():
        reference_logits, _ = agent.reference(ids, mask)
        policy_logits, _ = agent.policy(ids, mask)
        base_logits = base(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        )
    torch.testing.assert_close(reference_logits.float(), base_logits.logits.float(), atol=2e-2, rtol=0)
    assert float((policy_logits.float() - reference_logits.float()).abs().max()) > 0.1


def test_checkpoint_holds_adapters_head_and_optimizer_and_resumes(tmp_path: Path) -> None:
    # ZeRO-0 on every device (a GPU's default ZeRO-2 keeps the optimizer state in its own files)
    agent = small_agent(precision="fp32", deepspeed_config={"zero_optimization": {"stage": 0}})
    agent.learn(total_timesteps=48)
    agent.save(tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file() and (ckpt / "base").is_dir()
    assert not (ckpt / "reference").exists() and not (ckpt / "model").exists()  # the base weights once
    assert (ckpt / "value_head.safetensors").is_file()
    states = safe_torch_load(str(ckpt / "deepspeed" / "state" / "mp_rank_00_model_states.pt"))
    trained = {n for n, p in agent.policy.named_parameters() if p.requires_grad}
    # DeepSpeed keeps the trained weights (adapters + head); of the frozen ones only the tied output
    # embedding slips through (DeepSpeed finds frozen weights by parameter name, and a tied one has none)
    assert trained <= set(states["module"])
    assert set(states["module"]) - trained <= {"lm.base_model.model.lm_head.weight"}
    optimizer = states["optimizer"]["state"]
    assert len(optimizer) == len(trained) and all("exp_avg" in s for s in optimizer.values())

    loaded = PPO.load(ckpt, env=make_env(4))
    assert isinstance(loaded.reference, lora.AdapterDisabledLM)
    for (name, a), (_, b) in zip(
        agent.policy.named_parameters(), loaded.policy.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    saved_opt = agent.engine.optimizer.state_dict()["state"]
    loaded_opt = loaded.engine.optimizer.state_dict()["state"]
    for key, state in saved_opt.items():
        torch.testing.assert_close(state["exp_avg_sq"], loaded_opt[key]["exp_avg_sq"], atol=0, rtol=0)
    loaded.learn(total_timesteps=96, reset_num_timesteps=False)  # resumes training
    assert loaded.num_timesteps >= 96


def test_export_merges_adapters_into_a_plain_transformers_directory(tmp_path: Path) -> None:
    agent = small_agent(precision="fp32")
    with torch.no_grad():
        for name, param in agent.policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    agent.export(tmp_path / "export")
    assert not (tmp_path / "export" / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export", use_safetensors=True)
    assert not lora.is_peft(plain)
    plain.to(agent.device)
    ids, mask = episodes(device=agent.device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        merged = plain(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        trained, _ = agent.policy(ids, mask)
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=1e-4)
    # the training network is untouched by the export: adapters still separate, base weights unchanged
    assert lora.is_peft(agent.policy.lm)
    base = textenv.load_model("tiny-sp").state_dict()
    for name, tensor in lora.merged_state_dict(agent.policy.lm, merge=False).items():
        torch.testing.assert_close(tensor.cpu(), base[name], atol=0, rtol=0, msg=name)


def test_modules_trained_whole_are_exported_checkpointed_and_merged(tmp_path: Path) -> None:
    """modules_to_save (here every RMSNorm): the export holds the trained copies under the plain names, the
    checkpoint's base the originals, the reference uses the originals, the merged rollout copy and a loaded
    checkpoint the trained ones."""
    config = lora_config()
    config.modules_to_save = ["norm"]
    agent = small_agent(precision="fp32", peft_config=config, rollout_merge_lora=True)
    trained_whole = [n for n, p in agent.policy.named_parameters() if ".modules_to_save." in n]
    parameters = dict(agent.policy.named_parameters())
    assert trained_whole and all(parameters[name].requires_grad for name in trained_whole)
    with torch.no_grad():  # as training would: adapters and the norms' trained copies move
        for name, param in agent.policy.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                param.add_(torch.randn_like(param) * 0.3)
    ids, mask = episodes(device=agent.device)
    with torch.no_grad():
        trained, _ = agent.policy(ids, mask)

    agent.export(tmp_path / "export")
    plain, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "export", use_safetensors=True, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    plain.to(agent.device)
    with torch.no_grad():
        exported = plain(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(exported, trained, atol=1e-4, rtol=1e-4)

    original = textenv.load_model("tiny-sp")
    base = lora.merged_state_dict(agent.policy.lm, merge=False)
    assert sorted(base) == sorted(original.state_dict())
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(base[name].cpu(), tensor, atol=0, rtol=0, msg=name)
    with torch.no_grad():
        reference, _ = agent.reference(ids, mask)
        untrained = original.to(agent.device)(input_ids=ids, attention_mask=mask, position_ids=position_ids)
    torch.testing.assert_close(reference, untrained.logits, atol=1e-5, rtol=1e-5)

    agent.rollout_copy.sync()
    acting_names = [name for name, _ in agent.actor.named_parameters()]
    assert not any(".modules_to_save." in n or ".original_module." in n for n in acting_names)
    with torch.no_grad():
        acting, _ = agent.actor(ids, mask)
    torch.testing.assert_close(acting, trained, atol=1e-4, rtol=1e-4)

    agent.save(tmp_path / "checkpoint")
    loaded = PPO.load(tmp_path / "checkpoint", env=make_env(4))
    with torch.no_grad():
        reloaded, _ = loaded.policy(ids, mask)
        loaded_reference, _ = loaded.reference(ids, mask)
    torch.testing.assert_close(reloaded, trained, atol=0, rtol=0)
    torch.testing.assert_close(loaded_reference, reference, atol=0, rtol=0)


@pytest.mark.parametrize(
    "setting",
    [
        {"use_dora": True},
        {"lora_bias": True},
        {"bias": "all"},
        {"init_lora_weights": "pissa"},
        {"init_lora_weights": "olora"},
        {"trainable_token_indices": [5, 6]},
    ],
    ids=lambda setting: next(iter(setting)),
)
def test_lora_settings_the_agents_cannot_honour_are_refused(setting: dict) -> None:
    """Each breaks the reference (the untouched base with adapters off) or the merged weight W + B A * scale
    of export and merged rollouts; the error names the setting and its default."""
    name, value = next(iter(setting.items()))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **setting)
    with pytest.raises(ValueError, match=rf"peft_config\.{name}={value!r}".replace("[", r"\[")):
        PPO(make_env(2), model="tiny-sp", episodes_per_rollout=4, minibatch_size=4, peft_config=config)


def test_lora_agent_learns() -> None:
    """REINFORCE with LoRA adapters (r=8 on every attention and MLP projection) and a trained value head
    raises the held-out reward of the tiny model by a margin, fixed seeds. (KL coefficient 0.1: at 0.01 the
    greedy evaluation collapsed to a text without "e" on one of seeds 0-2; at 0.1 seeds 0-2 end at 0.50, 0.71
    and 0.49 from 0.12.)"""
    torch.set_num_threads(1)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    agent = REINFORCE(
        make_env(8),
        model="tiny-sp",
        episodes_per_rollout=32,
        minibatch_size=16,
        seed=0,
        init_kl_coef=0.1,
        learning_rate=1e-2,
        peft_config=config,
    )
    before = held_out_reward(agent)
    agent.learn(total_timesteps=8000)
    after = held_out_reward(agent)
    assert after - before > 0.2, (before, after)


def checkpointed_layers_calls(module: ActorCritic) -> list[int]:
    """Count the calls of each layer's checkpoint function (proof that the checkpointed path ran)."""
    calls = [0]
    for layer in module.lm.modules():
        original = getattr(layer, "_gradient_checkpointing_func", None)
        if original is None or not getattr(layer, "gradient_checkpointing", False):
            continue

        def counting(*args, _original=original, **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)

        layer._gradient_checkpointing_func = counting
    return calls


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(use_lora: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm = textenv.load_model("tiny-sp")
    if use_lora:
        lm = lora.wrap(lm, lora_config())
        with torch.no_grad():
            for name, param in lm.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
    plain = ActorCritic(lm)
    torch.nn.init.normal_(plain.value_head.weight, std=0.1)
    checkpointed = copy.deepcopy(plain)
    n_layers = distributed.enable_activation_checkpointing(checkpointed.lm)
    assert n_layers == len(checkpointed.lm.get_decoder().layers if not use_lora else lm.get_decoder().layers)
    calls = checkpointed_layers_calls(checkpointed)
    ids, mask = episodes()
    results = []
    for module in (plain, checkpointed):
        ev = evaluate_completions(module, ids, mask, n_new=8, n_actions=512, with_entropy=True)
        assert ev.values is not None and ev.entropy is not None
        loss = -ev.logprobs.mean() + ev.values.pow(2).mean() - 0.01 * ev.entropy.mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    assert calls[0] == n_layers  # every layer went through the checkpoint function once
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # no gradients: the layers run as usual (a rollout keeps its KV cache)
        evaluate_completions(checkpointed, ids, mask, n_new=8, n_actions=512)
    assert calls[0] == n_layers


def test_agent_with_gradient_checkpointing_and_prompt_groups_learns_a_step() -> None:
    """PPO with gradient_checkpointing=True on an env with prompt groups: the update computes every prompt
    itself (no shared-prompt KV cache under checkpointing) and runs."""
    torch.set_num_threads(1)
    agent = PPO(
        make_env(4, group_size=2),
        model="tiny-sp",
        episodes_per_rollout=8,
        minibatch_size=4,
        seed=0,
        gradient_checkpointing=True,
    )
    assert agent.group_size == 1
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=40)
    pairs = zip(agent.policy.parameters(), before, strict=True)
    moved = max(float((p.detach() - b).abs().max()) for p, b in pairs)
    assert agent._n_updates >= 1 and moved > 0


def test_bad_peft_settings_are_named() -> None:
    with pytest.raises(TypeError, match="peft_config must be a peft.LoraConfig"):
        PPO(make_env(2), model="tiny-sp", episodes_per_rollout=4, minibatch_size=4, peft_config={"r": 8})
    with pytest.raises(TypeError, match="gradient_checkpointing must be True or False"):
        PPO(make_env(2), model="tiny-sp", episodes_per_rollout=4, minibatch_size=4, gradient_checkpointing=1)


@pytest.mark.parametrize("algo", ["PPO", "REINFORCE", "DQN"])
def test_every_agent_takes_peft_config_and_saves_and_loads(algo: str, tmp_path: Path) -> None:
    import agents

    torch.set_num_threads(1)
    cls = getattr(agents, algo)
    settings = {"learning_starts": 0, "batch_size": 4, "gradient_steps": 1} if algo == "DQN" else {}
    settings |= {} if algo == "DQN" else {"episodes_per_rollout": 4, "minibatch_size": 4}
    agent = cls(make_env(2), model="tiny-sp", seed=0, peft_config=lora_config(), **settings)
    assert isinstance(agent.reference, lora.AdapterDisabledLM)
    assert all(
        ".lora_" in n or n.startswith("value_head")
        for n, p in agent.policy.named_parameters()
        if p.requires_grad
    )
    adapters = {n: p.detach().clone() for n, p in agent.policy.named_parameters() if "lora_B" in n}
    agent.learn(total_timesteps=40)
    moved = max(
        float((p.detach() - adapters[n]).abs().max())
        for n, p in agent.policy.named_parameters()
        if n in adapters
    )
    assert moved > 0  # the adapters trained
    agent.save(tmp_path / algo)
    loaded = cls.load(tmp_path / algo, env=make_env(2))
    for (name, a), (_, b) in zip(
        agent.policy.named_parameters(), loaded.policy.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_merged_rollout_copy_acts_like_the_adapters(precision: str) -> None:
    """rollout_merge_lora: rollouts act with a plain model whose weights are W + B A * scale (no LoRA layers
    left), giving the adapter network's logits, and every update's sync carries the new adapters over; the
    trained network keeps its adapters and its base weights untouched."""
    agent = small_agent(precision=precision, rollout_merge_lora=True)
    copy_ = agent.rollout_copy
    assert copy_ is not None and agent.actor is copy_.network
    assert not lora.is_peft(agent.actor.lm) and lora.is_peft(agent.policy.lm)
    assert not any(".lora_" in name for name, _ in agent.actor.named_parameters())
    dtype = next(agent.policy.parameters()).dtype
    assert next(agent.actor.parameters()).dtype == dtype  # merging alone keeps the training dtype
    with torch.no_grad():  # make the adapters matter, as training would
        for name, param in agent.policy.named_parameters():
            if "lora_B" in name or name.startswith("value_head"):
                param.normal_(std=0.5)
    ids, mask = episodes(device=agent.device)
    tolerance = 1e-4 if precision == "fp32" else 0.1  # bf16: W + BA rounded once against per matmul

    def assert_actor_matches() -> None:
        with torch.no_grad():
            trained_logits, trained_values = agent.policy(ids, mask)
            acting_logits, acting_values = agent.actor(ids, mask)
        torch.testing.assert_close(acting_logits.float(), trained_logits.float(), atol=tolerance, rtol=0)
        torch.testing.assert_close(acting_values, trained_values, atol=tolerance, rtol=0)

    with torch.no_grad():
        stale = float((agent.actor(ids, mask)[0].float() - agent.policy(ids, mask)[0].float()).abs().max())
    assert stale > 0.5  # before the sync the copy still has the old (zero) adapters
    copy_.sync()
    assert_actor_matches()
    base = {n: p.detach().clone() for n, p in agent.policy.named_parameters() if not p.requires_grad}
    batch, scored = first_rollout(agent)
    # a copy in the training dtype: the log-probs it acted with are PPO's "old" ones (no second forward),
    # and the update path agrees with them up to the merge's rounding
    assert scored.rollout_gap is None and torch.equal(scored.old_logprobs, batch.old_logprobs)
    ratio = first_epoch_ratio(agent, batch, scored)
    assert (ratio - 1).abs().max() < (1e-4 if precision == "fp32" else 0.1), (ratio - 1).abs().max()
    agent.learn(total_timesteps=48)  # every update ends with a sync
    assert_actor_matches()
    for name, param in agent.policy.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, base[name]), name


def test_merged_rollouts_need_a_lora_agent() -> None:
    with pytest.raises(ValueError, match="rollout_merge_lora=True needs a LoRA agent"):
        PPO(make_env(2), model="tiny-sp", episodes_per_rollout=4, minibatch_size=4, rollout_merge_lora=True)
    with pytest.raises(TypeError, match="rollout_merge_lora must be True or False"):
        small_agent(rollout_merge_lora="yes")
