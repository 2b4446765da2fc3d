"""Matrix capsules with EM routing.

Paper: Geoffrey E. Hinton, Sara Sabour, Nicholas Frosst, "Matrix capsules with EM routing", ICLR 2018
(openreview.net/forum?id=HJWLfGWRb).

The architecture is the paper's (its Figure 1): a 5x5 stride-2 ReLU convolution with ``A`` channels; PrimaryCaps,
a 1x1 convolution giving ``B`` capsule types, each a 4x4 pose matrix and a logistic activation; ConvCaps1 (``C``
types, 3x3 kernel, stride 2) and ConvCaps2 (``D`` types, 3x3, stride 1), whose children vote with one learned 4x4
matrix per (kernel position, child type, parent type) and are combined by EM routing
(:func:`capsprobe.models.layers.em_routing`); and one class capsule per class, to which every ConvCaps2 capsule of
a type votes with that type's matrix (shared over positions), with *coordinate addition*: the scaled (row, column)
of the centre of the capsule's receptive field is added to the first two entries of the right-hand column of its
vote (entries ``(0, 3)`` and ``(1, 3)`` of the 4x4 matrix, indices 3 and 7 of its 16 flattened entries). No
padding anywhere: 32x32 inputs give 14x14, 6x6 and 4x4 capsule maps, 28x28 inputs 12x12, 5x5 and 3x3.

Departures, as in every public reimplementation: a ConvCaps child routes to the parents of each output position
separately (the paper's children share their assignment over every parent whose receptive field they fall in);
the inverse-temperature schedule, which the paper does not give, is Gritzman's (2019). Two settings the paper
leaves open were chosen by training on the embedded sample (CPU-sized A=32, B=C=D=8; two epochs of 3,600 digits,
batch 32; validation accuracy after the second): the transformation entries start at N(0, 0.5^2) (``init_std``; 49%
against 29% at 1.0 and 18% at 2.0) and every routing variance has a floor of ``var_floor`` (66% at 1e-3 against 49% at
1e-4). Gritzman's scaling of each layer's routing cost by ``100 N_out / N_in`` (``normalise_cost=True``) stayed at
chance (10%) in the same test, so the cost is the paper's as written.

timm interface: ``forward_features(x) -> poses (B, K, 16)``, ``forward_head(poses)`` -> the class activations,
``forward(x) -> activations (B, K)`` in (0, 1), the class scores. ``class_capsules(x)`` returns both;
``pose_matrices(x)`` the poses as ``(B, K, 4, 4)``. No decoder (the paper has none): ``can_decode`` is False.
Training loss: the spread loss, its margin raised from 0.2 by 0.1 per epoch to 0.9 (``set_epoch``, called by the
training loop at every epoch). The loss reads the margin from a buffer, so a compiled training step (``--compile``) is
traced once, not at every epoch (a Python number would be a constant of the graph, guarded on).

==================  ===================================  ======================  ======================
name                A, B, C, D                           params (1x32x32, K=5)   params (1x28x28, K=10)
==================  ===================================  ======================  ======================
``capsnet_em``      32, 32, 32, 32 (the paper's)         316,394 (paper: 310K)   318,964
``capsnet_em_small``  64, 8, 16, 16 (the paper's small)  67,154 (paper: 68K)     68,444
==================  ===================================  ======================  ======================

The counts: Conv1 ``25 A + A``; PrimaryCaps ``A * 17 B + 17 B``; ConvCaps ``9 * in * out * 16`` matrices plus
``beta_u`` and ``beta_a`` per parent type; class capsules ``D * K * 16`` plus ``2 K``. The 4x4 matrices hold
297,472 of the paper model's 316,394 parameters; the paper rounds its total to "310K" without a breakdown, and its
small model's "68K" is 67,154 here, so the count is read as the same architecture.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._cfg import cfg_of, register_family, small_image_cfg
from .adapter import ModelOutputs
from .capsnet import _conv_out as _out  # the side of an unpadded convolution's output
from .capsnet import _pair
from .layers import em_route_parent_major, full_precision, spread_loss

__all__ = ["ClassCapsules", "ConvCaps", "EMCapsNet", "PrimaryMatCaps", "capsnet_em", "capsnet_em_small",
           "receptive_field_centres"]

POSE = 16  # a 4x4 pose matrix, flattened row-major


def receptive_field_centres(size: int, layers: Sequence[tuple[int, int]]) -> Tensor:
    """Pixel coordinate of the receptive-field centre of every output position of a stack of unpadded layers.

    Args:
        size: the input side.
        layers: ``(kernel, stride)`` of each layer, input first.

    Returns:
        ``(n,)`` float64 centres, in the continuous coordinate where pixel ``p`` spans ``[p, p + 1)``.
    """
    n = size
    for k, s in layers:
        n = _out(n, k, s)
    centre = torch.arange(n, dtype=torch.float64)
    for k, s in reversed(layers):
        centre = centre * s + (k - 1) / 2  # the centre index of the window in the layer below
    return centre + 0.5


class PrimaryMatCaps(nn.Module):
    """A 1x1 convolution to ``types`` capsules per position: a 4x4 pose (16 channels) and a logistic activation.

    Channels ``t * 16 .. t * 16 + 15`` are type ``t``'s pose, channel ``16 types + t`` its activation logit.
    """

    def __init__(self, in_channels: int, types: int):
        super().__init__()
        self.types = types
        self.conv = nn.Conv2d(in_channels, types * (POSE + 1), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` -> poses ``(B, types, 16, H, W)`` and activations ``(B, types, H, W)``."""
        y = self.conv(x)
        b, _, h, w = y.shape
        poses = y[:, : self.types * POSE].reshape(b, self.types, POSE, h, w)
        return poses, torch.sigmoid(y[:, self.types * POSE:])


def _votes(poses: Tensor, weight: Tensor) -> Tensor:
    """``poses (N, I, 4, 4)``, ``weight (I, J, 4, 4)`` -> votes ``V_ij = M_i W_ij`` parent-major, ``(N, J, I, 16)``."""
    n, i = poses.shape[:2]
    return torch.einsum("nirc,ijcd->njird", poses, weight).reshape(n, weight.shape[1], i, POSE)


class _Routed(nn.Module):
    """What the capsule layers share: EM routing of votes in float32 (float64 stays float64) with learned betas."""


    def __init__(self, out_types: int, num_iters: int, final_lambda: float, var_floor: float, normalise_cost: bool):
        super().__init__()
        self.num_iters, self.final_lambda, self.var_floor = num_iters, final_lambda, var_floor
        self.normalise_cost = normalise_cost
        self.beta_u = nn.Parameter(torch.zeros(out_types))
        self.beta_a = nn.Parameter(torch.zeros(out_types))

    def route(self, votes: Tensor, acts: Tensor, record: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Parent-major ``votes (N, J, I, 16)`` and ``acts (N, I)`` -> poses ``(N, J, 16)``, activations ``(N, J)``."""
        if votes.dtype in (torch.float16, torch.bfloat16):
            votes, acts = votes.float(), acts.float()
        n_out, n_in = votes.shape[1], votes.shape[2]
        scale = 100.0 * n_out / n_in if self.normalise_cost else 1.0  # Gritzman (2019): information per parent
        with full_precision(votes.device):
            return em_route_parent_major(votes, acts.to(votes.dtype), self.beta_u.to(votes.dtype),
                                         self.beta_a.to(votes.dtype), self.num_iters, self.final_lambda,
                                         self.var_floor, cost_scale=scale, record=record)


class ConvCaps(_Routed):
    """Convolutional capsules: every ``kernel x kernel`` window of child capsules votes for ``out_types`` parents.

    Args:
        in_types, out_types: child and parent capsule types.
        kernel, stride: the window (3) and its stride (2 for ConvCaps1, 1 for ConvCaps2).
        num_iters, final_lambda, var_floor: EM routing's (:func:`capsprobe.models.layers.em_routing`).
    """

    def __init__(self, in_types: int, out_types: int, kernel: int = 3, stride: int = 1, num_iters: int = 3,
                 final_lambda: float = 0.01, var_floor: float = 1e-3, normalise_cost: bool = False,
                 init_std: float = 0.5):
        super().__init__(out_types, num_iters, final_lambda, var_floor, normalise_cost)
        self.in_types, self.out_types, self.kernel, self.stride = in_types, out_types, kernel, stride
        # one 4x4 matrix per (kernel position, child type) -> parent type; rows of the window are position-major
        self.weight = nn.Parameter(torch.randn(kernel * kernel * in_types, out_types, 4, 4) * init_std)

    def forward(self, poses: Tensor, acts: Tensor, record: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``poses (B, T, 16, H, W)``, ``acts (B, T, H, W)`` -> ``(B, out_types, 16, H', W')``, ``(B, out_types, H',
        W')``."""
        b, t, _, h, w = poses.shape
        k, s = self.kernel, self.stride
        ho, wo = _out(h, k, s), _out(w, k, s)
        if ho < 1 or wo < 1:
            raise InvalidInputError(f"a {h}x{w} capsule map is smaller than ConvCaps' {k}x{k} kernel")
        # unfold: channel c * k*k + window position, c = type * 16 + pose entry
        pat = F.unfold(poses.reshape(b, t * POSE, h, w), k, stride=s).view(b, t, POSE, k * k, ho * wo)
        pat = pat.permute(0, 4, 3, 1, 2).reshape(b * ho * wo, k * k * t, 4, 4)  # (N, window x type, 4, 4)
        act = F.unfold(acts, k, stride=s).view(b, t, k * k, ho * wo).permute(0, 3, 2, 1).reshape(b * ho * wo, -1)
        mu, a = self.route(_votes(pat, self.weight.to(pat.dtype)), act, record)  # (N, out, 16), (N, out)
        mu = mu.view(b, ho, wo, self.out_types, POSE).permute(0, 3, 4, 1, 2)
        return mu, a.view(b, ho, wo, self.out_types).permute(0, 3, 1, 2)


class ClassCapsules(_Routed):
    """One capsule per class; every child capsule of a type votes with that type's matrix, wherever it is, and the
    scaled centre of its receptive field is added to its vote (coordinate addition).

    Args:
        in_types: child capsule types (``D``).
        num_classes: parent capsules.
        rows, cols: the scaled receptive-field centres of the child map's rows and columns, in (0, 1)
            (:func:`receptive_field_centres` divided by the input side).
        coordinate_addition: add them (the paper); False leaves the votes as they are.
    """

    def __init__(self, in_types: int, num_classes: int, rows: Tensor, cols: Tensor, num_iters: int = 3,
                 final_lambda: float = 0.01, var_floor: float = 1e-3, coordinate_addition: bool = True,
                 normalise_cost: bool = False, init_std: float = 0.5):
        super().__init__(num_classes, num_iters, final_lambda, var_floor, normalise_cost)
        self.in_types, self.num_classes = in_types, num_classes
        self.coordinate_addition = coordinate_addition
        self.weight = nn.Parameter(torch.randn(in_types, num_classes, 4, 4) * init_std)
        offset = torch.zeros(len(rows), len(cols), POSE)
        offset[:, :, 3] = rows.float().unsqueeze(1)  # entry (0, 3): the row
        offset[:, :, 7] = cols.float().unsqueeze(0)  # entry (1, 3): the column
        self.register_buffer("offset", offset, persistent=False)  # (H, W, 16)

    def votes(self, poses: Tensor) -> Tensor:
        """``poses (B, D, 16, H, W)`` -> votes ``(B, K, H * W * D, 16)`` (parent-major), children ordered (row,
        column, type)."""
        b, d, _, h, w = poses.shape
        offset: Tensor = self.offset  # type: ignore[assignment]  # a buffer
        if (h, w) != tuple(offset.shape[:2]):
            raise InvalidInputError(f"class capsules were built for a {tuple(offset.shape[:2])} map, got {(h, w)}")
        m = poses.permute(0, 3, 4, 1, 2).reshape(b, h * w, d, 4, 4)
        v = torch.einsum("nsirc,ijcd->njsird", m, self.weight.to(m.dtype)).reshape(b, self.num_classes, h * w, d, POSE)
        if self.coordinate_addition:
            v = v + offset.to(v.dtype).view(1, 1, h * w, 1, POSE)
        return v.reshape(b, self.num_classes, h * w * d, POSE)

    def forward(self, poses: Tensor, acts: Tensor, record: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """-> class poses ``(B, K, 16)`` and activations ``(B, K)``."""
        return self.route(self.votes(poses), acts.permute(0, 2, 3, 1).flatten(1), record)


class EMCapsNet(nn.Module):
    """Matrix capsules with EM routing (see the module docstring).

    Args:
        num_classes: class capsules ``K``.
        in_chans: input channels (1 for smallNORB's one image of a stereo pair, 2 for both).
        img_size: input side ``H`` or ``(H, W)``.
        conv_channels, primary_types, caps1_types, caps2_types: ``A``, ``B``, ``C``, ``D``.
        num_iters: EM iterations in every capsule layer (3).
        final_lambda: the inverse temperature the schedule approaches (0.01).
        var_floor: added to every routing variance.
        coordinate_addition: coordinate addition in the class capsules (the paper).
        init_std: standard deviation of the 4x4 transformation entries at initialisation.
        normalise_cost: scale every layer's routing cost by ``100 N_out / N_in`` (Gritzman 2019; see
            :func:`capsprobe.models.layers.em_routing`); False (the default): the paper's cost as written.
        margin_start, margin_step, margin_max: the spread loss margin, ``min(start + step * epoch, max)``.
        **kwargs: timm's extra keywords (``pretrained_cfg``, ...) are accepted and ignored.
    """

    has_poses = True
    can_decode = False

    def __init__(self, num_classes: int = 5, in_chans: int = 1, img_size: int | Sequence[int] = 32,
                 conv_channels: int = 32, primary_types: int = 32, caps1_types: int = 32, caps2_types: int = 32,
                 num_iters: int = 3, final_lambda: float = 0.01, var_floor: float = 1e-3,
                 coordinate_addition: bool = True, normalise_cost: bool = False, init_std: float = 0.5,
                 margin_start: float = 0.2, margin_step: float = 0.1, margin_max: float = 0.9, **kwargs):
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "drop_rate"):
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"EMCapsNet got unexpected keyword arguments: {sorted(kwargs)}")
        if num_iters < 1:
            raise InvalidInputError(f"num_iters must be >= 1, got {num_iters}")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, _pair(img_size)
        self.margin_start, self.margin_step, self.margin_max = margin_start, margin_step, margin_max
        self.epoch = 0
        # the spread loss's margin at this epoch, as a tensor: torch.compile reads it, it does not guard on it
        self.register_buffer("margin_now", torch.tensor(self.margin), persistent=False)
        self.layers = ((5, 2), (1, 1), (3, 2), (3, 1))  # (kernel, stride): conv1, primary, caps1, caps2
        h, w = self.img_size
        for k, s in self.layers:
            h, w = _out(h, k, s), _out(w, k, s)
        if min(h, w) < 1:
            raise InvalidInputError(f"input {self.img_size} is too small for EMCapsNet (at least 17x17)")
        rows = receptive_field_centres(self.img_size[0], self.layers) / self.img_size[0]
        cols = receptive_field_centres(self.img_size[1], self.layers) / self.img_size[1]
        self.conv1 = nn.Conv2d(in_chans, conv_channels, 5, stride=2)
        self.primary = PrimaryMatCaps(conv_channels, primary_types)
        routing: dict[str, Any] = dict(num_iters=num_iters, final_lambda=final_lambda, var_floor=var_floor,
                       normalise_cost=normalise_cost, init_std=init_std)
        self.caps1 = ConvCaps(primary_types, caps1_types, 3, 2, **routing)
        self.caps2 = ConvCaps(caps1_types, caps2_types, 3, 1, **routing)
        self.classes = ClassCapsules(caps2_types, num_classes, rows, cols, coordinate_addition=coordinate_addition,
                                     **routing)
        self.num_features = self.head_hidden_size = num_classes * POSE
        self.feature_info = [
            {"num_chs": conv_channels, "reduction": 2, "module": "conv1"},
            {"num_chs": primary_types * POSE, "reduction": 2, "module": "primary"},
            {"num_chs": caps1_types * POSE, "reduction": 4, "module": "caps1"},
            {"num_chs": caps2_types * POSE, "reduction": 4, "module": "caps2"},
            {"num_chs": num_classes * POSE, "reduction": 4, "module": "classes"},
        ]

    @property
    def num_iters(self) -> int:
        return self.classes.num_iters

    @property
    def margin(self) -> float:
        """The spread loss margin of the current epoch."""
        return min(self.margin_start + self.margin_step * self.epoch, self.margin_max)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before every epoch (0-based): sets the spread loss margin."""
        self.epoch = int(epoch)
        margin: Tensor = self.margin_now  # type: ignore[assignment]  # a buffer
        with torch.no_grad():
            margin.fill_(self.margin)

    def capsule_loss(self, scores: Tensor, targets: Tensor) -> Tensor:
        """The spread loss on the class activations at this epoch's margin."""
        margin: Tensor = self.margin_now  # type: ignore[assignment]  # a buffer
        return spread_loss(scores, targets, margin)

    def _check(self, x: Tensor) -> None:
        if x.shape[1:] != (self.in_chans, *self.img_size):
            raise InvalidInputError(f"EMCapsNet was built for inputs (B, {self.in_chans}, {self.img_size[0]}, "
                                    f"{self.img_size[1]}), got {tuple(x.shape)}")

    def capsule_maps(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Every capsule layer's ``(poses, activations)``: ``primary``, ``caps1``, ``caps2`` as ``(B, T, 16, H, W)``
        and ``(B, T, H, W)``, ``classes`` as ``(B, K, 16)`` and ``(B, K)``."""
        self._check(x)
        p = self.primary(F.relu(self.conv1(x)))
        c1 = self.caps1(*p)
        c2 = self.caps2(*c1)
        return {"primary": p, "caps1": c1, "caps2": c2, "classes": self.classes(*c2)}

    def class_capsules(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(B, C, H, W)`` -> class poses ``(B, K, 16)`` and activations ``(B, K)``."""
        return self.capsule_maps(x)["classes"]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images -> class poses ``(B, K, 16)`` (the activations: :meth:`class_capsules`)."""
        return self.class_capsules(x)[0]

    def pose_matrices(self, x: Tensor) -> Tensor:
        """Images -> class pose matrices ``(B, K, 4, 4)``."""
        return self.forward_features(x).unflatten(-1, (4, 4))

    def forward_head(self, poses: Tensor, pre_logits: bool = False) -> Tensor:
        """Poses ``(B, K, 16)`` -> flattened with ``pre_logits``; the activations cannot be had from the poses
        alone (they come out of the routing beside them): use :meth:`forward`."""
        if pre_logits:
            return poses.flatten(1)
        raise RuntimeError("EMCapsNet's class activations come from routing, not from the poses: call the model")

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> class activations ``(B, K)`` in (0, 1)."""
        return self.class_capsules(x)[1]

    def probe_outputs(self, x: Tensor) -> ModelOutputs:
        """Activations as scores, flattened poses as representation, the poses ``(B, K, 16)``."""
        poses, acts = self.class_capsules(x)
        return ModelOutputs(scores=acts.float(), representation=poses.float().flatten(1), poses=poses.float())

    def probe_taps(self) -> list[tuple[str, nn.Module, Callable[[Tensor, tuple, nn.Module], dict[str, Tensor]]]]:
        """The per-layer probe's taps: ``conv1`` after its ReLU and the poses of every capsule layer."""

        def poses_of(name: str):
            return lambda out, inputs, module: {name: out[0]}

        return [("conv1", self.conv1, lambda out, inputs, module: {"conv1": torch.relu(out)}),
                *[(name, getattr(self, name), poses_of(name)) for name in ("primary", "caps1", "caps2", "classes")]]

    def convolution_stack(self) -> nn.Module:
        """Conv1, ReLU and the PrimaryCaps convolution (``capsprobe bench`` times the dense part alone)."""
        return nn.Sequential(self.conv1, nn.ReLU(), self.primary.conv)

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        raise NotImplementedError("EMCapsNet's classes are its capsules: build a new model with num_classes")

    def get_classifier(self) -> nn.Module:
        return self.classes


_CFG = dict(first_conv="conv1", classifier="classes", input_size=(1, 32, 32), num_classes=5,
            paper_ids="openreview:HJWLfGWRb")
default_cfgs = generate_default_cfgs({"capsnet_em": small_image_cfg(**_CFG),
                                      "capsnet_em_small": small_image_cfg(**_CFG)})


def _create(variant: str, pretrained: bool, **kwargs) -> EMCapsNet:
    if pretrained:
        raise RuntimeError(f"no pretrained weights exist for {variant}; train one with `capsprobe train`")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = EMCapsNet(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg_of(variant)  # type: ignore[assignment]
    return model


@register_family(EMCapsNet)
def capsnet_em(pretrained: bool = False, **kwargs) -> EMCapsNet:
    """Matrix capsules with EM routing, the paper's A=B=C=D=32: 316,394 parameters at 1x32x32 with 5 classes."""
    return _create("capsnet_em", pretrained, **kwargs)


@register_family(EMCapsNet)
def capsnet_em_small(pretrained: bool = False, **kwargs) -> EMCapsNet:
    """The paper's small EM capsule network, A=64, B=8, C=D=16: 67,154 parameters at 1x32x32 with 5 classes."""
    args = dict(conv_channels=64, primary_types=8, caps1_types=16, caps2_types=16)
    return _create("capsnet_em_small", pretrained, **{**args, **kwargs})
