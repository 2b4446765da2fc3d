"""Group-equivariant CNNs: the convnet whose feature maps turn with the image by construction (a known answer).

Papers: Cohen & Welling, "Group Equivariant Convolutional Networks", ICML 2016 (arXiv:1602.07576); Weiler & Cesa,
"General E(2)-Equivariant Steerable CNNs", NeurIPS 2019 (arXiv:1911.08251), whose library ``e2cnn`` builds the
layers. Registered in timm as ``gcnn_c4`` (rotations by 90 degrees), ``gcnn_c8`` (by 45 degrees) and ``gcnn_d4``
(rotations by 90 degrees and reflections), one family with a ``group`` option.

Architecture (``fields = (n_1, ..., n_L)``): the input's channels are scalar (trivial) fields; stage ``i`` is an
equivariant 5x5 convolution to ``n_i`` regular fields (``|G|`` channels each, one per group element), an equivariant
batch norm and a ReLU; 2x2-style max pooling follows every stage but the last. Then:

- ``representation`` ``(B, n_L * |G|)``: the last fields averaged over space but **not** over the group. A group
  element ``g`` acting on the input permutes each field's ``|G|`` numbers by the regular representation: for C4 and C8
  a quarter turn ``torch.rot90(x, 1, dims=(-2, -1))`` rolls each field by ``+|G| / 4`` (:func:`quarter_turn_shift`),
  the exact analogue of a pose vector; :func:`field_permutation` gives the permutation of any element.
- the invariant features ``(B, n_L)``: each field's maximum over the group (Cohen & Welling's group pooling);
- the scores: an MLP head on the invariant features (``hidden``), so the logits do not move under the group.

The per-layer probe reads (``probe_taps``) the spatial fields after each stage's ReLU (``fields 1`` ...) and the
invariant features (``invariant``).

Convention (the grid): a quarter turn of a 28 x 28 image turns about ``(13.5, 13.5)``, a point between pixels. Every
operation keeps that centre: convolutions are stride 1 with SAME padding (odd kernels), pooling takes 2x2 windows
on a side of even length and 3x3 windows at stride 2 with padding 1 on an odd one (28 -> 14 -> 7 -> 4), and the last
map is averaged over all of it. Padding 28 to 29 on one side would move the centre by half a pixel: the padded turn
is then a turn *and a shift*, and exactness is lost. So for any square input the logits are unchanged and the
representation permuted under ``torch.rot90`` (and, for D4, ``torch.flip``) to float rounding (measured in
tests/models/test_gcnn.py); C8's 45-degree turns are not permutations of the pixel grid and hold only
approximately.

Weights: the model trains e2cnn's basis coefficients, but its ``state_dict`` is that of :meth:`GCNN.export`, an
:class:`ExportedGCNN` of plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` (e2cnn's ``export()``), so ``model.safetensors``
holds ordinary tensors that load without e2cnn. ``load_state_dict`` projects each plain filter back on the
equivariant basis (least squares, float64) and refuses one that is not in its span (relative residual above
``1e-4``): a file cannot make the model lose its symmetry.

The seam: everything this module asks of the equivariance library goes through :class:`E2CNN` (``library()``):
a group's space, field types, convolution, batch norm, the regular representation, and the numpy-2 fixes below.
escnn (e2cnn's successor, the same API under ``escnn.gspaces.rot2dOnR2`` / ``flipRot2dOnR2``) replaces it with
one class of the same methods. ``e2cnn`` 0.2.3 hashes kernel bases with ``ndarray.tostring``, removed in numpy 2:
D4 bases fail to build without the fix (``tobytes``, the same bytes); its kernel utilities call
``np.array(x, copy=False)``, which numpy 2 refuses where numpy 1 copied (given ``np.asarray``, numpy 1's meaning).

Parameters and cost at 1x28x28, 10 classes (``capsprobe.models.model_costs``; see docs/models.md):
matched to ``capsnet_small``'s encoder (705,728) and ``baseline_cnn_pool`` with channels 64-64-32 (736,906).
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._cfg import cfg_of, register_family, small_image_cfg
from .adapter import ModelOutputs

__all__ = ["E2CNN", "GCNN", "GROUPS", "ExportedGCNN", "field_permutation", "gcnn_c4", "gcnn_c8", "gcnn_d4",
           "library", "quarter_turn_shift"]

# group -> (rotations N, with reflections): |G| = N, or 2N with reflections
GROUPS: dict[str, tuple[int, bool]] = {"c4": (4, False), "c8": (8, False), "d4": (4, True)}
# default fields per stage: about 0.7M parameters each (matched to capsnet_small's encoder and baseline_cnn_pool)
DEFAULT_FIELDS: dict[str, tuple[int, ...]] = {"c4": (16, 32, 96, 128), "c8": (8, 24, 64, 96), "d4": (8, 24, 64, 96)}
PROJECTION_TOLERANCE = 1e-4  # a loaded filter's relative distance from the equivariant basis's span


def group_order(group: str) -> int:
    """``|G|``: the channels of one regular field."""
    n, flips = _group(group)
    return n * (2 if flips else 1)


def _group(group: str) -> tuple[int, bool]:
    if group not in GROUPS:
        raise InvalidInputError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    return GROUPS[group]


# --- the seam: the one place that touches the equivariance library -------------------------------------------------


def _hash_fixed(self) -> int:
    """e2cnn's kernel-basis hash with ``tobytes`` for numpy 2 (``tostring`` was its alias, removed)."""
    def h(v: Any) -> int:
        return hash(v.tobytes()) if isinstance(v, np.ndarray) else hash(v)
    return hash(self.in_irrep) + hash(self.out_irrep) + h(self.mu) + h(self.gamma)


class _NumpyOne:
    """numpy as e2cnn's kernel utilities expect it: numpy 1's ``np.array(x, copy=False)`` copied when it had to
    (numpy 2 raises instead)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def array(obj: Any, *args, copy: bool | None = True, **kwargs) -> np.ndarray:
        return np.asarray(obj, *args, **kwargs) if copy is False else np.array(obj, *args, copy=copy, **kwargs)


class E2CNN:
    """What a G-CNN asks of its equivariance library, answered by ``e2cnn`` (Weiler & Cesa 2019)."""

    name = "e2cnn"

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from e2cnn import gspaces
            from e2cnn import nn as enn
            from e2cnn.kernels import irreps_basis
            from e2cnn.kernels import utils as kernel_utils
        kernel_utils.np = _NumpyOne()  # numpy 2: np.array(copy=False) raises where a copy is needed
        for name in ("R2FlipsSolution", "R2ContinuousRotationsSolution", "R2FlipsDiscreteRotationsSolution",
                     "R2FlipsContinuousRotationsSolution"):
            cls = getattr(irreps_basis, name, None)
            if cls is not None:
                cls.__hash__ = _hash_fixed
        self.gspaces, self.nn = gspaces, enn

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one library object for the process
    def gspace(self, group: str) -> Any:
        n, flips = _group(group)
        return self.gspaces.FlipRot2dOnR2(n) if flips else self.gspaces.Rot2dOnR2(n)

    def fields(self, group: str, n: int, regular: bool = True) -> Any:
        """``n`` regular fields (``|G|`` channels each), or ``n`` scalar fields."""
        gs = self.gspace(group)
        return self.nn.FieldType(gs, n * [gs.regular_repr if regular else gs.trivial_repr])

    def conv(self, in_type: Any, out_type: Any, kernel_size: int) -> nn.Module:
        """An equivariant convolution (SAME padding, stride 1) between homogeneous field types, its coefficients
        drawn with e2cnn's generalized He initialisation's deviations (:meth:`he_std`)."""
        for t in (in_type, out_type):
            if len({r.name for r in t.representations}) != 1:
                raise InvalidInputError("a G-CNN layer takes fields of one kind (all scalar or all regular)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conv = self.nn.R2Conv(in_type, out_type, kernel_size, padding=kernel_size // 2, initialize=False)
        with torch.no_grad():
            conv.weights.copy_(self.he_std(conv) * torch.randn_like(conv.weights))
        return conv

    def pair(self, conv: Any) -> Any:
        """The convolution from one field to one field of ``conv``'s kinds (its basis is every pair's)."""
        in_type, out_type = conv.in_type, conv.out_type
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.nn.R2Conv(self.nn.FieldType(in_type.gspace, in_type.representations[:1]),
                                  self.nn.FieldType(out_type.gspace, out_type.representations[:1]),
                                  conv.kernel_size, initialize=False)

    def he_std(self, conv: Any) -> Tensor:
        """Each coefficient's standard deviation under e2cnn's generalized He initialisation (Weiler & Cesa 2019),
        computed on one pair of fields: coefficients are laid out (out field, in field, basis element), and with
        ``n_in`` input fields each element's count grows ``n_in`` times, its deviation shrinks by ``sqrt(n_in)``.
        (e2cnn's own pass over every coefficient takes seconds for 0.7M of them.)"""
        from e2cnn.nn.init import _generalized_he_init_variances

        n_out, n_in = len(conv.out_type.representations), len(conv.in_type.representations)
        one = _generalized_he_init_variances(self.pair(conv).basisexpansion)
        return (one / n_in ** 0.5).repeat(n_out * n_in)

    def norm(self, field_type: Any) -> nn.Module:
        return self.nn.InnerBatchNorm(field_type)

    def tensor(self, x: Tensor, field_type: Any) -> Any:
        return self.nn.GeometricTensor(x, field_type)

    def regular_permutation(self, group: str, turns: int, flip: bool) -> np.ndarray:
        """The permutation ``p`` with ``rho_reg(g) e_j = e_(p[j])`` for ``g`` = ``turns`` quarter turns after the
        library's reflection (when ``flip``). e2cnn's generator turns as ``torch.rot90(x, 1, dims=(-2, -1))`` and
        its reflection mirrors as ``torch.flip(x, (-1,))`` (measured in tests/models/test_gcnn.py)."""
        if flip and not _group(group)[1]:
            raise InvalidInputError(f"{group} has no reflections")
        n, flips = _group(group)
        G = self.gspace(group).fibergroup
        rot = (turns * n // 4) % n
        g = (1 if flip else 0, rot) if flips else rot  # e2cnn's elements: k, or (reflection, k)
        matrix = np.asarray(G.regular_representation(g))
        return np.argmax(matrix, axis=0)

    def expand(self, conv: Any, weights: Tensor) -> Tensor:
        """The plain filter ``(C_out, C_in, k, k)`` of ``conv`` with basis coefficients ``weights``."""
        k = conv.kernel_size
        out = conv.basisexpansion(weights)
        return out.reshape(conv.out_type.size, conv.in_type.size, k, k)

    def coefficients(self, conv: Any, filt: Tensor) -> tuple[Tensor, float]:
        """The basis coefficients whose filter is closest to ``filt`` (least squares in float64, one basis shared by
        every pair of fields of a homogeneous layer, coefficients laid out (out field, in field, basis element)),
        and the relative residual ``|filt - E w| / |filt|`` of ``conv``'s own expansion (a wrong layout shows)."""
        one = self.pair(conv)
        go, gi = one.out_type.size, one.in_type.size
        n_out, n_in = len(conv.out_type.representations), len(conv.in_type.representations)
        dim = one.weights.numel()
        k = filt.shape[-1]
        filt = filt.detach().cpu()  # the projection runs on the CPU, whichever device the model is on
        with torch.no_grad():
            basis = torch.stack([self.expand(one, torch.eye(dim, dtype=filt.dtype)[d]).double().flatten()
                                 for d in range(dim)])  # (D, go * gi * k * k): the pair's basis filters
            blocks = filt.double().reshape(n_out, go, n_in, gi, k, k).permute(0, 2, 1, 3, 4, 5)
            coef = torch.linalg.lstsq(basis.T, blocks.reshape(n_out * n_in, -1).T).solution.T  # (n_out * n_in, D)
            weights = coef.reshape(-1).to(filt.dtype)
            back = self.expand(conv, weights.to(conv.weights.device)).double().cpu()
        residual = float((back - filt.double()).norm() / filt.double().norm().clamp_min(1e-30))
        return weights, residual


@functools.lru_cache(maxsize=None)
def library() -> E2CNN:
    """The equivariance library (imported on first use: ``import capsprobe`` does not load it)."""
    return E2CNN()


def field_permutation(group: str, turns: int = 0, flip: bool = False) -> np.ndarray:
    """How an image transformation moves one regular field's ``|G|`` numbers: ``rep(T x)[..., p] = rep(x)`` per field,
    for ``T`` = ``turns`` times ``torch.rot90(., 1, dims=(-2, -1))`` after (with ``flip``, D4 only) the left-right
    mirror ``torch.flip(., (-1,))`` (e2cnn's reflection; the up-down mirror is two turns after it).

    For C4 and C8 this is the cyclic roll by ``turns * quarter_turn_shift(group)``.
    """
    return library().regular_permutation(group, turns, flip)


def quarter_turn_shift(group: str) -> int:
    """The roll of each field's numbers under one ``torch.rot90(x, 1, dims=(-2, -1))``: ``rep(rot90 x)`` viewed as
    ``(B, fields, |G|)`` is ``rep(x)`` rolled by this many places along the last axis (C4: 1 of 4, C8: 2 of 8)."""
    n, flips = _group(group)
    if flips:
        raise InvalidInputError(f"{group}'s regular fields are not cyclic: use field_permutation")
    return n // 4


# --- the network ----------------------------------------------------------------------------------------------------


def _pool(x: Tensor) -> Tensor:
    """Max pooling at stride 2 that keeps the grid's centre: 2-wide windows on a side of even length, 3-wide with
    padding 1 on an odd one (windows symmetric under turns and flips of the map)."""
    h, w = x.shape[-2:]
    return F.max_pool2d(x, (2 + h % 2, 2 + w % 2), 2, (h % 2, w % 2))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


class _OnTensors(nn.Module):
    """A library module applied to plain tensors ``(B, C, H, W)`` (wraps and unwraps its geometric tensors)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(library().tensor(x, self.module.in_type)).tensor


def _library_module(m: nn.Module) -> Any:
    """The e2cnn module inside an :class:`_OnTensors`."""
    return m.module


class _GCNNBody(nn.Module):
    """What the trained :class:`GCNN` and its :class:`ExportedGCNN` share: the forward pass and capsprobe's face.

    Subclasses set ``convs``, ``norms`` (one per stage), ``acts`` (ReLUs: the taps), ``head``, and the attributes
    below.
    """

    group: str
    order: int  # |G|
    fields: tuple[int, ...]
    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    convs: nn.ModuleList
    norms: nn.ModuleList
    acts: nn.ModuleList
    head: nn.Sequential
    has_poses = False

    def _build_common(self, group: str, fields: Sequence[int], num_classes: int, in_chans: int,
                      img_size: int | Sequence[int], kernel_size: int, hidden: int, drop_rate: float) -> None:
        _group(group)
        if not fields or any(not isinstance(f, int) or isinstance(f, bool) or f < 1 for f in fields):
            raise InvalidInputError(f"fields must be positive integers (regular fields per stage), got {fields!r}")
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidInputError(f"kernel_size must be an odd positive integer (SAME padding), got {kernel_size!r}")
        self.group, self.order, self.fields = group, group_order(group), tuple(fields)
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, _pair(img_size)
        self.kernel_size, self.hidden, self.drop_rate = kernel_size, hidden, drop_rate
        self.acts = nn.ModuleList(nn.ReLU() for _ in fields)
        self.head = nn.Sequential(nn.Linear(fields[-1], hidden), nn.ReLU(), nn.Dropout(drop_rate),
                                  nn.Linear(hidden, num_classes))
        self.num_features = fields[-1]  # timm: the invariant features the head reads
        self.head_hidden_size = hidden
        self.feature_info = [{"num_chs": f * self.order, "reduction": 2 ** i, "module": f"acts.{i}"}
                             for i, f in enumerate(fields)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> the last stage's regular fields ``(B, n_L * |G|, h, w)`` (field-major)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise InvalidInputError(f"{type(self).__name__} was built for inputs (B, {self.in_chans}, H, W), got "
                                    f"{tuple(x.shape)}")
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.acts)):
            x = act(norm(conv(x)))
            if i < len(self.convs) - 1:
                x = _pool(x)
        return x

    def pooled(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """Fields ``(B, n * |G|, h, w)`` -> ``(representation (B, n * |G|), invariant (B, n))``: averaged over space;
        then the maximum over each field's group axis."""
        rep = maps.mean((-2, -1))
        return rep, rep.unflatten(1, (-1, self.order)).amax(-1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Fields -> logits ``(B, K)``, or with ``pre_logits`` the invariant features ``(B, n_L)``."""
        _, inv = self.pooled(x)
        return inv if pre_logits else self.head(inv)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def probe_outputs(self, x: Tensor) -> ModelOutputs:
        """Scores (softmax of the invariant head's logits), the representation (fields pooled over space, not over
        the group) and the logits, from one forward pass."""
        rep, inv = self.pooled(self.forward_features(x))
        logits = self.head(inv).float()
        return ModelOutputs(scores=logits.softmax(-1), representation=rep.float(), logits=logits)

    def probe_taps(self) -> list[tuple[str, nn.Module, Callable[[Tensor, tuple, nn.Module], dict[str, Tensor]]]]:
        """The per-layer probe's taps: the spatial fields after each stage (``fields 1`` ...), and the invariant
        features (``invariant``, the head's input)."""
        taps: list[tuple[str, nn.Module, Callable[[Tensor, tuple, nn.Module], dict[str, Tensor]]]] = [
            (f"fields {i + 1}", act, functools.partial(_tap_output, f"fields {i + 1}"))
            for i, act in enumerate(self.acts)]
        taps.append(("invariant", self.head, lambda out, inputs, module: {"invariant": inputs[0]}))
        return taps

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        self.num_classes = num_classes
        self.head[-1] = nn.Linear(self.hidden, num_classes)


def _tap_output(name: str, out: Tensor, inputs: tuple, module: nn.Module) -> dict[str, Tensor]:
    return {name: out}


class GCNN(_GCNNBody):
    """A group-equivariant CNN on e2cnn (see the module docstring).

    Args:
        num_classes: number of classes ``K``.
        in_chans: input channels (each a scalar field: 1 for digits, 3 for colour).
        img_size: input size ``H`` or ``(H, W)`` (any; square for the turns to be group elements).
        group: ``c4``, ``c8`` or ``d4``.
        fields: regular fields per stage (``|G|`` channels each); None: the group's default (about 0.7M parameters).
        kernel_size: the convolutions' odd kernel (SAME padding, stride 1).
        hidden: width of the head's hidden layer on the invariant features.
        drop_rate: dropout before the classifier.
        **kwargs: timm's extra keywords (``pretrained_cfg``, ...) are accepted and ignored.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | Sequence[int] = 28,
        group: str = "c4",
        fields: Sequence[int] | None = None,
        kernel_size: int = 5,
        hidden: int = 128,
        drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"GCNN got unexpected keyword arguments: {sorted(kwargs)}")
        fields = tuple(DEFAULT_FIELDS[group] if fields is None and group in DEFAULT_FIELDS else fields or ())
        self._build_common(group, fields, num_classes, in_chans, img_size, kernel_size, hidden, drop_rate)
        lib = library()
        t = lib.fields(group, in_chans, regular=False)
        convs, norms = [], []
        for n in fields:
            out = lib.fields(group, n)
            convs.append(_OnTensors(lib.conv(t, out, kernel_size)))
            norms.append(_OnTensors(lib.norm(out)))
            t = out
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.register_load_state_dict_pre_hook(_from_plain)

    def export(self) -> "ExportedGCNN":
        """The same network in plain torch modules (e2cnn's ``export()``: ``nn.Conv2d`` with the expanded filters,
        ``nn.BatchNorm2d`` with each field's statistics repeated), in eval mode; this model keeps its mode."""
        was_training = self.training
        try:
            convs = [copy.deepcopy(_library_module(c).export()) for c in self.convs]
            norms = [copy.deepcopy(_library_module(n).export()) for n in self.norms]
        finally:
            self.train(was_training)
        plain = ExportedGCNN(self.num_classes, self.in_chans, self.img_size, self.group, self.fields,
                             self.kernel_size, self.hidden, self.drop_rate)
        plain.convs, plain.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        plain.head = copy.deepcopy(self.head)
        return plain.eval()

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The state of :meth:`export` (plain convolution and batch-norm tensors): what ``model.safetensors``
        holds."""
        return self.export().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def convolution_stack(self) -> nn.Module:
        """The equivariant stages (``capsprobe bench`` times them alone)."""
        return nn.Sequential(*(m for trio in zip(self.convs, self.norms, self.acts) for m in trio))


def _from_plain(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Load-state pre-hook of :class:`GCNN`: turn an exported (plain) state into e2cnn's, in place.

    Each plain filter is projected on its layer's equivariant basis (:meth:`E2CNN.coefficients`) and the projection
    refused when the filter is not in the basis's span; the bias and the batch-norm tensors are read per field and
    refused when a field's channels disagree.
    """
    assert isinstance(module, GCNN)
    lib = library()
    for i, (on_conv, on_norm) in enumerate(zip(module.convs, module.norms)):
        conv, norm = _library_module(on_conv), _library_module(on_norm)
        key = f"{prefix}convs.{i}."
        if f"{key}weight" not in state:
            continue  # not a plain state: leave it for the usual checks
        filt = state.pop(f"{key}weight")
        plain_bias = state.pop(f"{key}bias", None)
        plain_bias = plain_bias.detach().cpu() if plain_bias is not None else None
        weights, residual = lib.coefficients(conv, filt)
        if residual > PROJECTION_TOLERANCE:
            raise InvalidInputError(f"{key}weight is not an equivariant filter of group {module.group} (relative "
                                    f"distance {residual:.2g} from the basis's span)")
        own = {k: v.detach().cpu() for k, v in conv.state_dict().items()}  # load_state_dict copies to the device
        new = {k: v.clone() for k, v in own.items()}
        new["weights"] = weights
        if "bias" in own and plain_bias is not None:
            expansion = own["bias_expansion"].double()
            bias = torch.linalg.lstsq(expansion, plain_bias.double()[:, None]).solution[:, 0]
            if (expansion @ bias - plain_bias.double()).abs().max() > PROJECTION_TOLERANCE * (
                    1 + plain_bias.double().abs().max()):
                raise InvalidInputError(f"{key}bias differs within a field: not an equivariant bias")
            new["bias"] = bias.to(plain_bias.dtype)
        with torch.no_grad():
            expanded = lib.expand(conv, weights.to(conv.weights.device)).cpu()
        if "filter" in own:
            new["filter"] = expanded
        if "expanded_bias" in own and "bias" in new:
            new["expanded_bias"] = (own["bias_expansion"] @ new["bias"]).to(own["expanded_bias"].dtype)
        for k, v in new.items():
            state[f"{key}module.{k}"] = v
        _norm_from_plain(norm, state, f"{prefix}norms.{i}.", module.order)


_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _norm_from_plain(norm: nn.Module, state: dict, key: str, order: int) -> None:
    own = norm.state_dict()
    for name, value in own.items():
        plain_name = name.rsplit(".", 1)[-1]
        if plain_name not in _NORM_TENSORS:  # the library's own bookkeeping (the fields' channel indices)
            state[f"{key}module.{name}"] = value.clone()
            continue
        if f"{key}{plain_name}" not in state:
            continue
        plain = state[f"{key}{plain_name}"]
        if plain_name == "num_batches_tracked":
            state[f"{key}module.{name}"] = plain
            continue
        per_field = plain.reshape(-1, order)
        if (per_field - per_field[:, :1]).abs().max() > PROJECTION_TOLERANCE * (1 + per_field.abs().max()):
            raise InvalidInputError(f"{key}{plain_name} differs within a field: not an equivariant batch norm")
        state[f"{key}module.{name}"] = per_field[:, 0].reshape(value.shape).clone()
    for plain_name in _NORM_TENSORS:
        state.pop(f"{key}{plain_name}", None)


class ExportedGCNN(_GCNNBody):
    """A :class:`GCNN` in plain torch modules (no e2cnn needed): what :meth:`GCNN.export` returns, and the layout
    of a G-CNN's ``model.safetensors``. Built with random weights; load a state into it. Same arguments as
    :class:`GCNN` (``fields`` given)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int | Sequence[int] = 28,
                 group: str = "c4", fields: Sequence[int] = DEFAULT_FIELDS["c4"], kernel_size: int = 5,
                 hidden: int = 128, drop_rate: float = 0.0):
        super().__init__()
        self._build_common(group, tuple(fields), num_classes, in_chans, img_size, kernel_size, hidden, drop_rate)
        widths = [in_chans, *(n * self.order for n in fields)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2)
                                   for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])


default_cfgs = generate_default_cfgs({
    name: small_image_cfg(first_conv="convs.0", classifier="head.3", paper_ids="arXiv:1602.07576")
    for name in ("gcnn_c4", "gcnn_c8", "gcnn_d4")
})


def _create(variant: str, group: str, pretrained: bool, **kwargs) -> GCNN:
    if pretrained:
        raise RuntimeError(f"no pretrained weights exist for {variant}; train one with `capsprobe train`")
    model = GCNN(**{"group": group, **kwargs})
    model.pretrained_cfg = model.default_cfg = cfg_of(variant)  # type: ignore[assignment]
    return model


@register_family(GCNN)
def gcnn_c4(pretrained: bool = False, **kwargs) -> GCNN:
    """A C4 G-CNN (rotations by 90 degrees): regular fields 16-32-64-96."""
    return _create("gcnn_c4", "c4", pretrained, **kwargs)


@register_family(GCNN)
def gcnn_c8(pretrained: bool = False, **kwargs) -> GCNN:
    """A C8 G-CNN (rotations by 45 degrees; exact on the pixel grid at 90): regular fields 12-24-44-68."""
    return _create("gcnn_c8", "c8", pretrained, **kwargs)


@register_family(GCNN)
def gcnn_d4(pretrained: bool = False, **kwargs) -> GCNN:
    """A D4 G-CNN (rotations by 90 degrees and reflections): regular fields 12-24-44-68."""
    return _create("gcnn_d4", "d4", pretrained, **kwargs)
