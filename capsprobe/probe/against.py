"""What a worst case is chosen against (:class:`capsprobe.transforms.worst.Against`), built from a model's adapter.

- ``scores``: the class scores the probe measures (under the probe's autocast);
- the ``ce`` objective: cross-entropy of the model's logits (:meth:`Adapter.logits`: a convnet's pre-softmax scores, a
  CapsNet's capsule lengths, which it trains on);
- the ``margin`` objective: the margin loss (Sabour et al. 2017, eq. 4) of the class scores (a convnet's softmax, a
  CapsNet's lengths);
- the surrogate, for the transfer attack: another model's ``ce`` objective.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

from torch import Tensor, nn

from ..models import Adapter
from ..models.layers import margin_loss
from ..transforms.gradient import PGD_STEPS
from ..transforms.worst import Against

__all__ = [
    "MarginLoss",
    "against",
]


class _Logits(nn.Module):
    """``images -> logits`` of an adapter (its class scores where it has no logits), differentiable."""

    def __init__(self, adapter: Adapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        logits = self.adapter.logits(x)
        return self.adapter(x) if logits is None else logits


class _Scores(nn.Module):
    """``images -> class scores`` of an adapter, differentiable."""

    def __init__(self, adapter: Adapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(x)


class MarginLoss(nn.Module):
    """The margin loss of class scores against one-hot (or index) targets, as a module for the attack library."""

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        return margin_loss(scores, targets)


def against(adapter: Adapter, labels: Tensor, surrogate: Adapter | None = None,
            autocast: Callable[[], ContextManager[Any]] = nullcontext, steps: int = PGD_STEPS) -> Against:
    """The :class:`Against` of ``adapter`` for a batch with true ``labels``; ``autocast`` wraps the scores' search
    (the probe's autocast on CUDA), the gradient attacks run in float32; ``steps``: PGD's iterations."""

    def scores(x: Tensor) -> Tensor:
        with autocast():
            return adapter(x)

    objectives = {"ce": (_Logits(adapter), nn.CrossEntropyLoss()), "margin": (_Scores(adapter), MarginLoss())}
    other = (_Logits(surrogate), nn.CrossEntropyLoss()) if surrogate is not None else None
    return Against(labels=labels, scores=scores, objectives=objectives, surrogate=other, steps=steps)
