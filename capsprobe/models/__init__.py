"""Models: the CapsNet, the paper's CNN and timm convnets behind one factory and one output face.

Importing this package registers ``capsnet*`` and ``baseline_cnn`` in timm, so after ``import capsprobe``
``timm.create_model("capsnet", in_chans=1, num_classes=10)`` works like any timm model.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import timm
from torch import nn

from ..errors import InvalidInputError
from .adapter import Adapter, ModelAdapter, ModelOutputs, adapt, unwrap
from .baselines import BaselineCNN, adapt_stem, create_convnet
from .capsnet import (
    CapsNet,
    capsule_lengths,
    dynamic_routing,
    margin_loss,
    reconstruction_loss,
    squash,
)

__all__ = [
    "Adapter",
    "BaselineCNN",
    "CapsNet",
    "ModelAdapter",
    "ModelOutputs",
    "UnknownModelError",
    "adapt",
    "adapt_stem",
    "capsule_lengths",
    "create_model",
    "create_convnet",
    "dynamic_routing",
    "margin_loss",
    "native_models",
    "reconstruction_loss",
    "squash",
    "unwrap",
]


class UnknownModelError(InvalidInputError):
    """A model name that neither capsprobe nor timm knows."""


def native_models() -> list[str]:
    """Names capsprobe registers in timm: every ``capsnet*`` variant and ``baseline_cnn``."""
    return sorted(timm.list_models(module="capsnet") + timm.list_models(module="baselines"))


def create_model(
    name: str,
    in_chans: int = 1,
    num_classes: int = 10,
    img_size: int | Sequence[int] = 28,
    **kwargs,
) -> nn.Module:
    """Build any model capsprobe can probe, randomly initialised.

    Args:
        name: ``capsnet``, ``capsnet_small``, ``baseline_cnn`` or any timm convnet (small-input stem,
            see :func:`capsprobe.models.baselines.create_convnet`).
        in_chans: input channels.
        num_classes: number of classes.
        img_size: input size ``H`` or ``(H, W)``.
        **kwargs: model options (e.g. ``num_iters=1`` for a CapsNet).

    Returns:
        The model.

    Raises:
        UnknownModelError: the name is unknown; the message lists close matches.
    """
    if name in native_models():
        return timm.create_model(name, in_chans=in_chans, num_classes=num_classes, img_size=img_size, **kwargs)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, native_models() + timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see `capsprobe list`"
        raise UnknownModelError(f"unknown model {name!r}; {hint}")
    return create_convnet(name, in_chans=in_chans, num_classes=num_classes, img_size=img_size, **kwargs)
