"""Models: the CapsNet, the paper's CNN and timm convnets behind one factory and one output face.

Importing this package registers ``capsnet*`` and ``baseline_cnn`` in timm, so after ``import capsprobe``
``timm.create_model("capsnet", in_chans=1, num_classes=10)`` works like any timm model.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

import timm
import torch
from torch import Tensor, nn

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
    "BaselineCNN",
    "CapsNet",
    "ModelOutputs",
    "UnknownModelError",
    "adapt_stem",
    "capsule_lengths",
    "create_model",
    "create_convnet",
    "dynamic_routing",
    "is_capsnet",
    "margin_loss",
    "model_outputs",
    "native_models",
    "reconstruction_loss",
    "squash",
    "unwrap",
]


class UnknownModelError(ValueError):
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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel / compiled wrapper."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_capsnet(model: nn.Module) -> bool:
    """True for a CapsNet, wrapped or not."""
    return isinstance(unwrap(model), CapsNet)


@dataclass(frozen=True)
class ModelOutputs:
    """What the probe sees of any model.

    Attributes:
        scores: class scores ``(B, K)``: capsule lengths for a CapsNet, softmax probabilities for a convnet.
        representation: ``(B, F)``: the flattened poses ``(B, K*16)`` for a CapsNet, the pre-logit features
            for a convnet.
        poses: CapsNet class-capsule poses ``(B, K, 16)``; None for a convnet.
    """

    scores: Tensor
    representation: Tensor
    poses: Tensor | None = None


def model_outputs(model: nn.Module, x: Tensor) -> ModelOutputs:
    """Class scores and representation of ``model`` for images ``x (B, C, H, W)``, in float32.

    One forward pass; the caller chooses the grad mode and the model's train/eval mode.
    """
    m = unwrap(model)
    if isinstance(m, CapsNet):
        poses = m.forward_features(x).float()  # (B, K, 16)
        return ModelOutputs(scores=capsule_lengths(poses), representation=poses.flatten(1), poses=poses)
    features = m.forward_features(x)
    pre = m.forward_head(features, pre_logits=True)  # (B, F)
    logits = m.forward_head(features)  # (B, K); the head is cheap beside the features
    return ModelOutputs(scores=torch.softmax(logits.float(), dim=-1), representation=pre.flatten(1).float())
