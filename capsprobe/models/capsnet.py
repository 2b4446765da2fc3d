"""CapsNet with dynamic routing.

Paper: Sara Sabour, Nicholas Frosst, Geoffrey E. Hinton, "Dynamic Routing Between Capsules",
NeurIPS 2017, arXiv:1710.09829.

The architecture is the paper's: Conv1 256@9x9 stride 1 ReLU; PrimaryCaps 32 capsule types of 8-D,
9x9 stride 2; DigitCaps ``num_classes`` capsules of 16-D with one 16x8 matrix per (input capsule,
output capsule) pair and routing-by-agreement (Procedure 1); a three-layer decoder fed the masked
poses. The number of primary capsules follows from the input size (1152 at 28x28), so 36x36, 40x40 and
3x32x32 inputs work too.

timm interface: ``forward_features(x) -> poses (B, K, 16)``, ``forward_head(poses) -> lengths (B, K)``,
``forward(x) = forward_head(forward_features(x))`` and ``decode(poses, labels=None) -> images``.
The registered names all start with ``capsnet``:

==================  ===================================================  =====================  =====================
name                layout                                               params (1x28x28, K=10)  without decoder
==================  ===================================================  =====================  =====================
``capsnet``         paper: conv 256, 32 x 8-D primary types, 16-D digits  8,215,568               6,804,224
``capsnet_small``   conv 64, 8 x 8-D primary types, 16-D digits           2,117,072               705,728
==================  ===================================================  =====================  =====================
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._cfg import cfg_of, register_family, small_image_cfg
from .adapter import ModelOutputs
from .components import (
    get_capsule_loss,
    get_routing,
    get_vote_map,
)
from .layers import StemConv2d, capsule_lengths, fast_kernels_apply, full_precision, squash

__all__ = [
    "CapsNet",
    "CapsuleDecoder",
    "DigitCaps",
    "LengthCapsules",
    "PrimaryCaps",
    "capsnet",
    "capsnet_small",
    "default_cfgs",
]

def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) != 2:
        raise InvalidInputError(f"expected an int or a pair (H, W), got {value!r}")
    return int(value[0]), int(value[1])


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class PrimaryCaps(nn.Module):
    """Convolutional capsules: one conv gives ``num_types * dim`` channels, grouped into capsules.

    Channel ``t * dim + d`` is component ``d`` of capsule type ``t`` at every position, i.e. the grouping is
    ``view(B, types, dim, H, W).permute(0, 1, 3, 4, 2)``; capsules are ordered (type, row, column).

    Args:
        in_channels: channels of the input feature map.
        num_types: capsule types (32 in the paper).
        dim: capsule dimension (8 in the paper).
        kernel_size: conv kernel (9).
        stride: conv stride (2).
        squash: squash each capsule (the paper); False leaves the convolution's output as it is.
    """

    def __init__(self, in_channels: int, num_types: int = 32, dim: int = 8, kernel_size: int = 9, stride: int = 2,
                 squash: bool = True):
        super().__init__()
        self.squash = squash
        self.num_types = num_types
        self.dim = dim
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, num_types * dim, kernel_size, stride=stride)

    def num_capsules(self, height: int, width: int) -> int:
        """Number of output capsules for an input feature map of ``height x width``."""
        return self.num_types * _conv_out(height, self.kernel_size, self.stride) * _conv_out(
            width, self.kernel_size, self.stride
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` feature map -> ``(B, num_types * H' * W', dim)`` squashed capsules."""
        y = self.conv(x)  # (B, types * dim, H', W')
        batch, _, h, w = y.shape
        y = y.view(batch, self.num_types, self.dim, h, w).permute(0, 1, 3, 4, 2)  # (B, types, H', W', dim)
        y = y.reshape(batch, self.num_types * h * w, self.dim)  # (B, N_in, dim)
        return squash(y) if self.squash else y


def _identity(s: Tensor) -> Tensor:
    return s


_ACTIVATIONS = {True: squash, False: _identity}  # DigitCaps(squash=...) shadows the function's name


class DigitCaps(nn.Module):
    """Fully connected capsule layer: input capsules vote for output capsules, a routing combines the votes.

    Args:
        num_in: number of input capsules (1152 for the paper model at 28x28).
        in_dim: input capsule dimension (8).
        num_out: number of output capsules, one per class.
        out_dim: output capsule dimension (16).
        num_iters: routing iterations (3).
        detach_inner: detach ``u_hat`` in the inner routing iterations (off in the paper).
        routing: a name of the routing registry (:mod:`capsprobe.models.components`): ``dynamic`` (the paper's
            Procedure 1), ``none`` (uniform couplings ``1 / N_out``, never updated) or ``attention``
            (Efficient-CapsNet's self-attention routing, one pass).
        transformation: a name of the transformation registry: ``per-pair`` (one ``out_dim x in_dim`` matrix per
            (input, output) pair, the paper's) or ``shared`` (one matrix per output capsule).
        squash: squash the output capsules (the paper); False leaves ``s_j`` as it is.
    """

    fast_kernels: bool = True  # training steps route through one autograd node (False: the eager reference)

    def __init__(
        self,
        num_in: int,
        in_dim: int = 8,
        num_out: int = 10,
        out_dim: int = 16,
        num_iters: int = 3,
        detach_inner: bool = False,
        routing: str = "dynamic",
        transformation: str = "per-pair",
        squash: bool = True,
    ):
        super().__init__()
        self.num_in, self.in_dim, self.num_out, self.out_dim = num_in, in_dim, num_out, out_dim
        self.num_iters = num_iters
        self.detach_inner = detach_inner
        self.routing, self.transformation, self.squash = routing, transformation, squash
        self._route = get_routing(routing)
        self._records = "record" in inspect.signature(self._route).parameters
        self._fuses = "fused" in inspect.signature(self._route).parameters
        self._transform = get_vote_map(transformation)
        self._activation = _ACTIVATIONS[bool(squash)]
        # per-pair: (N_in, N_out, D_out, D_in), the layout of earlier versions (their runs load unchanged);
        # the official code draws these from N(0, 0.01^2)
        self.weight = nn.Parameter(0.01 * torch.randn(self._transform.shape(num_in, in_dim, num_out, out_dim)))

    def votes(self, u: Tensor) -> Tensor:
        """``u (B, N_in, D_in)`` -> votes ``(B, N_out, N_in, D_out)``, parent-major, ``u_hat_j|i = W_ij u_i`` (or
        ``W_j u_i`` for the shared transformation): a few large matrix products and one copy into the layout that
        routing reads in place."""
        if u.shape[1:] != (self.num_in, self.in_dim):
            raise InvalidInputError(
                f"expected input capsules (B, {self.num_in}, {self.in_dim}), got {tuple(u.shape)}; "
                "was the model built for another input size?"
            )
        return self._transform.votes(u, self.weight)

    def predictions(self, u: Tensor) -> Tensor:
        """``u (B, N_in, D_in)`` -> ``u_hat (B, N_in, N_out, D_out)`` (a view of :meth:`votes`)."""
        return self.votes(u).transpose(1, 2)

    def forward(self, u: Tensor) -> Tensor:
        """``u (B, N_in, D_in)`` -> ``v (B, N_out, D_out)``. Routing runs in float32 under autocast."""
        return self._routed(u)[1]

    def iterates(self, u: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``u (B, N_in, D_in)`` -> the votes ``(B, N_out, N_in, D_out)`` and the output capsules after every routing
        iteration (the last is :meth:`forward`'s output): the layers inside this one, for per-layer measures."""
        record: list[Tensor] = []
        votes, _ = self._routed(u, record)
        return votes, record

    def _routed(self, u: Tensor, record: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        votes = self.votes(u)
        if votes.dtype in (torch.float16, torch.bfloat16):
            votes = votes.float()  # half-precision votes are routed in float32; float64 stays float64
        with full_precision(u.device):
            if record is None or not self._records:
                if self._fuses and fast_kernels_apply(self):
                    v = self._route(votes, self.num_iters, self.detach_inner, self._activation,
                                    fused=True)  # type: ignore[call-arg]  # checked: self._fuses
                else:
                    v = self._route(votes, self.num_iters, self.detach_inner, self._activation)
                if record is not None:
                    record.append(v)  # a routing that cannot record its iterations shows its output alone
                return votes, v
            return votes, self._route(votes, self.num_iters, self.detach_inner, self._activation,
                                      record=record)  # type: ignore[call-arg]  # checked: self._records


class CapsuleDecoder(nn.Module):
    """Reconstruction network: FC 512 ReLU, FC 1024 ReLU, FC C*H*W sigmoid, fed masked poses.

    Args:
        num_classes: number of digit capsules ``K``.
        capsule_dim: pose dimension (16).
        out_shape: ``(C, H, W)`` of the reconstruction.
        hidden: widths of the hidden layers.
    """

    def __init__(
        self,
        num_classes: int,
        capsule_dim: int,
        out_shape: tuple[int, int, int],
        hidden: Sequence[int] = (512, 1024),
    ):
        super().__init__()
        self.out_shape = tuple(out_shape)
        layers: list[nn.Module] = []
        width = num_classes * capsule_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers += [nn.Linear(width, math.prod(self.out_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, masked_poses: Tensor) -> Tensor:
        """``(B, K, D)`` poses with all but the chosen capsules zeroed -> ``(B, C, H, W)`` images."""
        return self.net(masked_poses.flatten(1)).view(-1, *self.out_shape)


class LengthCapsules:
    """What every capsule network whose class scores are its class capsules' lengths shares (the CapsNet of Sabour et
    al. and Efficient-CapsNet): the probe face, the timm head, and the masked decoder.

    A subclass (an ``nn.Module``) defines ``forward_features(x) -> poses (B, K, D)`` and the attributes ``loss`` (a
    capsule loss name), ``decoder`` (a :class:`CapsuleDecoder` or None) and ``digits`` (the class-capsule layer).
    """

    has_poses = True  # the probe's capability flags (capsprobe.models.adapter)
    loss: str
    decoder: "CapsuleDecoder | None"
    digits: nn.Module
    forward_features: Callable[[Tensor], Tensor]

    def capsule_loss(self, lengths: Tensor, targets: Tensor) -> Tensor:
        """The training loss this model was built with (``loss``) on its capsule lengths."""
        return get_capsule_loss(self.loss)(lengths, targets)

    @property
    def can_decode(self) -> bool:
        """True when the model has its reconstruction decoder."""
        return self.decoder is not None

    def probe_outputs(self, x: Tensor) -> "ModelOutputs":
        """What the probe asks of a model: lengths as scores, flattened poses as representation, the poses."""
        poses = self.forward_features(x).float()  # (B, K, 16)
        return ModelOutputs(scores=capsule_lengths(poses), representation=poses.flatten(1), poses=poses)

    def forward_head(self, poses: Tensor, pre_logits: bool = False) -> Tensor:
        """Poses ``(B, K, D)`` -> lengths ``(B, K)``; with ``pre_logits`` the flattened poses ``(B, K*D)``."""
        if pre_logits:
            return poses.flatten(1)
        return capsule_lengths(poses)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> class-capsule lengths ``(B, K)`` (class scores in [0, 1))."""
        return self.forward_head(self.forward_features(x))

    def mask(self, poses: Tensor, labels: Tensor | None = None) -> Tensor:
        """Zero every pose but the selected ones.

        Args:
            poses: ``(B, K, D)``.
            labels: class indices ``(B,)`` or a (multi-)hot mask ``(B, K)``; None selects the longest
                capsule (the prediction).

        Returns:
            Masked poses ``(B, K, D)``.
        """
        if labels is None:
            labels = capsule_lengths(poses).argmax(dim=1)
        if labels.dim() == 1:
            m = F.one_hot(labels.long(), poses.shape[1]).to(poses.dtype)
        else:
            m = labels.to(poses.dtype)
        return poses * m.unsqueeze(-1)

    def decode(self, poses: Tensor, labels: Tensor | None = None) -> Tensor:
        """Reconstruct images from poses ``(B, K, D)``, masked by ``labels`` or else by the prediction.

        Returns:
            Images ``(B, C, H, W)`` in [0, 1].
        """
        if self.decoder is None:
            raise RuntimeError(f"this {type(self).__name__} was built with decoder=False")
        return self.decoder(self.mask(poses, labels))

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        raise NotImplementedError(f"{type(self).__name__}'s classes are its capsules: build a new model with num_classes")

    def get_classifier(self) -> nn.Module:
        return self.digits


class CapsNet(LengthCapsules, nn.Module):
    """The CapsNet of Sabour et al. (2017) with dynamic routing.

    Args:
        num_classes: number of class capsules ``K``.
        in_chans: input channels.
        img_size: input size ``H`` or ``(H, W)``; fixes the number of primary capsules.
        conv_channels: channels of Conv1 (256).
        conv_kernel: kernel of Conv1 (9).
        primary_types: primary capsule types (32).
        primary_dim: primary capsule dimension (8).
        primary_kernel: PrimaryCaps kernel (9).
        primary_stride: PrimaryCaps stride (2).
        capsule_dim: class capsule (pose) dimension (16).
        num_iters: routing iterations (3).
        detach_inner: detach ``u_hat`` in the inner routing iterations (off in the paper).
        decoder: build the reconstruction decoder.
        decoder_hidden: hidden widths of the decoder.
        routing: ``dynamic`` (Procedure 1), ``none`` (uniform couplings) or ``attention`` (Efficient-CapsNet's
            self-attention routing); see :mod:`capsprobe.models.components`.
        transformation: ``per-pair`` (one matrix per input/output capsule pair) or ``shared`` (one per output
            capsule).
        squash: squash primary and class capsules (the paper); False leaves both linear.
        loss: the training loss on the capsule lengths: ``margin`` (eq. 4) or ``ce`` (cross entropy).
        **kwargs: timm's extra keywords (``pretrained_cfg``, ...) are accepted and ignored.
    """

    digits: DigitCaps

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | Sequence[int] = 28,
        conv_channels: int = 256,
        conv_kernel: int = 9,
        primary_types: int = 32,
        primary_dim: int = 8,
        primary_kernel: int = 9,
        primary_stride: int = 2,
        capsule_dim: int = 16,
        num_iters: int = 3,
        detach_inner: bool = False,
        decoder: bool = True,
        decoder_hidden: Sequence[int] = (512, 1024),
        routing: str = "dynamic",
        transformation: str = "per-pair",
        squash: bool = True,
        loss: str = "margin",
        **kwargs,
    ):
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("drop_rate", None)
        if kwargs:
            raise TypeError(f"CapsNet got unexpected keyword arguments: {sorted(kwargs)}")
        if not isinstance(squash, bool):
            raise InvalidInputError(f"squash must be true or false, got {squash!r}")
        get_capsule_loss(loss)  # an unknown name fails here, with the known ones
        self.loss = loss
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = _pair(img_size)
        self.capsule_dim = capsule_dim
        h, w = self.img_size
        fh, fw = _conv_out(h, conv_kernel, 1), _conv_out(w, conv_kernel, 1)
        if min(_conv_out(fh, primary_kernel, primary_stride), _conv_out(fw, primary_kernel, primary_stride)) < 1:
            raise InvalidInputError(f"input {self.img_size} is too small for CapsNet's two 9x9 convolutions")
        self.conv1 = StemConv2d(in_chans, conv_channels, conv_kernel, stride=1)
        self.primary = PrimaryCaps(conv_channels, primary_types, primary_dim, primary_kernel, primary_stride, squash)
        self.num_primary = self.primary.num_capsules(fh, fw)
        self.digits = DigitCaps(self.num_primary, primary_dim, num_classes, capsule_dim, num_iters, detach_inner,
                                routing, transformation, squash)
        self.decoder = (
            CapsuleDecoder(num_classes, capsule_dim, (in_chans, h, w), decoder_hidden) if decoder else None
        )
        # timm attributes
        self.num_features = self.head_hidden_size = num_classes * capsule_dim
        # timm's feature_info: the layers a per-layer probe reads (conv1 after its ReLU, the primary capsules, the
        # class capsules); probe_taps says how each is read
        self.feature_info = [
            {"num_chs": conv_channels, "reduction": 1, "module": "conv1"},
            {"num_chs": primary_types * primary_dim, "reduction": primary_stride, "module": "primary"},
            {"num_chs": num_classes * capsule_dim, "reduction": primary_stride, "module": "digits"},
        ]

    @property
    def num_iters(self) -> int:
        return self.digits.num_iters

    def probe_taps(self) -> list[tuple[str, nn.Module, Callable[[Tensor, tuple, nn.Module], dict[str, Tensor]]]]:
        """The per-layer probe's taps, ``(name, module, tap)`` for a forward hook, for each ``feature_info`` entry:
        ``conv1`` after its ReLU, ``primary`` (the primary capsules), and from the class-capsule layer's input
        ``votes`` (``u_hat``) and ``routing 1`` ... ``routing n`` (the class capsules after each iteration,
        :meth:`DigitCaps.iterates`)."""

        def routing(out, inputs, module):
            votes, iterates = module.iterates(inputs[0])
            return {"votes": votes, **{f"routing {i + 1}": v for i, v in enumerate(iterates)}}

        return [("conv1", self.conv1, lambda out, inputs, module: {"conv1": torch.relu(out)}),
                ("primary", self.primary, lambda out, inputs, module: {"primary": out}),
                ("digits", self.digits, routing)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> class-capsule poses ``(B, K, capsule_dim)``."""
        if x.shape[1:] != (self.in_chans, *self.img_size):
            raise InvalidInputError(
                f"CapsNet was built for inputs (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        x = F.relu(self.conv1(x), inplace=True)  # (B, 256, 20, 20)
        u = self.primary(x)  # (B, 1152, 8)
        return self.digits(u)  # (B, K, 16)

    def convolution_stack(self) -> nn.Module:
        """Conv1, ReLU and the PrimaryCaps convolution, sharing this model's weights: the part of a step that is
        dense convolution work (``capsprobe bench`` times it alone to print everything else as a share)."""
        return nn.Sequential(self.conv1, nn.ReLU(), self.primary.conv)

default_cfgs = generate_default_cfgs(
    {
        "capsnet": small_image_cfg(first_conv="conv1", classifier="digits"),
        "capsnet_small": small_image_cfg(first_conv="conv1", classifier="digits"),
    }
)


def _create(variant: str, pretrained: bool, **kwargs) -> CapsNet:
    if pretrained:
        raise RuntimeError(f"no pretrained weights exist for {variant}; train one with `capsprobe train`")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    model = CapsNet(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg_of(variant)  # type: ignore[assignment]
    return model


@register_family(CapsNet)
def capsnet(pretrained: bool = False, **kwargs) -> CapsNet:
    """CapsNet of the paper: 8,215,568 parameters at 1x28x28 with 10 classes (6,804,224 without decoder)."""
    return _create("capsnet", pretrained, **kwargs)


@register_family(CapsNet)
def capsnet_small(pretrained: bool = False, **kwargs) -> CapsNet:
    """A CPU-sized CapsNet: Conv1 64 channels, 8 primary types of 8-D; 2,117,072 parameters at 1x28x28."""
    args = dict(conv_channels=64, primary_types=8)
    return _create("capsnet_small", pretrained, **{**args, **kwargs})
