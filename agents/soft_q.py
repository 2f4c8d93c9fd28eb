"""KL-regularised ("soft") Q-learning for :class:`~agents.dqn.DQN` (``DQNConfig.soft_q_coef`` = beta > 0).

The objective is the return minus beta times the KL divergence from the reference LM, per token. Its optimal
soft Q-function and policy satisfy ``pi(a|s) = pi_ref(a|s) exp((Q(s, a) - V(s)) / beta)`` with
``V(s) = beta log sum_a pi_ref(a|s) exp(Q(s, a) / beta)`` (KL control; Jaques et al. 2019 use it for dialogue,
and path consistency learning, Nachum et al. 2017, is the same relation over n steps). So Q is read as

    Q(s, a) = V(s) + beta * (log pi_theta(a|s) - log pi_ref(a|s))

with V(s) from the value head (plus the replay's mean return, as in the dueling form) and pi_theta the LM's
own softmax. Then the soft V of the formula is exactly the value head, and the LM *is* the policy: acting
samples it, the held-out evaluation samples it, and a token no update touched keeps its probability relative
to the reference's, instead of all tried tokens drifting to one Q-value as with Q read from raw or dueling
logits (which flattens softmax(logits) while leaving the greedy token in place).

The n-step target of token t, with l_t = log pi(a_t|s_t) - log pi_ref(a_t|s_t) of the target network:

    beta * l_t + sum_{k<n} gamma^k (r_{t+k} - beta * l_{t+k}) + gamma^n V_targ(s_{t+n})

(for n = 1 it is r_t + gamma V_targ(s_{t+1}), the soft Bellman target). Gradients reach the taken token's
log-probability and the value head. An update's loss covers every agent token of the sampled transitions'
episodes (:func:`update_terms`): the three forwards compute them all anyway, so this multiplies the signal per
update by the episode length at no extra cost.

With ``value_expectile`` (ILQL's expectile V, Snell et al. 2022) V(s) learns on a loss of its own and the TD
loss reaches only the log-ratio, which then carries the advantage alone (:func:`soft_q_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from agents.q_learning import (
    LossDetail,
    QLoss,
    QNetworks,
    agent_td_targets,
    conservative_penalty,
    expectile_loss,
    forwards,
)
from agents.replay import ReplaySamples


def taken_log_probs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(E, N) ``log pi(a_t|s_t)`` in float32 of the (E, N) ``actions`` under (E, N, A) logits.

    >>> taken_log_probs(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[0]])).round(decimals=4)   # log 0.5
    tensor([[-0.6931]])
    """
    return torch.log_softmax(logits.float(), -1).gather(-1, actions[..., None]).squeeze(-1)


def soft_q_values(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, values: torch.Tensor, beta: float, level: float = 0.0
) -> torch.Tensor:
    """Q(s, .) (..., A) in float32 from the policy's and the reference's (..., A) log-probabilities and the
    (...) values: ``level + values + beta * (logprobs - ref_logprobs)``.

    >>> soft_q_values(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0.5]), beta=0.1, level=1.0)
    tensor([[1.5000, 1.5000]])
    """
    return level + values.float()[..., None] + beta * (logprobs - ref_logprobs)


def soft_targets(
    target_ratios: torch.Tensor,
    target_values: torch.Tensor,
    batch: ReplaySamples,
    beta: float,
    gamma: float,
    n_steps: int,
    reward_scale: float = 1.0,
    td_lambda: float | None = None,
) -> torch.Tensor:
    """(U, N) n-step soft targets (module docstring) from the target network's (U, N) log-ratios of the taken
    tokens and its (U, N) state values V(s_t) (level included), over the agent's tokens of ``batch``. With
    ``td_lambda``, the lambda-return of the penalised rewards instead
    (:func:`agents.q_learning.lambda_returns`): lambda = 1 is the Monte Carlo soft return, the multi-step path
    consistency target of Guo et al. 2021; lambda = 0 the one-step soft Bellman target.

    >>> from agents.replay import ReplaySamples
    >>> one = torch.ones(1, 2)
    >>> batch = ReplaySamples(None, None, one, torch.tensor([[0.0, 1.0]]), None, None)
    >>> soft_targets(torch.tensor([[0.5, 2.0]]), torch.tensor([[0.0, 3.0]]), batch, 0.1, 1.0, 1)
    tensor([[3., 1.]])
    """
    agent = batch.gen_mask
    penalised = batch.rewards * reward_scale - beta * target_ratios * agent  # (U, N)
    returns = agent_td_targets(target_values, agent, penalised, gamma, n_steps, td_lambda)
    return (beta * target_ratios + returns) * agent


def soft_q_loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    target_logits: torch.Tensor,
    target_values: torch.Tensor,
    ref_logits: torch.Tensor,
    batch: ReplaySamples,
    *,
    beta: float,
    gamma: float,
    n_steps: int,
    reward_scale: float = 1.0,
    level: float = 0.0,
    conservative_coef: float = 0.0,
    td_lambda: float | None = None,
    value_expectile: float | None = None,
) -> QLoss:
    """The loss of one soft DQN update on ``batch``: online (U, N, A) ``logits`` and (U, N) ``values``, the
    target network's, and the reference LM's (U, N, A) ``ref_logits``; Huber loss of Q(s_t, a_t) against
    :func:`soft_targets` at the sampled transitions, plus ``conservative_coef`` times the CQL term on the soft
    Q-values there. With ``value_expectile`` = tau, V is detached in Q (the TD loss reaches only the
    log-ratio) and learns on :func:`~agents.q_learning.expectile_loss` of the targets less beta times the
    target network's log-ratio: samples of V(s) = Q(s, a) - beta * log(pi / pi_ref), the soft value."""
    n_new = logits.shape[1]
    actions = batch.input_ids[:, -n_new:]  # (U, N) the token taken in each state
    rows, positions = batch.rows, batch.positions  # (B,)
    ref_logprobs = torch.log_softmax(ref_logits.float(), -1)  # (U, N, A), once for the target, Q and CQL
    ref_taken = ref_logprobs.gather(-1, actions[..., None]).squeeze(-1)  # (U, N)
    with torch.no_grad():
        target_ratios = taken_log_probs(target_logits, actions) - ref_taken  # (U, N)
        targets = soft_targets(
            target_ratios,
            level + target_values.float(),
            batch,
            beta=beta,
            gamma=gamma,
            n_steps=n_steps,
            reward_scale=reward_scale,
            td_lambda=td_lambda,
        )[rows, positions]  # (B,)
    logprobs = torch.log_softmax(logits[rows, positions].float(), -1)  # (B, A)
    ratio = logprobs.gather(-1, actions[rows, positions, None]).squeeze(-1) - ref_taken[rows, positions]
    state_values = level + values[rows, positions].float()  # (B,) V(s), with gradients
    in_q = state_values if value_expectile is None else state_values.detach()
    q_taken = in_q + beta * ratio  # (B,)
    td_loss = F.smooth_l1_loss(q_taken, targets)
    loss, penalty, value_loss = td_loss, None, None
    if conservative_coef > 0:
        q = soft_q_values(logprobs, ref_logprobs[rows, positions], values[rows, positions], beta, level)
        penalty = conservative_penalty(q, ref_logprobs[rows, positions])
        loss = td_loss + conservative_coef * penalty
    if value_expectile is not None:
        value_targets = targets - beta * target_ratios[rows, positions]  # (B,) samples of the soft V(s)
        value_loss = expectile_loss(value_targets - state_values, value_expectile)
        loss = loss + value_loss
    detached = state_values.detach()
    return QLoss(loss, td_loss, penalty, q_taken, targets, values=detached, value_loss=value_loss)


def update_terms(
    networks: QNetworks,
    batch: ReplaySamples,
    config: Any,
    *,
    level: float,
    n_actions: int,
    exploration: Any = None,
) -> QLoss:
    """One soft DQN update's :class:`~agents.q_learning.QLoss` on the episodes of ``batch``: the online
    forward through the DeepSpeed engine (logits and values, with gradients), then the target network's and
    the reference LM's (``networks``), settings from the :class:`~agents.dqn_config.DQNConfig` ``config``. The
    loss covers every agent token of those episodes, not only the sampled transitions: the forwards computed
    them all anyway. The signature of :func:`agents.q_learning.update_terms`; ``exploration`` is not used
    (the behaviour policy never enters the soft target)."""
    rows, positions = batch.gen_mask.nonzero(as_tuple=True)  # every agent token of the sampled episodes
    batch = batch._replace(rows=rows, positions=positions)
    out = forwards(networks, batch, n_actions, reference=True)
    values, target_values, ref_logits = out.values, out.target_values, out.ref_logits
    assert values is not None and target_values is not None, "soft Q-learning needs the value head"
    assert ref_logits is not None
    terms = soft_q_loss(
        out.logits,
        values,
        out.target_logits,
        target_values,
        ref_logits,
        batch,
        beta=config.soft_q_coef,
        gamma=config.gamma,
        n_steps=config.n_steps,
        reward_scale=config.reward_scale,
        level=level,
        conservative_coef=config.conservative_coef,
        td_lambda=config.td_lambda,
        value_expectile=config.value_expectile,
    )
    actions = batch.input_ids[:, -out.logits.shape[1] :][rows, positions]  # (B,)
    with torch.no_grad():  # max_a Q(s, a) = V(s) + beta * max_a log(pi / pi_ref)
        ratios = torch.log_softmax(out.logits[rows, positions].float(), -1)
        ratios -= torch.log_softmax(ref_logits[rows, positions].float(), -1)
        q_max = level + values[rows, positions].float() + config.soft_q_coef * ratios.max(-1).values
    detail = LossDetail(out.logits, ref_logits, rows, positions, actions, q_max)
    return terms._replace(detail=detail)
