"""Convnet baselines: the CNN of the CapsNet paper, and timm convnets adapted to small inputs.

Paper: Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", arXiv:1710.09829, section 5: "The
baseline is a standard CNN with three convolutional layers of 256, 256, 128 channels. Each has 5x5 kernels
and stride of 1. The last convolutional layers are followed by two fully connected layers of size 328, 192.
The last fully connected layer is connected with dropout to a 10 class softmax layer."
Registered in timm as ``baseline_cnn`` (35,445,522 parameters at 1x28x28 with 10 classes: no pooling, so
the first fully connected layer alone holds 32.9M).

Stem adaptation for 28-40 px inputs (:func:`create_convnet`, option ``stem``), because ImageNet stems
(stride 4) leave a 28x28 digit at 1x1 before the last stage:

==============================================  ==================================================  ==============
family (timm class)                             ``stem="small"`` (default)                          28x28 final map
==============================================  ==================================================  ==============
ResNet (``resnet*``, ``resnext*``, ``seresnet*``)  stem = one 3x3 stride-1 conv, then timm's max-pool     2x2 (stride 16)
EfficientNet / MobileNetV3 (``efficientnet*``,   ``conv_stem`` stride 1                              2x2 (stride 16)
``mobilenetv3*``, ``mnasnet*``, ...)
anything else                                   unchanged (logged)                                  as timm builds
==============================================  ==================================================  ==============

``stem="cifar"`` also drops the ResNet max-pool (stride 8, 4x4 final map); ``stem="imagenet"`` keeps timm's
stem. Measured at 1x28x28 (forward GFLOP per image; training images/s at batch 128 on the 2-core CPU):

=====================  ==========  ============
model                  GFLOP/img   train img/s
=====================  ==========  ============
capsnet (paper)        0.404       61
capsnet_small          0.029       806
baseline_cnn (paper)   3.930       18
resnet18, small        0.244       192
resnet18, cifar        0.912       61
resnet18, imagenet     0.066       642
=====================  ==========  ============

The ``cifar`` stem would make resnet18 cost 2.3x the paper CapsNet; ``small`` keeps it below (0.6x) while
still seeing a 14x14 map in its first stage, hence the default.
"""

from __future__ import annotations

import logging
from typing import Sequence

import timm
import torch
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._cfg import cfg_of, register_family, small_image_cfg

__all__ = ["STEMS", "BaselineCNN", "adapt_stem", "create_convnet"]

_log = logging.getLogger(__name__)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


_POOLS: dict[str, type[nn.Module] | None] = {"none": None, "max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class BaselineCNN(nn.Module):
    """The baseline CNN of the CapsNet paper: 3 SAME 5x5 convs (256, 256, 128), FC 328, FC 192, dropout, FC K.

    Args:
        num_classes: number of classes ``K``.
        in_chans: input channels.
        img_size: input size ``H`` or ``(H, W)``; fixes the width of the first fully connected layer.
        channels: conv widths.
        hidden: fully connected widths.
        drop_rate: dropout before the classifier.
        pool: 2x2 pooling after every convolution but the last: ``"max"`` (or True; the paper's affNIST comparison
            model), ``"avg"``, or ``"none"`` (or False).
        kernel_size: the convolutions' (odd) kernel, SAME padding: 5 in the paper, 9 for the CapsNet's Conv1 size
            (the counterpart of Gu, Tresp & Hu 2021's kernel-size ablation).
        **kwargs: timm's extra keywords (``pretrained_cfg``, ...) are accepted and ignored.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | Sequence[int] = 28,
        channels: Sequence[int] = (256, 256, 128),
        hidden: Sequence[int] = (328, 192),
        drop_rate: float = 0.5,
        pool: bool | str = False,
        kernel_size: int = 5,
        **kwargs,
    ):
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"BaselineCNN got unexpected keyword arguments: {sorted(kwargs)}")
        pool = {True: "max", False: "none"}.get(pool, pool) if isinstance(pool, bool) else pool
        if pool not in _POOLS:
            raise InvalidInputError(f"pool must be one of {', '.join(_POOLS)} (or true/false), got {pool!r}")
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidInputError(f"kernel_size must be an odd positive integer (SAME padding), got {kernel_size!r}")
        self.pool, self.kernel_size = pool, kernel_size
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = _pair(img_size)
        convs: list[nn.Module] = []
        width = in_chans
        h, w = self.img_size
        self.feature_info = []  # timm's: one entry per convolution stage (its ReLU), for per-layer probes
        reduction = 1
        for i, c in enumerate(channels):
            convs += [nn.Conv2d(width, c, kernel_size, stride=1, padding=kernel_size // 2), nn.ReLU(inplace=True)]
            self.feature_info.append({"num_chs": c, "reduction": reduction, "module": f"features.{len(convs) - 1}"})
            layer = _POOLS[pool]
            if layer is not None and i < len(channels) - 1:  # 2x2 pooling after every conv but the last
                convs.append(layer(2))
                h, w = h // 2, w // 2
                reduction *= 2
            width = c
        self.features = nn.Sequential(*convs)
        fcs: list[nn.Module] = []
        flat = width * h * w
        for h in hidden:
            fcs += [nn.Linear(flat, h), nn.ReLU(inplace=True)]
            flat = h
        self.pre_logits = nn.Sequential(*fcs)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(flat, num_classes)
        self.num_features = width
        self.head_hidden_size = flat

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> feature maps ``(B, 128, H, W)``."""
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature maps -> logits ``(B, K)``, or the 192-D pre-logit features with ``pre_logits``."""
        x = self.pre_logits(x.flatten(1))
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes)


default_cfgs = generate_default_cfgs({
    "baseline_cnn": small_image_cfg(first_conv="features.0", classifier="fc"),
    "baseline_cnn_pool": small_image_cfg(first_conv="features.0", classifier="fc", input_size=(1, 40, 40)),
})


@register_family(BaselineCNN)
def baseline_cnn(pretrained: bool = False, **kwargs) -> BaselineCNN:
    """The paper's baseline CNN: 35,445,522 parameters at 1x28x28 with 10 classes."""
    if pretrained:
        raise RuntimeError("no pretrained weights exist for baseline_cnn; train one with `capsprobe train`")
    model = BaselineCNN(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg_of("baseline_cnn")  # type: ignore[assignment]
    return model


STEMS = ("small", "cifar", "imagenet")


def adapt_stem(model: nn.Module, in_chans: int, stem: str = "small") -> str:
    """Adapt an ImageNet stem to 28-40 px inputs in place (see the module docstring for the rules).

    Args:
        model: a timm model.
        in_chans: input channels of the new stem.
        stem: ``small`` (default: stride-1 stem, ResNets keep their max-pool), ``cifar`` (stride-1 stem and no
            max-pool: 4x the compute of ``small``), or ``imagenet`` (timm's stem, unchanged).

    Returns:
        A short description of the change, ``"unchanged"`` when the family needs none or is unknown.
    """
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    if stem not in STEMS:
        raise InvalidInputError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
    if stem == "imagenet":
        return "unchanged"
    if isinstance(model, ResNet):
        width: int = model.bn1.num_features  # type: ignore[assignment]  # a BatchNorm2d's channel count
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)  # type: ignore[assignment]
        if stem == "cifar":
            model.maxpool = nn.Identity()  # type: ignore[assignment]
            return "resnet: 3x3 stride-1 stem conv, no max-pool"
        return "resnet: 3x3 stride-1 stem conv, then the max-pool"
    if isinstance(model, (EfficientNet, MobileNetV3)):
        model.conv_stem.stride = (1, 1)
        return "efficientnet/mobilenet: stem stride 1"
    return "unchanged"


def create_convnet(
    name: str,
    in_chans: int = 1,
    num_classes: int = 10,
    img_size: int | Sequence[int] = 28,
    stem: str = "small",
    **kwargs,
) -> nn.Module:
    """Build a timm convnet by name, randomly initialised, sized for small images.

    Args:
        name: a timm model name (``resnet18``, ``mobilenetv3_small_100``, ...).
        in_chans: input channels.
        num_classes: number of classes.
        img_size: input size; passed on to models that take one.
        stem: ``small``, ``cifar`` or ``imagenet`` (:func:`adapt_stem`).
        **kwargs: passed to :func:`timm.create_model`.

    Returns:
        The model, with ``capsprobe_stem`` describing the stem change.
    """
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    change = adapt_stem(model, in_chans, stem)
    model.capsprobe_stem = change  # type: ignore[assignment]  # a plain attribute on the timm model
    # a forward on a dummy input catches a model that cannot take this size, at build time
    with torch.no_grad():
        was_training = model.training
        model.eval()
        h, w = _pair(img_size)
        try:
            model(torch.zeros(1, in_chans, h, w))
        except (RuntimeError, AssertionError, ValueError) as exc:  # depends on the timm family
            raise InvalidInputError(f"{name} cannot take {in_chans}x{h}x{w} inputs: {exc}".splitlines()[0]) from None
        model.train(was_training)
    if change == "unchanged" and stem != "imagenet":  # said once the model is known to work
        _log.info("%s: no small-input stem adaptation known for this family; using timm's stem", name)
    return model



@register_family(BaselineCNN)
def baseline_cnn_pool(pretrained: bool = False, **kwargs) -> BaselineCNN:
    """The paper's CNN with 2x2 max-pooling after the first two convolutions and dropout: the convnet the
    affNIST comparison (section 5.2) asks for; 6,728,466 parameters at 1x40x40 (4,587,282 at 1x28x28)."""
    if pretrained:
        raise RuntimeError("no pretrained weights exist for baseline_cnn_pool; train one with `capsprobe train`")
    model = BaselineCNN(**{"pool": "max", **kwargs})
    model.pretrained_cfg = model.default_cfg = cfg_of("baseline_cnn_pool")  # type: ignore[assignment]
    return model
