"""An exponential moving average (EMA) of the actor's weights, as DeepSpeed-Chat keeps for its RLHF actor.

After every optimizer step, ``ema = decay * ema + (1 - decay) * weights``. The average lives in its own fp32
copy of the LM (also when the engine trains in bf16), starts from the weights the agent was built with, and
is saved with checkpoints (``ema.safetensors``), restored by ``load`` and written as an HF directory by
``agent.export(path, ema=True)``. An agent with ``ema_decay=None`` holds no copy at all.

>>> import torch
>>> lm = torch.nn.Linear(2, 1, bias=False)
>>> with torch.no_grad():
...     _ = lm.weight.zero_()
>>> ema = ExponentialMovingAverage(lm, decay=0.5)
>>> with torch.no_grad():
...     _ = lm.weight.fill_(1.0)
>>> ema.update(lm)
>>> ema.update(lm)
>>> ema.model.weight.tolist()
[[0.75, 0.75]]
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from agents import distributed


class ExponentialMovingAverage:
    """An fp32 copy of ``model`` whose parameters follow ``model``'s as an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(
                f"ema_decay must be a number in [0, 1) or None (no EMA), got {decay!r}; e.g. 0.99"
            )
        self.decay = float(decay)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current parameters (called after each optimizer step; under ZeRO-3
        every rank calls it and the parameters are gathered for it)."""
        with distributed.gathered(model):
            for average, param in zip(self.model.parameters(), model.parameters(), strict=True):
                average.lerp_(param.detach().to(average.dtype), 1.0 - self.decay)
