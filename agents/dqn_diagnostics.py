"""What :class:`~agents.dqn.DQN` logs under ``train/`` to diagnose a value-based run, as pure functions.

Every update logs (means over the update's transitions; :meth:`agents.dqn.DQN.train` averages them over the
round's updates):

- the TD error ``delta = target - Q(s, a)``: ``td_abs_mean``, ``td_abs_std`` (:func:`td_error_stats`);
- the scale of Q: ``q_taken_mean/std`` (Q of the taken tokens), ``q_max_mean/std`` (max_a Q(s, a)),
  ``target_mean/std`` (the TD targets), to compare with the rewards' scale (times ``reward_scale``);
- with a value head (dueling, soft Q): whether V(s) carries the state values: ``v_mean/std``, V(s) (the
  replay's mean return plus the head) over the sampled states, whose spread is to be set against
  ``target_std``, and ``v_explained_variance``, the share of the targets' variance V(s) accounts for (SB3's
  ``explained_variance``; 1: V alone predicts the targets, 0: no better than their mean; left out when the
  targets do not vary); with ``value_expectile``, V's own loss ``value_loss``;
- what of the loss touches the untaken tokens: ``conservative_share``, the weighted CQL term's share of
  the loss (:func:`loss_share`; the TD loss touches only the taken tokens' Q), and
  ``grad_untaken_share``, the share of the squared gradient norm on the LM's logits that falls on untaken
  tokens (:func:`gradient_shares`; through the dueling max, the log-softmax of soft Q and the CQL term);
- the replay's age: ``replay_age_mean/max``, updates since each sampled transition was collected;
- the target network's lag: ``target_lag``, updates since the last target update (hard copy or Polyak
  step), and for Polyak averaging (``tau < 1``) ``target_distance``, the online-to-target parameter distance
  relative to the online norm (:func:`relative_distance`), once per round;
- ``kl_ref``: KL(pi_theta || pi_ref) per token of softmax(logits) against the reference LM at the loss's
  positions (:func:`kl_divergence`), where the update computes the reference's logits anyway (CQL term,
  soft Q-learning);
- with ``DQNConfig.log_step_size``, the effective step on the LM's logits: one more forward of the online
  network (no gradients) on the update's episodes after the step gives ``logit_step`` (mean
  ``|logits_after - logits_before|``), ``logprob_step`` (mean ``|change of log pi|`` of the taken tokens) and
  ``step_kl`` (KL(pi_before || pi_after)) (:func:`logit_step`).

Cost: all but the last reuse tensors the update computed; the gradient shares take a backward pass through
the loss's last operations only (from the loss to the logits, not through the network) and a tensor of the
logits' size; the target distance one pass over the parameters per round; ``log_step_size`` one forward
pass per update (about a third of an update). Nothing draws random numbers or changes the update's
numerics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.utils import explained_variance

from agents.policy import completion_logits
from agents.q_learning import LossDetail, QLoss
from agents.replay import ReplaySamples


def mean_std(name: str, values: torch.Tensor) -> dict[str, float]:
    """``{name_mean, name_std}`` of ``values`` (population std; 0.0 for one value).

    >>> mean_std("q", torch.tensor([1.0, 3.0]))
    {'q_mean': 2.0, 'q_std': 1.0}
    """
    values = values.detach().float()
    return {f"{name}_mean": values.mean().item(), f"{name}_std": values.std(correction=0).item()}


def td_error_stats(q_taken: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean and std of ``|target - Q(s, a)|`` over the (B,) transitions.

    >>> td_error_stats(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 4.0]))
    {'td_abs_mean': 2.0, 'td_abs_std': 1.0}
    """
    return mean_std("td_abs", (targets.detach().float() - q_taken.detach().float()).abs())


def loss_share(td_loss: torch.Tensor, weighted_penalty: torch.Tensor) -> float:
    """Share of the (non-negative) weighted penalty in ``td_loss + weighted_penalty`` (0.0 if both are 0).

    >>> loss_share(torch.tensor(3.0), torch.tensor(1.0))
    0.25
    """
    td, penalty = float(td_loss.detach()), float(weighted_penalty.detach())
    total = abs(td) + abs(penalty)
    return abs(penalty) / total if total > 0 else 0.0


def gradient_shares(grad: torch.Tensor, actions: torch.Tensor) -> float:
    """Share of the squared norm of a (B, A) gradient on the logits that falls on the untaken tokens, given
    the (B,) taken ``actions`` (0.0 for a zero gradient).

    >>> gradient_shares(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([0, 1]))   # 16 of 25
    0.64
    """
    grad = grad.detach().float()
    total = grad.square().sum()
    taken = grad.gather(-1, actions[:, None]).square().sum()
    return round(float((total - taken) / total), 6) if total > 0 else 0.0


def kl_divergence(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the (...) states of KL(softmax(logits) || softmax(other_logits)), both (..., A).

    >>> kl_divergence(torch.zeros(1, 2), torch.zeros(1, 2))
    tensor(0.)
    >>> round(kl_divergence(torch.tensor([[0.0, -1e4]]), torch.zeros(1, 2)).item(), 4)   # log 2
    0.6931
    """
    logp = torch.log_softmax(logits.detach().float(), -1)
    logq = torch.log_softmax(other_logits.detach().float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def logit_step(before: torch.Tensor, after: torch.Tensor, actions: torch.Tensor) -> dict[str, float]:
    """How far one update moved the (B, A) logits at B states where the (B,) ``actions`` were taken:
    mean ``|after - before|``, mean ``|change of log pi(a)|`` and KL(pi_before || pi_after).

    >>> logit_step(torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.tensor([0]))   # a shift: pi stays
    {'logit_step': 1.0, 'logprob_step': 0.0, 'step_kl': 0.0}
    """
    before, after = before.detach().float(), after.detach().float()
    change = torch.log_softmax(after, -1) - torch.log_softmax(before, -1)
    taken = change.gather(-1, actions[:, None]).abs().mean()
    return {
        "logit_step": (after - before).abs().mean().item(),
        "logprob_step": taken.item(),
        "step_kl": kl_divergence(before, after).item(),
    }


def replay_age(now: int, stamps: torch.Tensor) -> dict[str, float]:
    """Mean and max over the (B,) sampled transitions of ``now - stamp``: updates since each was collected.

    >>> replay_age(10, torch.tensor([4, 10, 10]))
    {'replay_age_mean': 2.0, 'replay_age_max': 6.0}
    """
    ages = (now - stamps).float()
    return {"replay_age_mean": ages.mean().item(), "replay_age_max": ages.max().item()}


@torch.no_grad()
def relative_distance(online: Iterable[torch.Tensor], target: Iterable[torch.Tensor]) -> float:
    """``||theta - theta_target|| / ||theta||`` over two parameter lists of the same shapes.

    >>> relative_distance([torch.tensor([3.0, 4.0])], [torch.tensor([3.0, 3.0])])
    0.2
    """
    diff, norm = 0.0, 0.0
    for p, q in zip(online, target, strict=True):
        diff += float((p.float() - q.float()).square().sum())
        norm += float(p.float().square().sum())
    return (diff / norm) ** 0.5 if norm > 0 else 0.0


def value_stats(values: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``v_mean``, ``v_std`` of the (B,) state values V(s) and ``v_explained_variance`` against the (B,) TD
    targets (:func:`stable_baselines3.common.utils.explained_variance`; left out if the targets are equal).

    >>> value_stats(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 4.0]))   # 1 - var([-1, 1]) / var([0, 4])
    {'v_mean': 2.0, 'v_std': 1.0, 'v_explained_variance': 0.75}
    """
    stats = mean_std("v", values)
    explained = explained_variance(
        values.detach().float().numpy(force=True), targets.detach().float().numpy(force=True)
    )
    if np.isfinite(explained):
        stats["v_explained_variance"] = float(explained)
    return stats


def update_stats(terms: QLoss, conservative_coef: float) -> dict[str, float]:
    """The ``train/`` values of one update from its :class:`~agents.q_learning.QLoss`, read before its
    gradient step (the gradient shares need its graph): the loss terms, the TD error, the Q scale, the
    untaken tokens' share, the KL to the reference (module docstring)."""
    q_taken, targets = terms.q_taken.detach(), terms.targets.detach()
    stats = {"loss": terms.loss.item(), "td_loss": terms.td_loss.item()}
    stats |= {"q_mean": q_taken.mean().item(), "target_q_mean": targets.mean().item()}  # the older keys
    if terms.penalty is not None:
        stats["conservative_penalty"] = terms.penalty.item()
        stats["conservative_share"] = loss_share(terms.td_loss, conservative_coef * terms.penalty)
    stats |= td_error_stats(q_taken, targets) | mean_std("q_taken", q_taken) | mean_std("target", targets)
    if terms.values is not None:
        stats |= value_stats(terms.values, targets)
    if terms.value_loss is not None:
        stats["value_loss"] = terms.value_loss.item()
    detail = terms.detail
    if detail is None:
        return stats
    at = detail.rows, detail.positions
    stats |= mean_std("q_max", detail.q_max)
    if detail.logits.requires_grad:  # backward from the loss to the logits only, the graph kept
        (grad,) = torch.autograd.grad(terms.loss, detail.logits, retain_graph=True)
        stats["grad_untaken_share"] = gradient_shares(grad[at], detail.actions)
    if detail.ref_logits is not None:
        stats["kl_ref"] = kl_divergence(detail.logits[at], detail.ref_logits[at]).item()
    return stats


def step_stats(engine: Any, batch: ReplaySamples, detail: LossDetail, n_actions: int) -> dict[str, float]:
    """:func:`logit_step` of an update that has been applied: one more forward of the online ``engine`` on
    its episodes (no gradients, under a forked torch RNG so that it draws nothing)."""
    ids, n_new = batch.input_ids, detail.logits.shape[1]
    devices = [ids.device.index or 0] if ids.is_cuda else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        after, _ = completion_logits(engine, ids, batch.attention_mask, n_new, n_actions)
    at = detail.rows, detail.positions
    return logit_step(detail.logits[at], after[at], detail.actions)
