"""The Q-learning math of :class:`~agents.dqn.DQN`: TD targets, the conservative regulariser, the update.

Q-values are (E, N, V): for each of E episodes, Q(s_t, .) over the vocabulary before each of its N generated
tokens. Q is the online network, Q_targ the target network, both evaluated when the update runs.

**Targets** (``DQNConfig.target``). The n-step target of token t is
``sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n})`` (:func:`n_step_targets`; nothing is bootstrapped past the
episode end), and the bootstrap V(s) is, per target:

- ``double_q``: ``Q_targ(s, argmax_a Q(s, a))``: the online network picks, the target network values.
- ``q_learning``: ``max_a Q_targ(s, a)``.
- ``sarsa``: ``Q_targ(s_{t+n}, a_{t+n})``, with ``a_{t+n}`` the token the stored episode took in that state
  (the replay keeps whole episodes, so it is known; it was chosen by the behaviour policy of its time).
- ``expected_sarsa``: ``sum_a mu(a|s) Q_targ(s, a)`` under the *current* behaviour policy mu (the online
  network and the exploration value at the time of the update):

  - epsilon-greedy: ``mu = (1 - eps) * onehot(argmax_a Q(s, a)) + eps * pi_explore(.|s)``, where
    ``pi_explore`` is the distribution exploration samples from: the softmax of the reference LM's logits at s
    after its ``temperature``, ``top_k`` and ``top_p`` filters (not a uniform distribution);
  - Boltzmann: ``mu = softmax(Q(s, .) / temperature)``.

  With eps = 0 it equals ``double_q``.

**Multi-turn episodes** (``TextChat-v0``): the other party's tokens sit between the agent's in the same
row, but they are not actions. Only agent tokens are transitions, n counts agent tokens (and gamma applies
per agent token), and the state after an agent's turn-ending token is the one before its *next* token, so
the bootstrap crosses the other party's turn: ``V(s_{t+n})`` is read at the agent token n agent tokens later,
whose Q-values were computed with that turn in context (:func:`agent_td_targets`). Q-values at the other
party's positions never enter a target or a loss (:func:`q_loss`).

**Conservative regulariser** (``conservative_coef``): ``logsumexp_a Q(s, a) - E_{a~pi_ref} Q(s, a)``, a CQL
term towards the reference LM (:func:`conservative_penalty`). The failure it prevents: the TD loss only
touches the few tokens that were tried, while the greedy policy takes a max over the whole vocabulary (49,152
tokens for SmolLM2). Untried tokens keep or drift to arbitrary logits, the max picks them, and greedy decoding
degrades into non-words. The logsumexp pushes all untried tokens down, and the exact expectation under pi_ref
keeps the *shape* of softmax(Q) on the reference LM. It is shift-invariant per state, so it does not fight the
TD loss over the level of Q(s, .), only over the ranking of tokens.

**Expectile V** (``value_expectile`` = tau, with the dueling form; ILQL, Snell et al. 2022): V(s) learns on
its own loss, :func:`expectile_loss` of the TD targets of the taken tokens minus V(s), and the targets
bootstrap from the target network's V(s) (which in the dueling form is max_a Q_targ(s, a), so the bootstrap
is the ``q_learning`` one). V is detached in Q, so the TD loss reaches only the logits: they carry the
advantage Q(s, a) - V(s), V the state values. **Its own learning rate**: ``value_lr_scale``
(:meth:`agents.dqn.DQN._param_groups`).

Exploration (epsilon-greedy, Boltzmann, the LM's own policy) and its schedules: :mod:`agents.exploration`.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from agents.exploration import Exploration
from agents.policy import ActorCritic, completion_logits
from agents.replay import ReplaySamples

TARGETS = ("double_q", "q_learning", "sarsa", "expected_sarsa")


class FrozenActorCritic(nn.Module):
    """The target network of a dueling DQN: a frozen copy of the Q-network, LM and value head."""

    def __init__(self, network: ActorCritic) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).eval().requires_grad_(False)

    @property
    def lm(self) -> nn.Module:
        return self.network.lm

    @property
    def value_head(self) -> nn.Module:
        return self.network.value_head

    def train(self, mode: bool = True) -> FrozenActorCritic:
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """:class:`~agents.policy.ActorCritic`'s: logits (B, K, V) and values (B, K)."""
        return self.network(*args, **kwargs)


def q_values(logits: torch.Tensor, values: torch.Tensor | None = None, level: float = 0.0) -> torch.Tensor:
    """Q(s, .) in float32 from (..., V) LM logits: with (...) value-head outputs, the dueling form
    ``V(s) + logit(s, a) - max_a' logit(s, a')`` with ``V(s) = level + values`` (the greedy token's Q is
    V(s)); without, the logits themselves. Either way argmax_a Q(s, a) is the LM's greedy token.

    >>> q_values(torch.tensor([[1.0, 3.0]]), torch.tensor([-0.5]), level=1.0)
    tensor([[-1.5000,  0.5000]])
    """
    q = logits.float()
    if values is None:
        return q
    return level + values.float()[..., None] + q - q.max(-1, keepdim=True).values


def n_step_targets(
    rewards: torch.Tensor, bootstrap: torch.Tensor, mask: torch.Tensor, gamma: float, n_steps: int
) -> torch.Tensor:
    """n-step TD targets over right-padded episodes that end (terminally) at their last real token.

    ``rewards[e, t]`` is the reward after token t, ``bootstrap[e, t]`` the value of the state *before* token t
    and ``mask`` 1 on real tokens, all (E, N). Target of token t:
    ``sum_{k<n} gamma^k r_{t+k} + gamma^n bootstrap_{t+n}``, where terms past the episode end are 0.

    >>> n_step_targets(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[5.0, 6.0, 7.0]]), torch.ones(1, 3),
    ...                gamma=0.5, n_steps=2)   # 0.25 * 7; 0.5 * 1 (no bootstrap past the end); 1
    tensor([[1.7500, 0.5000, 1.0000]])
    """
    mask = mask.to(rewards.dtype)
    n_new = rewards.shape[1]
    rewards, bootstrap = rewards * mask, bootstrap * mask
    targets = torch.zeros_like(rewards)
    for k in range(min(n_steps, n_new)):
        targets[:, : n_new - k] += gamma**k * rewards[:, k:]
    if n_steps < n_new:
        targets[:, : n_new - n_steps] += gamma**n_steps * bootstrap[:, n_steps:]
    return targets * mask


def lambda_returns(
    rewards: torch.Tensor, bootstrap: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """lambda-returns (TD(lambda), Sutton 1988; for DQN, Daley & Amato 2019) over right-padded episodes that
    end (terminally) at their last real token, the arguments as in :func:`n_step_targets`. Backwards from
    the end: ``G_t = r_t + gamma * ((1 - lam) * bootstrap_{t+1} + lam * G_{t+1})``, ``G = r`` at the last
    token. lam = 0 is the one-step target, lam = 1 the Monte Carlo return (no bootstrap at all); in between,
    the reward at the end reaches every earlier token in one update instead of one target update per n
    tokens.

    >>> rewards, bootstrap = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[5.0, 6.0, 7.0]])
    >>> [lambda_returns(rewards, bootstrap, torch.ones(1, 3), 1.0, lam).tolist() for lam in (0.0, 0.5, 1.0)]
    [[[6.0, 7.0, 1.0]], [[5.0, 4.0, 1.0]], [[1.0, 1.0, 1.0]]]
    """
    mask = mask.to(rewards.dtype)
    rewards, bootstrap = rewards * mask, bootstrap * mask
    returns = torch.zeros_like(rewards)
    later = torch.zeros_like(rewards[:, 0])  # G_{t+1}
    for t in reversed(range(rewards.shape[1])):
        if t + 1 < rewards.shape[1]:
            ahead = (1 - lam) * bootstrap[:, t + 1] + lam * later
            later = rewards[:, t] + gamma * mask[:, t + 1] * ahead
        else:
            later = rewards[:, t]
        returns[:, t] = later
    return returns * mask


def double_dqn_values(online_q: torch.Tensor, target_q: torch.Tensor) -> torch.Tensor:
    """Q_target(s, argmax_a Q_online(s, a)) for (..., V) Q-values -> (...).

    >>> double_dqn_values(torch.tensor([[1.0, 3.0]]), torch.tensor([[10.0, 2.0]]))
    tensor([2.])
    """
    return target_q.gather(-1, online_q.argmax(-1, keepdim=True)).squeeze(-1)


def max_q_values(target_q: torch.Tensor) -> torch.Tensor:
    """Q-learning: max_a Q_target(s, a) for (..., V) Q-values -> (...).

    >>> max_q_values(torch.tensor([[10.0, 2.0]]))
    tensor([10.])
    """
    return target_q.max(-1).values


def sarsa_values(target_q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """SARSA: Q_target(s, a) of the action ``actions`` (...) actually taken in each state, (..., V) -> (...).

    >>> sarsa_values(torch.tensor([[10.0, 2.0]]), torch.tensor([1]))
    tensor([2.])
    """
    return target_q.gather(-1, actions[..., None]).squeeze(-1)


def expected_sarsa_values(target_q: torch.Tensor, behaviour_probs: torch.Tensor) -> torch.Tensor:
    """Expected SARSA: sum_a mu(a|s) Q_target(s, a) under the behaviour policy's (..., V) probabilities.

    >>> expected_sarsa_values(torch.tensor([[10.0, 2.0]]), torch.tensor([[0.25, 0.75]]))
    tensor([4.])
    """
    return (behaviour_probs * target_q).sum(-1)


def bootstrap_values(
    target: str,
    online_q: torch.Tensor,
    target_q: torch.Tensor,
    actions: torch.Tensor,
    behaviour_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """V(s) (E, N) of every state for the ``target`` named in :data:`TARGETS` (see the module docstring),
    from (E, N, V) ``online_q`` and ``target_q``, the (E, N) tokens ``actions`` taken in the stored episodes
    and, for ``expected_sarsa``, the (E, N, V) ``behaviour_probs``.

    >>> q, actions = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[0]])
    >>> [bootstrap_values(name, q, q + 2, actions, torch.full((1, 1, 2), 0.5)).item() for name in TARGETS]
    [3.0, 3.0, 2.0, 2.5]
    """
    if target == "q_learning":
        return max_q_values(target_q)
    if target == "sarsa":
        return sarsa_values(target_q, actions)
    if target == "expected_sarsa":
        if behaviour_probs is None:
            raise ValueError(
                "the expected_sarsa target needs behaviour_probs (the behaviour policy per state)"
            )
        return expected_sarsa_values(target_q, behaviour_probs)
    if target != "double_q":
        raise ValueError(f"target={target!r} is unknown; use one of {', '.join(TARGETS)}")
    return double_dqn_values(online_q, target_q)


def conservative_penalty(q: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """CQL towards the reference: ``logsumexp_a Q(s, a) - sum_a pi_ref(a|s) Q(s, a)``, mean over states.

    Equals the cross-entropy of softmax(Q) against pi_ref, i.e. ``KL(pi_ref || softmax Q)`` plus a constant.

    >>> conservative_penalty(torch.zeros(1, 2), torch.log(torch.tensor([[0.5, 0.5]])))   # log 2
    tensor(0.6931)
    """
    return (torch.logsumexp(q, -1) - (ref_logprobs.exp() * q).sum(-1)).mean()


def expectile_loss(errors: torch.Tensor, tau: float) -> torch.Tensor:
    """Expectile regression (IQL, Kostrikov et al. 2021; ILQL, Snell et al. 2022): the mean over the (...)
    ``errors`` u = target - V of ``|tau - 1(u < 0)| * u^2``. tau = 0.5 is half the squared error (V learns
    the mean); tau > 0.5 weighs targets above V more, so V learns an upper expectile, towards the best of the
    actions in the data as tau -> 1.

    >>> expectile_loss(torch.tensor([2.0, -1.0]), tau=0.7)   # (0.7 * 4 + 0.3 * 1) / 2
    tensor(1.5500)
    """
    weight = torch.where(errors < 0, 1.0 - tau, tau)
    return (weight * errors.square()).mean()


def episode_td_targets(
    bootstrap: torch.Tensor, gen_mask: torch.Tensor, episode_rewards: torch.Tensor, gamma: float, n_steps: int
) -> torch.Tensor:
    """n-step targets (E, N) for episodes whose one reward, ``episode_rewards`` (E,), follows their last
    token; ``bootstrap`` (E, N) is V(s_t) of each state (:func:`bootstrap_values`).

    >>> bootstrap = torch.ones(1, 2)   # every state is worth 1; the reward 3 comes last
    >>> episode_td_targets(bootstrap, torch.ones(1, 2), torch.tensor([3.0]), gamma=0.5, n_steps=1)
    tensor([[0.5000, 3.0000]])
    """
    last = (gen_mask.sum(-1).long() - 1).clamp(min=0)  # (E,) index of each episode's last token
    rewards = torch.zeros_like(gen_mask)
    rewards[torch.arange(len(last)), last] = episode_rewards
    return n_step_targets(rewards, bootstrap, gen_mask, gamma, n_steps)


def agent_td_targets(
    bootstrap: torch.Tensor,
    agent_mask: torch.Tensor,
    rewards: torch.Tensor,
    gamma: float,
    n_steps: int,
    td_lambda: float | None = None,
) -> torch.Tensor:
    """n-step targets (E, N) over the agent's tokens only: the ``agent_mask`` (E, N) slots, in order, are the
    steps, the other slots (the other party's tokens, padding) are skipped and get target 0. ``rewards``
    (E, N) is each reward on the agent token it followed and ``bootstrap`` (E, N) V(s_t) before each token.
    With ``td_lambda``, :func:`lambda_returns` instead (``n_steps`` is not used).

    >>> agent = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])   # the agent, the env (2 tokens), the agent again
    >>> values = torch.tensor([[1.0, 2.0, 50.0, 60.0, 4.0]])   # the env's slots are never read
    >>> agent_td_targets(values, agent, torch.tensor([[0.0, 0.5, 0.0, 0.0, 1.0]]), gamma=0.5, n_steps=1)
    tensor([[1.0000, 2.5000, 0.0000, 0.0000, 1.0000]])
    """
    order = torch.argsort((agent_mask == 0).to(torch.int8), dim=1, stable=True)  # (E, N) agent slots first
    packed_args = rewards.gather(1, order), bootstrap.gather(1, order), agent_mask.gather(1, order), gamma
    if td_lambda is None:
        packed = n_step_targets(*packed_args, n_steps)  # (E, N), 0 past each row's agent tokens
    else:
        packed = lambda_returns(*packed_args, td_lambda)
    return torch.zeros_like(packed).scatter(1, order, packed)


class LossDetail(NamedTuple):
    """What :mod:`agents.dqn_diagnostics` reads of an update besides the loss: at its B transitions."""

    logits: torch.Tensor  # (U, N, A) the online LM's logits (in the graph: the gradient shares)
    ref_logits: torch.Tensor | None  # (U, N, A) the reference LM's, where the update computed them
    rows: torch.Tensor  # (B,) the episode row of each transition in the loss
    positions: torch.Tensor  # (B,) its position
    actions: torch.Tensor  # (B,) its token
    q_max: torch.Tensor  # (B,) max_a Q(s, a), no gradient


class QLoss(NamedTuple):
    """One DQN update's loss and what is logged of it; the last two are at the B sampled transitions."""

    loss: torch.Tensor  # () TD loss plus the weighted conservative penalty
    td_loss: torch.Tensor  # () Huber loss of Q(s, a) against the targets
    penalty: torch.Tensor | None  # () the CQL term (None without reference logits or with weight 0)
    q_taken: torch.Tensor  # (B,) Q(s, a) of the sampled transitions
    targets: torch.Tensor  # (B,) their n-step targets
    detail: LossDetail | None = None  # for the diagnostics (update_terms fills it in)
    values: torch.Tensor | None = None  # (B,) V(s) of their states, level included, no gradient (value head)
    value_loss: torch.Tensor | None = None  # () the expectile loss of V (``value_expectile``), in ``loss``


def q_loss(
    q: torch.Tensor,
    target_q: torch.Tensor,
    batch: ReplaySamples,
    *,
    target: str,
    gamma: float,
    n_steps: int,
    reward_scale: float = 1.0,
    ref_logits: torch.Tensor | None = None,
    conservative_coef: float = 0.0,
    behaviour_probs: torch.Tensor | None = None,
    td_lambda: float | None = None,
    bootstrap: torch.Tensor | None = None,
) -> QLoss:
    """The loss of one DQN update on ``batch``: online ``q`` and ``target_q`` (U, N, A) of its U episodes,
    bootstrapped by ``target`` (:func:`bootstrap_values`; ``behaviour_probs`` for expected SARSA), n-step
    targets over the agent's tokens (:func:`agent_td_targets`, rewards times ``reward_scale``; lambda-returns
    with ``td_lambda``), the Huber loss
    at the sampled transitions, plus ``conservative_coef`` times :func:`conservative_penalty` there towards
    the reference LM's (U, N, A) ``ref_logits``. Gradients reach ``q`` at the sampled agent tokens only.
    A given (U, N) ``bootstrap`` (V(s) of every state) replaces ``target``'s.
    """
    n_new = q.shape[1]
    actions = batch.input_ids[:, -n_new:]  # (U, N) the token taken in each state
    with torch.no_grad():
        if bootstrap is None:
            bootstrap = bootstrap_values(target, q.detach(), target_q, actions, behaviour_probs)  # (U, N)
        rewards = batch.rewards * reward_scale
        targets = agent_td_targets(bootstrap, batch.gen_mask, rewards, gamma, n_steps, td_lambda)
    rows, positions = batch.rows, batch.positions  # (B,)
    q_taken = q.gather(-1, actions[..., None]).squeeze(-1)[rows, positions]  # (B,)
    td_loss = F.smooth_l1_loss(q_taken, targets[rows, positions])
    loss, penalty = td_loss, None
    if ref_logits is not None and conservative_coef > 0:
        ref_logprobs = torch.log_softmax(ref_logits[rows, positions].float(), -1)  # (B, A)
        penalty = conservative_penalty(q[rows, positions], ref_logprobs)
        loss = td_loss + conservative_coef * penalty
    return QLoss(loss, td_loss, penalty, q_taken, targets[rows, positions])


class QNetworks(NamedTuple):
    """The three networks a DQN update reads."""

    online: Any  # the DeepSpeed engine around the Q-network (forward with gradients)
    target: Any  # the target network (FrozenLM, or FrozenActorCritic with a value head)
    reference: Any  # the reference LM (FrozenLM, or a LoRA agent's AdapterDisabledLM)


class Forwards(NamedTuple):
    """The three networks' outputs over the sampled episodes (:func:`forwards`)."""

    logits: torch.Tensor  # (U, N, A) the online network's, with gradients
    values: torch.Tensor | None  # (U, N) its value head's (None without one)
    target_logits: torch.Tensor  # (U, N, A) the target network's
    target_values: torch.Tensor | None  # (U, N)
    ref_logits: torch.Tensor | None  # (U, N, A) the reference LM's (None unless asked for)


def forwards(networks: QNetworks, batch: ReplaySamples, n_actions: int, reference: bool) -> Forwards:
    """The forwards of one update over the episodes of ``batch``: the online network through the DeepSpeed
    engine (with gradients), then the target network and, if ``reference``, the reference LM (without)."""
    engine, target, ref_lm = networks
    ids, attn, n_new = batch.input_ids, batch.attention_mask, batch.gen_mask.shape[1]
    logits, values = completion_logits(engine, ids, attn, n_new, n_actions)  # (U, N, A), (U, N)
    # a view (same values, same gradients): a gradient taken to it for the diagnostics stops there, short of
    # the engine's output, whose backward hooks must run only in engine.backward
    logits = logits.view_as(logits)
    with torch.no_grad():
        target_logits, target_values = completion_logits(target, ids, attn, n_new, n_actions)
        ref_logits = completion_logits(ref_lm, ids, attn, n_new, n_actions)[0] if reference else None
    return Forwards(logits, values, target_logits, target_values, ref_logits)


def update_terms(
    networks: QNetworks,
    batch: ReplaySamples,
    config: Any,
    *,
    level: float,
    n_actions: int,
    exploration: Exploration,
) -> QLoss:
    """One DQN update's :class:`QLoss` on ``batch``, Q read from the logits (raw, or dueling with ``level``):
    the online forward through the DeepSpeed engine (with gradients), the target network's and, for the CQL
    term or epsilon-greedy expected SARSA, the reference LM's (``networks``); settings from the
    :class:`~agents.dqn_config.DQNConfig` ``config``, the behaviour policy from ``exploration``. With
    ``value_expectile`` (dueling), the targets bootstrap from the target network's V(s) (= max_a Q_targ(s,
    a)), V is detached in Q, and :func:`expectile_loss` of V against the targets joins the loss."""
    expectile, dueling = config.value_expectile, config.dueling
    expected_sarsa = config.target == "expected_sarsa" and expectile is None
    # the reference LM, for the CQL term and pi_explore
    with_reference = config.conservative_coef > 0 or (expected_sarsa and exploration.uses_reference)
    out = forwards(networks, batch, n_actions, with_reference)
    values = out.values if dueling else None  # (U, N)
    in_q = values.detach() if values is not None and expectile is not None else values
    q = q_values(out.logits, in_q, level)  # (U, N, A) for every slot
    with torch.no_grad():
        target_q = q_values(out.target_logits, out.target_values if dueling else None, level)
        mu = exploration.behaviour_probs(q.detach(), out.ref_logits) if expected_sarsa else None
        bootstrap = None
        if expectile is not None and out.target_values is not None:
            bootstrap = level + out.target_values.float()  # (U, N) the target network's V(s)
    terms = q_loss(
        q,
        target_q,
        batch,
        target=config.target,
        gamma=config.gamma,
        n_steps=config.n_steps,
        reward_scale=config.reward_scale,
        ref_logits=out.ref_logits,
        conservative_coef=config.conservative_coef,
        behaviour_probs=mu,
        td_lambda=config.td_lambda,
        bootstrap=bootstrap,
    )
    rows, positions = batch.rows, batch.positions
    actions = batch.input_ids[:, -q.shape[1] :][rows, positions]  # (B,)
    q_max = q.detach()[rows, positions].max(-1).values
    terms = terms._replace(detail=LossDetail(out.logits, out.ref_logits, rows, positions, actions, q_max))
    if values is None:
        return terms
    state_values = level + values[rows, positions].float()  # (B,) V(s), with gradients
    if expectile is None:
        return terms._replace(values=state_values.detach())
    value_loss = expectile_loss(terms.targets - state_values, expectile)
    return terms._replace(loss=terms.loss + value_loss, values=state_values.detach(), value_loss=value_loss)
