"""A Stable-Baselines3 policy around a transformers causal LM, for SB3's own (stock) algorithms.

``TransformerActorCriticPolicy`` lets unmodified SB3 on-policy algorithms train a transformer on a
token-level textenv environment (``TextGen-v0``: Dict(input_ids, attention_mask) observations,
``Discrete(vocab)`` actions):

>>> from stable_baselines3 import PPO  # doctest: +SKIP
>>> env = gym.make("TextGen-v0", model="tiny-sp")  # doctest: +SKIP
>>> agent = PPO(TransformerActorCriticPolicy, env, policy_kwargs={"model": "tiny-sp"})  # doctest: +SKIP
>>> agent.learn(2048)  # doctest: +SKIP

How it maps onto SB3's actor-critic:

- features extractor (:class:`TokenFeaturesExtractor`, owns the LM): casts SB3's float observations back to
  token ids, runs the transformer trunk over the whole observation and returns the last hidden state of the
  last real token, (B, H).
- ``mlp_extractor``: identity (``net_arch=[]``).
- ``action_net``: the LM's own output embedding (``lm_head``), sliced to the env's ``Discrete(n)``, so the
  action distribution is the LM's next-token ``Categorical`` and an untrained policy is the pretrained LM.
- ``value_net``: ``Linear(H, 1)`` on the same hidden state, zero-initialised (as in
  :class:`agents.policy.ActorCritic`).

Observation preprocessing: SB3 turns every ``Box`` observation into float32 (``preprocess_obs``), and its
``DictRolloutBuffer`` stores observations as float32 too. Token ids below 2**24 are exact in float32, so the
extractor rounds them back to int64 (vocabularies beyond 2**24 ids are refused). ``normalize_images`` is
forced off; 1-D Boxes are never treated as images anyway.

Position ids are ``attention_mask.cumsum(-1) - 1`` clipped at 0, as in :mod:`agents.policy`, so a left-padded
prompt gets the same positions as in ``generate`` and in our own agents. Dropout stays off in training mode
(the LM is kept in ``eval()``): with dropout on, SB3 PPO's ratio would compare two different random networks.

Why this path is slower than :class:`agents.PPO`: SB3's policy API (``forward(obs)``, ``evaluate_actions``)
and its rollout buffer have no place for a per-env KV cache, so every environment step re-runs the whole
prefix (prompt + tokens so far). The extractor trims the trailing padding columns, but the cost per token
still grows with the prefix; this naive per-token loop was measured at 0.24 to 0.34 of ``generate()``'s
throughput with SmolLM2-135M. Training is per-token too: SB3 PPO evaluates each (obs, action) pair with its
own forward instead of one forward per episode. This path also uses SB3's plain torch optimizer, not
DeepSpeed, and has no reference-model KL penalty. Use it for SB3 compatibility and baselines; use
:class:`agents.PPO` for speed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from transformers import PreTrainedModel

from agents.layout import load_lm
from agents.policy import action_logits, position_ids_from_mask

FLOAT32_EXACT_INTS = 2**24
"""Largest vocabulary whose ids survive SB3's float32 observation storage exactly."""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last real token of each row (0 for an all-padding row).

    >>> last_token_index(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]]))
    tensor([2, 3])
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * positions).amax(-1)


class TokenFeaturesExtractor(BaseFeaturesExtractor):
    """Runs the LM trunk over Dict(input_ids, attention_mask) and returns the last real token's hidden state.

    The output (B, H) is the final (normed) hidden state that the LM's ``lm_head`` turns into next-token
    logits. ``model`` is a textenv model name (``"tiny-sp"``...), an HF directory or a ``PreTrainedModel``.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        model: str | os.PathLike | PreTrainedModel = "smollm2-135m-instruct",
    ) -> None:
        if not (
            isinstance(observation_space, spaces.Dict)
            and {"input_ids", "attention_mask"} <= set(observation_space.spaces)
        ):
            raise ValueError(
                f"incompatible observation space {observation_space}: TransformerActorCriticPolicy needs "
                "Dict(input_ids=Box(int64, (T,)), attention_mask=Box(int64, (T,))), as TextGen-v0 provides"
            )
        lm = load_lm(model)
        super().__init__(observation_space, features_dim=lm.config.get_text_config().hidden_size)
        self.lm = lm.eval()

    def train(self, mode: bool = True) -> TokenFeaturesExtractor:  # dropout stays off; see module docstring
        return super().train(False)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        input_ids = observations["input_ids"].round().long()  # SB3 hands over float32
        attention_mask = observations["attention_mask"].round().long()
        if input_ids.dim() == 1:
            input_ids, attention_mask = input_ids[None], attention_mask[None]  # (1, T)
        last = last_token_index(attention_mask)  # (B,)
        length = int(last.max()) + 1  # columns after every row's last real token are padding
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]  # (B, L)
        hidden = self.lm.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, L, H)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)


class TokenHead(nn.Module):
    """The LM's output embedding restricted to the env's first ``n_actions`` token ids: (B, H) -> (B, n)."""

    def __init__(self, lm_head: nn.Module, n_actions: int) -> None:
        super().__init__()
        self.lm_head = lm_head
        self.n_actions = n_actions

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return action_logits(self.lm_head(hidden), self.n_actions).float()  # (B, n)


class TransformerActorCriticPolicy(ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` whose actor is a causal LM and whose critic is a value head on it.

    Pass it to stock SB3 algorithms (``PPO``, ``A2C``) with ``policy_kwargs={"model": <name or path>}``.
    ``net_arch``, ``ortho_init``, ``features_extractor_class`` and ``share_features_extractor=False`` are
    refused: the LM is the whole network and must not be re-initialised or duplicated. Other keyword
    arguments (``optimizer_class``, ``optimizer_kwargs``...) are SB3's. See the module docstring.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str | os.PathLike | PreTrainedModel = "smollm2-135m-instruct",
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(
                f"action space {action_space} is not Discrete(vocab): TransformerActorCriticPolicy drives "
                "token-level envs (TextGen-v0); for TextGenSeq-v0 use agents.PPO"
            )
        if int(action_space.n) > FLOAT32_EXACT_INTS:
            raise ValueError(
                f"vocabulary of {action_space.n} ids is too large for SB3's float32 observations"
            )
        for key, allowed in (("net_arch", []), ("ortho_init", False), ("share_features_extractor", True)):
            if kwargs.get(key, allowed) != allowed:
                raise ValueError(
                    f"{key}={kwargs[key]!r} is not supported; leave it out (the LM is the network)"
                )
        if kwargs.get("features_extractor_class", TokenFeaturesExtractor) is not TokenFeaturesExtractor:
            raise ValueError("features_extractor_class is fixed to TokenFeaturesExtractor; leave it out")
        if kwargs.get("use_sde"):
            raise ValueError("use_sde=True needs continuous actions; token actions are Discrete")
        kwargs.update(
            net_arch=[],
            ortho_init=False,
            share_features_extractor=True,
            normalize_images=False,
            features_extractor_class=TokenFeaturesExtractor,
            features_extractor_kwargs={"model": model},
        )
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def lm(self) -> PreTrainedModel:
        """The wrapped causal LM (trained in place)."""
        assert isinstance(self.features_extractor, TokenFeaturesExtractor)
        return self.features_extractor.lm

    def _build(self, lr_schedule: Schedule) -> None:
        """Identity MLP, the LM head as ``action_net``, a zero ``Linear(H, 1)`` value head, the optimizer."""
        self.mlp_extractor = MlpExtractor(self.features_dim, net_arch=[], activation_fn=self.activation_fn)
        lm_head = self.lm.get_output_embeddings()
        n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        vocab = lm_head.weight.shape[0]
        if n_actions > vocab:
            raise ValueError(
                f"vocabulary mismatch: the env has {n_actions} actions (token ids) but the model only "
                f"{vocab} logits; make the env with the model's tokenizer (gym.make(..., model=<same name>))"
            )
        self.action_net = TokenHead(lm_head, n_actions)
        self.value_net = nn.Linear(self.features_dim, 1, dtype=self.lm.dtype)
        nn.init.zeros_(self.value_net.weight)
        nn.init.zeros_(self.value_net.bias)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "ortho_init", "features_extractor_class", "features_extractor_kwargs"):
            data.pop(key, None)
        data["model"] = self.features_extractor_kwargs["model"]
        return data
