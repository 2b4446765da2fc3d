"""One backbone, swappable heads: routing algorithms side by side, as SR-CapsNet compares them.

Paper: Taeyoung Hahn, Myeongjang Pyeon, Gunhee Kim, "Self-Routing Capsule Networks", NeurIPS 2019 (code:
coder3000/SR-CapsNet). Everything but the last layers is held fixed: one convolutional backbone, then a head.

Backbone (SR-CapsNet's, the CIFAR ResNet of He et al. 2016, section 4.2): a 3x3 convolution of ``planes`` channels,
batch norm, ReLU, then three stages of basic blocks of ``planes``, ``2 planes``, ``4 planes`` channels at strides 1, 2,
2, with parameter-free shortcuts (subsample and zero-pad the channels: He et al.'s option A). ``blocks=(3, 3, 3)``
is ResNet-20 (SR-CapsNet's); a 28x28 input leaves a 7x7 map, 32x32 an 8x8 one.

Capsule heads read the map through primary capsules, ``A`` types of ``D``-vectors at every position: a 3x3
convolution to ``A D`` pose channels and batch norm (and, for the heads that route on activations, a 3x3 convolution
to ``A`` channels, batch norm and a sigmoid), so ``N_in = A h w`` capsules. The class layer holds one transformation
per (input capsule, class) pair, as SR-CapsNet's class layer (a capsule convolution whose kernel covers the map)
does; votes ``u_hat_j|i = u_i W_ij`` are routed to ``K`` class capsules:

=============  ==============================================================================  =====================
head           routing (:mod:`capsprobe.models.layers`)                                         class score
=============  ==============================================================================  =====================
``dynamic``    routing by agreement, 3 iterations, squashed primaries (Sabour et al. 2017)      capsule length
``em``         EM routing, 3 iterations, 4x4 pose matrices (Hinton et al. 2018)                 activation
``self``       self-routing: each input capsule's routing network gives its couplings          activation (they sum
               (Hahn et al. 2019, with pose output at the class layer so that the head has      to 1 over classes)
               poses)
``attention``  Efficient-CapsNet's self-attention routing and squash (Mazzia et al. 2021)      capsule length
``inverted``   inverted dot-product attention routing, 2 iterations, layer norm (Tsai et al.    softmax of a linear
               2020)                                                                            map of each pose
=============  ==============================================================================  =====================

CNN heads (SR-CapsNet's baselines; ``hidden > 0`` adds a hidden layer of that width, ReLU, before the classifier, the
knob that matches their parameters to the capsule heads'):

- ``avg``: global average pooling, then a linear classifier;
- ``max``: global max pooling, then a linear classifier;
- ``fc``: a 3x3 convolution to ``A D`` channels, batch norm, ReLU, flattened, then a linear classifier (SR-CapsNet's
  "FC");
- ``conv``: the same convolution, then a 1x1 convolution to ``K`` channels (to ``hidden`` and then ``K`` with a
  hidden layer) and global average pooling (an all-convolutional classifier; SR-CapsNet's code has no conv head, so
  this is capsprobe's reading of the paper's "Conv").

Every head trains with one loss, SR-CapsNet's: the negative log of the true class's share of the scores,
``-log(s_t / sum_k s_k)`` (cross entropy on the logits for the CNN heads and for ``inverted``, whose scores are a
softmax). The capsule heads expose their class-capsule poses ``(B, K, D_out)`` to the probe; :func:`head_costs`
gives every head's parameters and forward FLOPs, the two budgets a comparison can be matched on.

The ``self`` head's poses are untrained (``BackboneHeadNet.poses_trained`` is False): its scores are the routed
activations, which never read the votes, and no head has a decoder, so the vote matrices ``W_ij`` get no gradient and
its class poses stay projections by their random initial matrices. SR-CapsNet's class layer computes activations
alone (its poses exist only in the hidden capsule layers, where the next layer's routing network reads them); the
pose output is capsprobe's, so that the head has poses at all. A decoder on the true-class pose would reach them,
but it would add a reconstruction term to this head's loss alone, where every head trains with SR-CapsNet's one
loss and a reconstruction term also shapes the backbone (it regularises: Sabour et al. 2017, section 4.1 and
Table 1), and so confound the comparison of routings. The probe leaves out the pose and representation metrics of a model whose poses are
untrained and its manifest says which (:mod:`capsprobe.probe.engine`).

Each head is one :class:`Head` (its layers, its forward or its primaries and routing, its routing iterations, its
pose size) in a registry beside the routing one; :class:`BackboneHeadNet` dispatches through it, so a new head is one
:func:`register_head` call and no edit here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._cfg import cfg_of, register_family, small_image_cfg
from .adapter import ModelOutputs
from .capsnet import _pair
from .components import _lookup, get_capsule_loss, get_routing
from .costs import model_costs
from .layers import (
    attention_routing,
    capsule_lengths,
    efficient_squash,
    em_route_parent_major,
    fast_kernels_apply,
    full_precision,
    inverted_dot_product_routing,
    self_routing,
    squash,
)

__all__ = ["CAPSULE_HEADS", "CNN_HEADS", "HEADS", "BackboneHeadNet", "Head", "ResNetBackbone", "get_head",
           "head_costs", "list_heads", "register_head", "unregister_head"]


class _Shortcut(nn.Module):
    """He et al.'s option A: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class _BasicBlock(nn.Module):
    def __init__(self, width_in: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width_in, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut: nn.Module = (_Shortcut(stride, width - width_in) if stride != 1 or width != width_in
                                    else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """SR-CapsNet's backbone (see the module docstring): ``(B, C, H, W) -> (B, 4 planes, ceil(H / 4), ceil(W / 4))``.

    Args:
        in_chans: input channels.
        planes: the first stage's width.
        blocks: basic blocks per stage ((3, 3, 3): ResNet-20).
    """

    def __init__(self, in_chans: int = 1, planes: int = 16, blocks: Sequence[int] = (3, 3, 3)):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 3 or min(blocks) < 1 or planes < 1:
            raise InvalidInputError(f"blocks must be three counts >= 1 and planes >= 1, got {blocks!r}, {planes}")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes),
                                  nn.ReLU(inplace=True))
        stages, width = [], planes
        for i, n in enumerate(blocks):
            out = planes * 2 ** i
            stages.append(nn.Sequential(*[_BasicBlock(width if j == 0 else out, out, (1 if i == 0 else 2) if j == 0
                                                      else 1) for j in range(n)]))
            width = out
        self.stages = nn.Sequential(*stages)
        self.out_channels = width

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


def _conv_bn(width_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))


def _capsules(maps: Tensor, types: int) -> Tensor:
    """``(B, A D, h, w)`` (channel ``a D + d`` is component ``d`` of type ``a``) -> ``(B, h w A, D)``."""
    b, c, h, w = maps.shape
    return maps.view(b, types, c // types, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * types, c // types)



# --- the head registry: each head is one registered Head, which BackboneHeadNet dispatches through ---------------

Net = Any  # a BackboneHeadNet: a head adds its own layers to the model, so its functions take the model untyped


def _pair_votes(model: Net, poses: Tensor) -> Tensor:
    """Each pose vector times the pair's matrix, ``u_i W_ij``: ``(B, N_in, D)`` -> ``(B, K, N_in, D_out)``."""
    return torch.einsum("bid,jide->bjie", poses, model.weight.to(poses.dtype))


@dataclass(frozen=True)
class Head:
    """One head of :class:`BackboneHeadNet`, registered by name with :func:`register_head` (the same name -> entry
    table as the routing registry of :mod:`capsprobe.models.components`).

    A CNN head gives ``forward``; a capsule head gives ``primary`` and ``route`` (and ``votes`` where a vote is not
    ``u_i W_ij``), and the model runs primaries -> votes -> routing, the routing in float32.

    Attributes:
        name: the registry name, ``BackboneHeadNet(head=name)``.
        build: ``(model, width) -> pre-logits width``: adds the head's layers to ``model``, which reads the backbone's
            ``width``-channel map; ``model.caps_types``, ``pose_dim``, ``out_dim``, ``num_classes``, ``hidden`` and
            ``num_in`` are set. A capsule head's ``build`` must add the module named by ``pose_layer``: the layer
            that maps ``(B, width, h, w)`` to the ``caps_types x pose_dim`` primary pose channels.
        forward: a CNN head's ``(model, maps (B, C, h, w)) -> (logits (B, K), classifier input (B, F))``.
        primary: a capsule head's ``(model, raw (B, N_in, D), maps) -> (poses (B, N_in, D), activations (B, N_in)
            or None)``.
        route: a capsule head's ``(model, votes (B, K, N_in, D_out) float32, poses, activations) -> (class poses
            (B, K, D_out), scores (B, K))``.
        votes: ``(model, poses (B, N_in, D)) -> votes (B, K, N_in, D_out)``; default one matrix per pair.
        num_iters: the default routing iterations; None: the head has none (``num_iters`` is refused).
        pose_dim: the pose dimension the head requires of its primaries and class capsules (``em``: 16); None: any.
        classifier: the module timm's config names as the classifier (``get_classifier`` falls back to the
            ``pose_layer`` of a capsule head that has no module of that name).
        pose_layer: a capsule head's module of primary poses, read by
            :meth:`BackboneHeadNet.primary_capsules` (``build`` adds it).
        poses_trained: a capsule head's class poses are reached by its training loss (through its scores, which
            ``route`` computes from the votes); False where the scores never read the votes (``self``): the vote
            matrices then keep their initial values, and the probe leaves the poses out.
    """

    name: str
    build: Callable[[Net, int], int]
    forward: Callable[[Net, Tensor], tuple[Tensor, Tensor]] | None = None
    primary: Callable[[Net, Tensor, Tensor], tuple[Tensor, Tensor | None]] | None = None
    route: Callable[[Net, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]] | None = None
    votes: Callable[[Net, Tensor], Tensor] = _pair_votes
    num_iters: int | None = None
    pose_dim: int | None = None
    classifier: str = "classifier"
    pose_layer: str = "conv_pose"
    poses_trained: bool = True

    @property
    def capsule(self) -> bool:
        """The head routes capsules and exposes class poses (else a CNN head)."""
        return self.route is not None

    def __post_init__(self):
        if (self.forward is None) == (self.route is None) or (self.route is not None and self.primary is None):
            raise InvalidInputError(f"head {self.name!r} needs forward (a CNN head) or primary and route (a capsule "
                                    "head)")


_HEADS: dict[str, Head] = {}


def register_head(head: Head) -> Head:
    """Register ``head`` under ``head.name``; ``BackboneHeadNet(head=head.name)`` then builds it."""
    _HEADS[head.name] = head
    return head


def unregister_head(name: str) -> None:
    _HEADS.pop(name, None)


def get_head(name: str) -> Head:
    """The head registered as ``name`` (``dynamic``, ``avg``, ...)."""
    return _lookup(_HEADS, "head", name)


def list_heads() -> list[str]:
    return sorted(_HEADS)


# --- the CNN heads ------------------------------------------------------------------------------------------------


def _classifier(model: Net, features: int) -> int:
    """An optional hidden layer (``hidden``) and the linear classifier on ``features``; the pre-logits width."""
    hid = model.hidden
    model.hidden_layer = nn.Linear(features, hid) if hid else None
    model.classifier = nn.Linear(hid or features, model.num_classes)
    return hid or features


def _classify(model: Net, y: Tensor) -> tuple[Tensor, Tensor]:
    y = F.relu(model.hidden_layer(y)) if model.hidden_layer is not None else y
    return model.classifier(y), y


def _build_fc(model: Net, width: int) -> int:
    model.conv = _conv_bn(width, model.caps_types * model.pose_dim)
    h, w = model.map_size
    return _classifier(model, model.caps_types * model.pose_dim * h * w)


def _build_conv(model: Net, width: int) -> int:
    conv_width, hid = model.caps_types * model.pose_dim, model.hidden
    model.conv = _conv_bn(width, conv_width)
    model.pointwise = nn.Conv2d(conv_width, hid, 1) if hid else None
    model.classifier = nn.Conv2d(hid or conv_width, model.num_classes, 1)
    return hid or conv_width


def _conv_forward(model: Net, maps: Tensor) -> tuple[Tensor, Tensor]:
    """A 1x1 convolution to K channels, then global average pooling (the features pooled too)."""
    y = F.relu(model.conv(maps))
    if model.pointwise is not None:
        y = F.relu(model.pointwise(y))
    return model.classifier(y).mean(dim=(2, 3)), y.mean(dim=(2, 3))


register_head(Head("avg", _classifier, lambda m, maps: _classify(m, maps.mean(dim=(2, 3)))))
register_head(Head("max", _classifier, lambda m, maps: _classify(m, maps.amax(dim=(2, 3)))))
register_head(Head("fc", _build_fc, lambda m, maps: _classify(m, F.relu(m.conv(maps)).flatten(1))))
register_head(Head("conv", _build_conv, _conv_forward))


# --- the capsule heads --------------------------------------------------------------------------------------------


def _primary_layers(model: Net, width: int, activations: bool = False) -> None:
    """Pose convolution (and, for heads that route on activations, the activation convolution)."""
    model.conv_pose = _conv_bn(width, model.caps_types * model.pose_dim)
    if activations:
        model.conv_a = _conv_bn(width, model.caps_types)


def _pair_weight(model: Net) -> int:
    """One ``D x D_out`` matrix per (input capsule, class) pair, ``(K, N_in, D, D_out)``; the pre-logits width."""
    k, n, d, e = model.num_classes, model.num_in, model.pose_dim, model.out_dim
    model.weight = nn.Parameter(torch.empty(k, n, d, e))
    nn.init.kaiming_uniform_(model.weight.view(k * n, d, e))
    return k * e


def _activations(model: Net, maps: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> sigmoid activations ``(B, h w A)``, ordered as the capsules."""
    return torch.sigmoid(model.conv_a(maps)).permute(0, 2, 3, 1).reshape(maps.shape[0], -1)


def _build_dynamic(model: Net, width: int) -> int:
    _primary_layers(model, width)
    return _pair_weight(model)


def _route_dynamic(model: Net, votes: Tensor, poses: Tensor, act: Tensor | None) -> tuple[Tensor, Tensor]:
    routing: Any = get_routing("dynamic")  # routing by agreement, with the fused kernels' switch
    v = routing(votes, model.num_iters, False, squash, fused=fast_kernels_apply(model))
    return v, capsule_lengths(v)


def _build_em(model: Net, width: int) -> int:
    _primary_layers(model, width, activations=True)
    k, n = model.num_classes, model.num_in
    model.weight = nn.Parameter(torch.randn(k, n, 4, 4) * 0.5)  # EMCapsNet's init_std
    model.beta_u = nn.Parameter(torch.zeros(k))
    model.beta_a = nn.Parameter(torch.zeros(k))
    return k * model.out_dim


def _matrix_votes(model: Net, poses: Tensor) -> Tensor:
    """Each 4x4 pose matrix times the pair's 4x4 transformation, ``M_i W_ij``."""
    mats = poses.view(poses.shape[0], model.num_in, 4, 4)
    return torch.einsum("bixy,jiyz->bjixz", mats, model.weight.to(poses.dtype)).flatten(3)


def _route_em(model: Net, votes: Tensor, poses: Tensor, act: Tensor | None) -> tuple[Tensor, Tensor]:
    assert act is not None
    return em_route_parent_major(votes, act.float(), model.beta_u, model.beta_a, model.num_iters)


def _build_self(model: Net, width: int) -> int:
    _primary_layers(model, width, activations=True)
    out = _pair_weight(model)
    n, k, d = model.num_in, model.num_classes, model.pose_dim
    # the routing network, zeros at the start as in the authors' code (uniform couplings)
    model.route_weight = nn.Parameter(torch.zeros(n, k, d))
    model.route_bias = nn.Parameter(torch.zeros(n, k))
    return out


def _route_self(model: Net, votes: Tensor, poses: Tensor, act: Tensor | None) -> tuple[Tensor, Tensor]:
    assert act is not None
    logits = torch.einsum("bid,ijd->bji", poses.float(), model.route_weight) + model.route_bias.t()
    u, a_out = self_routing(votes, logits, act.float())
    assert u is not None
    return u, a_out


def _build_attention(model: Net, width: int) -> int:
    _primary_layers(model, width)
    out = _pair_weight(model)
    model.prior = nn.Parameter(torch.zeros(model.num_classes, model.num_in))
    return out


def _route_attention(model: Net, votes: Tensor, poses: Tensor, act: Tensor | None) -> tuple[Tensor, Tensor]:
    v = efficient_squash(attention_routing(votes, model.prior))
    return v, capsule_lengths(v)


def _build_inverted(model: Net, width: int) -> int:
    _primary_layers(model, width)
    out = _pair_weight(model)
    model.primary_norm = nn.LayerNorm(model.pose_dim)
    model.pose_norm = nn.LayerNorm(model.out_dim)
    model.classifier = nn.Linear(model.out_dim, 1)  # shared by the classes
    return out


def _route_inverted(model: Net, votes: Tensor, poses: Tensor, act: Tensor | None) -> tuple[Tensor, Tensor]:
    p = inverted_dot_product_routing(votes, model.num_iters, model.pose_norm)
    return p, model.classifier(p).squeeze(-1).softmax(dim=-1)


register_head(Head("dynamic", _build_dynamic, primary=lambda m, raw, maps: (squash(raw), None), route=_route_dynamic,
                   num_iters=3, classifier="conv_pose"))
register_head(Head("em", _build_em, primary=lambda m, raw, maps: (raw, _activations(m, maps)), route=_route_em,
                   votes=_matrix_votes, num_iters=3, pose_dim=16, classifier="conv_pose"))
register_head(Head("self", _build_self, primary=lambda m, raw, maps: (raw, _activations(m, maps)), route=_route_self,
                   classifier="conv_pose", poses_trained=False))  # scores from activations, no decoder
register_head(Head("attention", _build_attention, primary=lambda m, raw, maps: (efficient_squash(raw), None),
                   route=_route_attention, classifier="conv_pose"))
register_head(Head("inverted", _build_inverted, primary=lambda m, raw, maps: (m.primary_norm(raw), None),
                   route=_route_inverted, num_iters=2))

CNN_HEADS = ("avg", "max", "fc", "conv")
CAPSULE_HEADS = ("dynamic", "em", "self", "attention", "inverted")
HEADS = CNN_HEADS + CAPSULE_HEADS  # the built-in heads, each a timm model backbone_head_<head>


class BackboneHeadNet(nn.Module):
    """The backbone and one head (see the module docstring), dispatched through the head's registered :class:`Head`.

    Args:
        head: a registered head (:func:`list_heads`; the built-in ones are :data:`HEADS`).
        num_classes: classes ``K``.
        in_chans: input channels.
        img_size: input side ``H`` or ``(H, W)``.
        planes, blocks: the backbone (:class:`ResNetBackbone`).
        caps_types: primary capsule types ``A`` (also the ``fc`` and ``conv`` heads' convolution is ``A D`` wide).
        pose_dim: primary capsule dimension ``D`` (16 for ``em``: 4x4 matrices).
        out_dim: class capsule dimension (``em``: ``pose_dim``).
        num_iters: routing iterations (``dynamic`` 3, ``em`` 3, ``inverted`` 2 when None; ``self`` and
            ``attention`` have none).
        hidden: a CNN head's hidden width (0: none).
        loss: the capsule heads' loss on their scores (``nll``, SR-CapsNet's; ``margin`` for length heads).
        **kwargs: timm's extra keywords are accepted and ignored.
    """

    fast_kernels: bool = True  # the dynamic head's training steps route through one autograd node (False: eager)

    def __init__(self, head: str = "dynamic", num_classes: int = 10, in_chans: int = 1,
                 img_size: int | Sequence[int] = 28, planes: int = 16, blocks: Sequence[int] = (3, 3, 3),
                 caps_types: int = 8, pose_dim: int = 16, out_dim: int = 16, num_iters: int | None = None,
                 hidden: int = 0, loss: str = "nll", **kwargs):
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "drop_rate"):
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"BackboneHeadNet got unexpected keyword arguments: {sorted(kwargs)}")
        spec = get_head(head)
        if min(caps_types, pose_dim, out_dim) < 1 or hidden < 0:
            raise InvalidInputError("caps_types, pose_dim and out_dim must be >= 1 and hidden >= 0")
        if spec.pose_dim is not None:
            if pose_dim != spec.pose_dim:
                raise InvalidInputError(f"the {head} head's poses have {spec.pose_dim} components (em: 4x4 matrices): "
                                        f"pose_dim must be {spec.pose_dim}, got {pose_dim}")
            out_dim = spec.pose_dim
        if hidden and spec.capsule:
            raise InvalidInputError(f"hidden is a CNN head's option; the {head} head takes none")
        if num_iters is not None and spec.num_iters is None:
            raise InvalidInputError(f"the {head} head has no routing iterations (num_iters)")
        self.num_iters = int(num_iters if num_iters is not None else spec.num_iters or 0)
        if spec.num_iters is not None and self.num_iters < 1:
            raise InvalidInputError(f"num_iters must be >= 1, got {self.num_iters}")
        get_capsule_loss(loss)
        self.head, self.loss, self.num_classes, self.in_chans = head, loss, num_classes, in_chans
        self.img_size = _pair(img_size)
        self.caps_types, self.pose_dim, self.out_dim, self.hidden = caps_types, pose_dim, out_dim, hidden
        self.has_poses = spec.capsule
        # False: no training loss reaches the class poses (nor the representation, their flattening): see the module
        self.poses_trained = spec.poses_trained
        self.backbone = ResNetBackbone(in_chans, planes, blocks)
        h, w = (-(-s // 4) for s in self.img_size)
        self.map_size = (h, w)
        self.num_in = caps_types * h * w
        self._pre_logits = spec.build(self, self.backbone.out_channels)
        self.num_features = self.head_hidden_size = (num_classes * out_dim if self.has_poses else self._pre_logits)
        self.feature_info = [{"num_chs": planes * 2 ** i, "reduction": 2 ** i, "module": f"backbone.stages.{i}"}
                             for i in range(3)]

    @property
    def head_spec(self) -> Head:
        """The registered :class:`Head` this model dispatches through."""
        return get_head(self.head)

    # --- the forward pass -----------------------------------------------------------------------------------------

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> the backbone's map ``(B, 4 planes, h, w)``."""
        if x.shape[1:] != (self.in_chans, *self.img_size):
            raise InvalidInputError(f"BackboneHeadNet was built for inputs (B, {self.in_chans}, {self.img_size[0]}, "
                                    f"{self.img_size[1]}), got {tuple(x.shape)}")
        return self.backbone(x)

    def primary_capsules(self, maps: Tensor) -> tuple[Tensor, Tensor | None]:
        """The backbone's map -> primary poses ``(B, N_in, D)`` and activations ``(B, N_in)`` (None where the head
        routes on poses alone)."""
        primary = self.head_spec.primary
        assert primary is not None, f"the {self.head} head has no capsules"
        layer = getattr(self, self.head_spec.pose_layer)  # the head's layers are the head's, not the class's
        return primary(self, _capsules(layer(maps), self.caps_types), maps)

    def votes(self, poses: Tensor) -> Tensor:
        """Primary poses ``(B, N_in, D)`` -> votes ``(B, K, N_in, D_out)`` (parent-major)."""
        return self.head_spec.votes(self, poses)

    def capsule_head(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """The backbone's map -> class poses ``(B, K, D_out)`` and class scores ``(B, K)``; routed in float32."""
        route = self.head_spec.route
        assert route is not None, f"the {self.head} head has no capsules"
        poses, act = self.primary_capsules(maps)
        votes = self.votes(poses)
        with full_precision(maps.device):
            return route(self, votes.float(), poses, act)

    def _cnn_head(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """A CNN head: logits ``(B, K)`` and the classifier's input ``(B, F)`` (the conv head's pooled over the map)."""
        forward = self.head_spec.forward
        assert forward is not None, f"the {self.head} head is a capsule head"
        return forward(self, maps)

    def forward_head(self, maps: Tensor, pre_logits: bool = False) -> Tensor:
        """The backbone's map -> class scores ``(B, K)`` (a capsule head's scores; a CNN head's logits); with
        ``pre_logits`` the flattened class poses (capsule heads) or the classifier's input (CNN heads)."""
        if self.has_poses:
            poses, scores = self.capsule_head(maps)
            return poses.flatten(1) if pre_logits else scores
        logits, features = self._cnn_head(maps)
        return features if pre_logits else logits

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def probe_outputs(self, x: Tensor) -> ModelOutputs:
        """Capsule heads: their scores, flattened poses and poses; CNN heads: softmax scores, logits, pre-logits."""
        maps = self.forward_features(x)
        if self.has_poses:
            poses, scores = self.capsule_head(maps)
            return ModelOutputs(scores=scores.float(), representation=poses.flatten(1).float(), poses=poses.float())
        logits, features = self._cnn_head(maps)
        logits = logits.float()
        return ModelOutputs(scores=logits.softmax(dim=-1), representation=features.float(), logits=logits)

    def capsule_loss(self, scores: Tensor, targets: Tensor) -> Tensor:
        """The training loss of a capsule head on its scores (``loss``)."""
        return get_capsule_loss(self.loss)(scores, targets)

    def probe_taps(self) -> list[tuple[str, nn.Module, Callable[[Tensor, tuple, nn.Module], dict[str, Tensor]]]]:
        """The per-layer probe's taps: the backbone's output map."""
        return [("backbone", self.backbone, lambda out, inputs, module: {"backbone": out})]

    def convolution_stack(self) -> nn.Module:
        """The backbone (``capsprobe bench`` times it alone)."""
        return self.backbone

    def get_classifier(self) -> nn.Module:
        spec = self.head_spec
        if spec.capsule and not hasattr(self, spec.classifier):
            return getattr(self, spec.pose_layer)
        return getattr(self, spec.classifier)

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        raise NotImplementedError("build a new BackboneHeadNet with num_classes")


def head_costs(model: BackboneHeadNet) -> dict[str, Any]:
    """Parameters (all, backbone, head) and forward FLOPs per image (:func:`capsprobe.models.costs.model_costs`) of
    one model at its input size."""
    costs = model_costs(model, (model.in_chans, *model.img_size))
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {"head": model.head, "params": costs["params"], "backbone_params": backbone,
            "head_params": costs["params"] - backbone, "flops": costs["flops"]}


default_cfgs = generate_default_cfgs({f"backbone_head_{h}": small_image_cfg(
    first_conv="backbone.stem.0", classifier=get_head(h).classifier,
    paper_ids="SR-CapsNet (Hahn et al., NeurIPS 2019)") for h in HEADS})


def _create(head: str, pretrained: bool, kwargs: dict) -> BackboneHeadNet:
    if pretrained:
        raise RuntimeError(f"no pretrained weights exist for backbone_head_{head}; train one with `capsprobe train`")
    if "head" in kwargs:
        raise InvalidInputError(f"backbone_head_{head} is the {head} head: choose another backbone_head_* model "
                                "instead of passing head")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = BackboneHeadNet(head=head, **kwargs)
    model.pretrained_cfg = model.default_cfg = cfg_of(f"backbone_head_{head}")  # type: ignore[assignment]
    return model


@register_family(BackboneHeadNet)
def backbone_head_avg(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone, global average pooling and a linear classifier."""
    return _create("avg", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_max(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone, global max pooling and a linear classifier."""
    return _create("max", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_fc(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone, a 3x3 convolution and a linear classifier on the flattened map."""
    return _create("fc", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_conv(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone, a 3x3 and a 1x1 convolution and global average pooling."""
    return _create("conv", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_dynamic(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone, primary capsules and class capsules routed by agreement (Sabour et al. 2017)."""
    return _create("dynamic", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_em(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone, matrix capsules and EM routing (Hinton et al. 2018)."""
    return _create("em", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_self(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone and self-routing (Hahn et al. 2019)."""
    return _create("self", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_attention(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone and Efficient-CapsNet's self-attention routing (Mazzia et al. 2021)."""
    return _create("attention", pretrained, kwargs)


@register_family(BackboneHeadNet)
def backbone_head_inverted(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """SR-CapsNet's backbone and inverted dot-product attention routing (Tsai et al. 2020)."""
    return _create("inverted", pretrained, kwargs)
