"""Efficient-CapsNet: capsules with self-attention routing.

Paper: Vittorio Mazzia, Francesco Salvetti, Marcello Chiaberge, "Efficient-CapsNet: capsule network with
self-attention routing", Scientific Reports 11, 14634 (2021), arXiv:2101.12491; the authors' code is
EscVM/Efficient-CapsNet.

The MNIST architecture of the paper: four convolutions, each ReLU then batch norm (5x5 32, 3x3 64, 3x3 64, 3x3 128
stride 2, no padding: 28 -> 24 -> 22 -> 20 -> 9); PrimaryCaps, a depthwise convolution whose kernel covers the whole
map (9x9 at 28x28), its 128 outputs grouped into 16 capsules of 8-D (channels ``8 i .. 8 i + 7`` are capsule ``i``)
and squashed with :func:`capsprobe.models.layers.efficient_squash`; FCCaps, ``K`` class capsules of 16-D, one 8x16
matrix per (primary, class) pair and a learned prior ``B (K, 16)``, combined by self-attention routing
(:func:`capsprobe.models.layers.attention_routing`, no iterations) and the same squash. Class scores are the
capsules' lengths; the loss is the margin loss; a decoder (FC 512, 1024, ``C H W`` sigmoid, fed the masked poses) as
in the paper's training, optional.

==========================  ======================================================  ==============================
name                        layout                                                  params (1x28x28, K=10)
==========================  ======================================================  ==============================
``efficient_capsnet``       the paper's                                             161,824 without the decoder
                                                                                    (the paper's count), 1,573,168
                                                                                    with it
==========================  ======================================================  ==============================

The count: convolutions 832 + 18,496 + 36,928 + 73,856; batch norms ``2 x (32 + 64 + 64 + 128) = 576`` (their
running statistics are buffers, not parameters, in PyTorch as in Keras' trainable count); PrimaryCaps ``81 x 128 +
128 = 10,496``; FCCaps ``10 x 16 x 8 x 16 + 10 x 16 = 20,640``.

The paper trains with random rotations of up to 30 degrees (and shifts); capsprobe trains it as every other model of
a comparison, without rotations, since a rotation-augmented model in a rotation-robustness comparison measures the
augmentation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._cfg import cfg_of, register_family, small_image_cfg
from .capsnet import CapsuleDecoder, LengthCapsules, _pair
from .components import get_capsule_loss
from .layers import attention_routing, efficient_squash, full_precision

__all__ = ["EfficientCapsNet", "FCCaps", "efficient_capsnet"]


class FCCaps(nn.Module):
    """Fully connected capsules with Efficient-CapsNet's self-attention routing.

    Args:
        num_in, in_dim: input capsules and their dimension (16, 8).
        num_out, out_dim: output capsules and their dimension (``K``, 16).
    """

    def __init__(self, num_in: int, in_dim: int, num_out: int, out_dim: int):
        super().__init__()
        self.num_in, self.in_dim, self.num_out, self.out_dim = num_in, in_dim, num_out, out_dim
        self.weight = nn.Parameter(torch.empty(num_out, num_in, in_dim, out_dim))
        nn.init.kaiming_normal_(self.weight.view(num_out * num_in, in_dim, out_dim), nonlinearity="linear")
        self.prior = nn.Parameter(torch.zeros(num_out, num_in))  # the paper's B, added to the couplings

    def votes(self, u: Tensor) -> Tensor:
        """``u (B, N_in, D_in)`` -> votes ``(B, N_out, N_in, D_out)``, ``u_hat_j|i = u_i W_ji``."""
        if u.shape[1:] != (self.num_in, self.in_dim):
            raise InvalidInputError(f"expected input capsules (B, {self.num_in}, {self.in_dim}), got {tuple(u.shape)}")
        return torch.einsum("bid,jide->bjie", u, self.weight.to(u.dtype))

    def forward(self, u: Tensor) -> Tensor:
        """``u (B, N_in, D_in)`` -> class capsules ``(B, N_out, D_out)``, routed in float32 under autocast."""
        votes = self.votes(u)
        if votes.dtype in (torch.float16, torch.bfloat16):
            votes = votes.float()
        with full_precision(u.device):
            return efficient_squash(attention_routing(votes, self.prior))


class EfficientCapsNet(LengthCapsules, nn.Module):
    """Efficient-CapsNet (see the module docstring).

    Args:
        num_classes: class capsules ``K``.
        in_chans: input channels.
        img_size: input side ``H`` or ``(H, W)``; the PrimaryCaps kernel covers the map the convolutions leave.
        channels: the four convolutions' widths (32, 64, 64, 128).
        primary_caps: primary capsules (16); ``channels[-1]`` must be a multiple of it.
        capsule_dim: class capsule dimension (16).
        decoder: build the reconstruction decoder.
        decoder_hidden: its hidden widths.
        loss: ``margin`` (the paper's) or ``ce``.
        **kwargs: timm's extra keywords are accepted and ignored.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int | Sequence[int] = 28,
                 channels: Sequence[int] = (32, 64, 64, 128), primary_caps: int = 16, capsule_dim: int = 16,
                 decoder: bool = True, decoder_hidden: Sequence[int] = (512, 1024), loss: str = "margin", **kwargs):
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "drop_rate"):
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"EfficientCapsNet got unexpected keyword arguments: {sorted(kwargs)}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4:
            raise InvalidInputError(f"channels must be four widths, got {channels!r}")
        if channels[-1] % primary_caps:
            raise InvalidInputError(f"channels[-1] = {channels[-1]} is not a multiple of primary_caps = {primary_caps}")
        get_capsule_loss(loss)
        self.loss, self.num_classes, self.in_chans, self.img_size = loss, num_classes, in_chans, _pair(img_size)
        self.capsule_dim = capsule_dim
        layers: list[nn.Module] = []
        width, (h, w) = in_chans, self.img_size
        for c, (k, s) in zip(channels, ((5, 1), (3, 1), (3, 1), (3, 2))):
            layers += [nn.Conv2d(width, c, k, stride=s), nn.ReLU(inplace=True), nn.BatchNorm2d(c)]
            width, h, w = c, (h - k) // s + 1, (w - k) // s + 1
        if min(h, w) < 1:
            raise InvalidInputError(f"input {self.img_size} is too small for Efficient-CapsNet (at least 11x11)")
        self.stem = nn.Sequential(*layers)
        self.primary = nn.Conv2d(width, width, (h, w), groups=width)  # depthwise, covering the map: (B, 128, 1, 1)
        self.primary_caps, self.primary_dim = primary_caps, width // primary_caps
        self.digits = FCCaps(primary_caps, self.primary_dim, num_classes, capsule_dim)
        self.decoder = CapsuleDecoder(num_classes, capsule_dim, (in_chans, *self.img_size), decoder_hidden) if decoder else None
        self.num_features = self.head_hidden_size = num_classes * capsule_dim
        self.feature_info = [
            {"num_chs": width, "reduction": 2, "module": "stem"},
            {"num_chs": width, "reduction": 2, "module": "primary"},
            {"num_chs": num_classes * capsule_dim, "reduction": 2, "module": "digits"},
        ]

    def primary_capsules(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> squashed primary capsules ``(B, 16, 8)``."""
        if x.shape[1:] != (self.in_chans, *self.img_size):
            raise InvalidInputError(f"EfficientCapsNet was built for inputs (B, {self.in_chans}, {self.img_size[0]}, "
                                    f"{self.img_size[1]}), got {tuple(x.shape)}")
        y = self.primary(self.stem(x)).flatten(1)  # (B, 128)
        return efficient_squash(y.view(-1, self.primary_caps, self.primary_dim))

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> class-capsule poses ``(B, K, 16)``."""
        return self.digits(self.primary_capsules(x))

    def probe_taps(self) -> list[tuple[str, nn.Module, Callable[[Tensor, tuple, nn.Module], dict[str, Tensor]]]]:
        """The per-layer probe's taps: the stem's output, the primary capsules (as the class layer receives them)
        and the class capsules."""
        return [("stem", self.stem, lambda out, inputs, module: {"stem": out}),
                ("digits", self.digits, lambda out, inputs, module: {"primary": inputs[0], "digits": out})]

    def convolution_stack(self) -> nn.Module:
        """The four convolutions and the depthwise PrimaryCaps convolution (``capsprobe bench``)."""
        return nn.Sequential(self.stem, self.primary)


default_cfgs = generate_default_cfgs({"efficient_capsnet": small_image_cfg(
    first_conv="stem.0", classifier="digits", paper_ids="arXiv:2101.12491")})


@register_family(EfficientCapsNet)
def efficient_capsnet(pretrained: bool = False, **kwargs) -> EfficientCapsNet:
    """Efficient-CapsNet (Mazzia et al. 2021): 161,824 parameters at 1x28x28 with 10 classes without the decoder."""
    if pretrained:
        raise RuntimeError("no pretrained weights exist for efficient_capsnet; train one with `capsprobe train`")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = EfficientCapsNet(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg_of("efficient_capsnet")  # type: ignore[assignment]
    return model

