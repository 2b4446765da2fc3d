"""Models: the CapsNet, the paper's CNN and timm convnets behind one factory and one output face.

Importing this package registers ``capsnet*`` and ``baseline_cnn`` in timm, so after ``import capsprobe``
``timm.create_model("capsnet", in_chans=1, num_classes=10)`` works like any timm model.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Sequence

import timm
from torch import nn

from ..errors import InvalidInputError
from ._cfg import family_classes, register_family, unregister_family
from .adapter import Adapter, ModelAdapter, ModelOutputs, adapt, unwrap
from .baselines import BaselineCNN, adapt_stem, create_convnet
from .capsnet import CapsNet
from .components import (
    get_capsule_loss,
    get_routing,
    get_vote_map,
    list_capsule_losses,
    list_routings,
    list_vote_maps,
    register_capsule_loss,
    register_routing,
    register_vote_map,
)
from .costs import model_costs
from .efficient_capsnet import EfficientCapsNet
from .emcaps import EMCapsNet
from .gcnn import GCNN, ExportedGCNN
from .heads import BackboneHeadNet, Head, get_head, head_costs, list_heads, register_head, unregister_head
from .layers import (
    capsule_lengths,
    dynamic_routing,
    em_routing,
    margin_loss,
    reconstruction_loss,
    spread_loss,
    squash,
)

__all__ = [
    "Adapter",
    "BackboneHeadNet",
    "BaselineCNN",
    "CapsNet",
    "EMCapsNet",
    "EfficientCapsNet",
    "ExportedGCNN",
    "GCNN",
    "Head",
    "ModelAdapter",
    "ModelOutputs",
    "UnknownModelError",
    "adapt",
    "adapt_stem",
    "capsule_loss_of",
    "capsule_lengths",
    "check_model_kwargs",
    "create_model",
    "create_convnet",
    "dynamic_routing",
    "em_routing",
    "get_capsule_loss",
    "get_head",
    "get_routing",
    "get_vote_map",
    "head_costs",
    "list_capsule_losses",
    "list_heads",
    "list_routings",
    "list_vote_maps",
    "margin_loss",
    "model_costs",
    "native_models",
    "reconstruction_loss",
    "register_capsule_loss",
    "register_family",
    "register_head",
    "register_routing",
    "register_vote_map",
    "spread_loss",
    "squash",
    "unregister_family",
    "unregister_head",
    "unwrap",
]


class UnknownModelError(InvalidInputError):
    """A model name that neither capsprobe nor timm knows."""


def capsule_loss_of(model: nn.Module):
    """The loss a capsule model trains with on its lengths: its own ``capsule_loss`` (a CapsNet built with
    ``loss=...``), else the margin loss."""
    fn = getattr(unwrap(model), "capsule_loss", None)
    return fn if callable(fn) else margin_loss


def native_models() -> list[str]:
    """Names capsprobe registers in timm (through :func:`register_family`): every ``capsnet*`` variant (dynamic
    routing and EM), ``efficient_capsnet``, the ``backbone_head_*`` heads, ``baseline_cnn*`` and any family
    registered since."""
    return sorted(family_classes())


# options a timm convnet takes from a config (create_convnet's own, and timm's regularisation rates); nothing that
# loads files (checkpoint_path, pretrained, pretrained_cfg*, cache_dir...) is ever taken from a config
_CONVNET_OPTIONS = ("stem", "drop_rate", "drop_path_rate")
_NOT_OPTIONS = {"self", "head", "num_classes", "in_chans", "img_size", "kwargs"}


# the integer options' sane ranges: far past any real model, far below a typo that hangs (10**7 routing
# iterations) or asks for terabytes
_SIZES = ("conv_channels", "caps1_types", "caps2_types", "caps_types", "primary_types", "primary_caps", "planes")
_OPTION_BOUNDS: dict[str, tuple[int, int]] = {
    "num_iters": (1, 100),
    **{k: (1, 4096) for k in _SIZES},
    **{k: (1, 1024) for k in ("capsule_dim", "out_dim", "pose_dim", "primary_dim")},
    **{k: (1, 64) for k in ("kernel_size", "conv_kernel", "primary_kernel", "primary_stride")},
}


def _native_options(name: str) -> tuple[str, ...]:
    init = family_classes()[name].__dict__["__init__"]  # the family's own constructor
    return tuple(p for p in inspect.signature(init).parameters if p not in _NOT_OPTIONS)


def check_model_kwargs(name: str, kwargs: dict) -> None:
    """Refuse any model option outside the model family's allowlist (a CapsNet's or the paper CNN's constructor
    arguments; for timm convnets ``stem``, ``drop_rate``, ``drop_path_rate``).

    Raises:
        InvalidInputError: an option the family does not take; the message lists those it does.
    """
    allowed = _native_options(name) if name in native_models() else _CONVNET_OPTIONS
    for key, value in kwargs.items():
        if key not in allowed:
            raise InvalidInputError(f"model {name} takes no option {key!r} (model_kwargs); it takes: "
                                    f"{', '.join(allowed)}")
        bounds = _OPTION_BOUNDS.get(key)
        if bounds is None or (value is None and key == "num_iters"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not bounds[0] <= value <= bounds[1]:
            raise InvalidInputError(f"model option {key} must be an integer in [{bounds[0]}, {bounds[1]}], got "
                                    f"{value!r}")


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
    if not (name in native_models() or timm.is_model(name)):
        close = difflib.get_close_matches(name, native_models() + timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see `capsprobe list`"
        raise UnknownModelError(f"unknown model {name!r}; {hint}")
    try:
        if name in native_models():
            return timm.create_model(name, in_chans=in_chans, num_classes=num_classes, img_size=img_size, **kwargs)
        return create_convnet(name, in_chans=in_chans, num_classes=num_classes, img_size=img_size, **kwargs)
    except InvalidInputError:
        raise
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError, AttributeError) as exc:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"cannot build {name} for {in_chans}-channel {img_size} inputs with {num_classes} "
                                f"classes: {what}") from None
