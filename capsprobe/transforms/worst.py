"""Worst-case spatial transformations: per image, the rotation and translation the model handles worst.

Engstrom, Tran, Tsipras, Schmidt & Madry (ICML 2019), "Exploring the landscape of spatial robustness", break MNIST
and CIFAR convnets with a rotation of at most 30 degrees and a translation of at most 3 px (on 28 px MNIST), chosen
per image against the model:

- ``spatial-grid`` (their exhaustive "grid" attack): every combination of 31 angles in ``[-30 a, 30 a]`` degrees and
  5 x 5 shifts in ``[-3 a, 3 a]`` px (x right, y down), 775 warps per image, where ``a`` in [0, 1] is the magnitude
  (1: the paper's ranges; 0: the identity);
- ``worst-of-k`` (their "worst-of-10"): the worst of ``k`` warps drawn uniformly from ``[-30, 30]`` degrees x
  ``[-3, 3]`` px per axis, per image from the image's own seed (the magnitude is ``k``; 0: the identity).

The worst warp is the one with the smallest margin ``s_true - max_{j != true} s_j`` of the class scores the probe
measures (a convnet's softmax, a CapsNet's capsule lengths): the image is misclassified under some warp exactly when the
winner's margin is negative, so the accuracy under the attack is the share of images every candidate leaves
correct. Ties keep the first candidate in the order the grid (the identity first) or the draws list them. The warps follow the suite's
conventions (:mod:`.functional`: about the image centre, angles counter-clockwise on screen, the rotation first, then
the shift; bilinear, zero fill); the winner's matrix and parameters (``angle``, ``shift_x``, ``shift_y``) come back
in the :class:`~.functional.Transformed`, so the probe records per image which warp won.

Memory: the warped images are scored in chunks that keep within a byte budget (:data:`CHUNK_BYTES`, 1 GiB, or
``Against.chunk_bytes``), sized from the model: the peak bytes of the tensors alive while one block is warped and
scored are measured on one and two images (:func:`footprint`, on the images' own device), and the chunk is what the
straight line through them fits in the budget (:func:`images_per_chunk`). A fixed count of images does not do: 4,096
warped images a call held about 200 GiB for the paper's EM model and 27 GiB for CapsNet on 40-pixel canvases, 2 MiB
for a small convnet. The budget counts tensors, not the allocator's slack or a library's workspace.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import InvalidInputError
from .functional import Seed, Transformed, _about_centre, _check_images, _eye, _generators, _rotation, apply_matrix

__all__ = [
    "CHUNK_BYTES",
    "Against",
    "Footprint",
    "GRID_ANGLES",
    "GRID_SHIFTS",
    "MAX_ANGLE",
    "MAX_SHIFT",
    "Scorer",
    "activation_bytes",
    "footprint",
    "images_per_chunk",
    "margins",
    "spatial_grid",
    "spatial_grid_candidates",
    "spatial_matrices",
    "worst_of",
    "worst_of_k",
]

MAX_ANGLE = 30.0  # degrees (Engstrom et al. 2019, MNIST and CIFAR-10)
MAX_SHIFT = 3.0  # pixels per axis
GRID_ANGLES = 31  # every 2 degrees over [-30, 30]
GRID_SHIFTS = 5  # every 1.5 px over [-3, 3], per axis
CHUNK_BYTES = 2**30  # the tensors alive while one chunk of warped images is scored (Against.chunk_bytes overrides)

Scorer = Callable[[Tensor], Tensor]  # images (B, C, H, W) -> class scores (B, K)


@dataclass(frozen=True)
class Against:
    """What a worst case is chosen against: the true labels and the model.

    Attributes:
        labels: true classes ``(B,)``.
        scores: the class scores the probe measures (a convnet's softmax, a CapsNet's capsule lengths).
        objectives: what the gradient attacks ascend, by name: ``(module, loss)``, a differentiable ``images ->
            outputs`` and the loss on them (``ce``: cross-entropy of a convnet's logits or a CapsNet's lengths;
            ``margin``: the margin loss of the class scores).
        surrogate: ``(module, loss)`` of another model, for the transfer attack, or None.
        steps: the iterations of the iterative gradient attacks (PGD; pgd-long takes 5x), from the probe plan.
        chunk_bytes: the memory budget of one scoring call of the spatial worst cases (:func:`images_per_chunk`).
    """

    labels: Tensor
    scores: Scorer
    objectives: Mapping[str, tuple[nn.Module, nn.Module]] = field(default_factory=dict)
    surrogate: tuple[nn.Module, nn.Module] | None = None
    steps: int = 20  # gradient.PGD_STEPS (Madry et al. 2018 use 40 on MNIST with a random start; see gradient.py)
    chunk_bytes: int = CHUNK_BYTES

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise InvalidInputError(f"attack steps must be an integer >= 1, got {self.steps!r}")
        if not (isinstance(self.chunk_bytes, int) and self.chunk_bytes >= 1):
            raise InvalidInputError(f"the chunk budget must be a number of bytes >= 1, got {self.chunk_bytes!r}")


def spatial_matrices(images: Tensor, angle: Tensor, shift_x: Tensor, shift_y: Tensor) -> Tensor:
    """``(B, 3, 3)`` pixel-coordinate matrices: rotate by ``angle`` degrees about the centre, then shift."""
    lin = _rotation(angle.double(), torch.float64)
    shift = torch.stack([shift_x.double(), shift_y.double()], -1)
    return _about_centre(lin, images, shift).float().to(images.device)


def margins(scores: Tensor, labels: Tensor) -> Tensor:
    """``s_true - max_{j != true} s_j`` per row of ``scores (B, K)``: negative exactly when the image is misclassified
    (a tie between the true class and another counts as 0)."""
    true = scores.gather(1, labels[:, None]).squeeze(1)
    others = scores.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(1)


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that the operators run under it create, while they are alive: the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage (its C++ address) -> [bytes, tensors on it]
        self.now = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self.live[key]
                self.now -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = storage._cdata  # a view shares its base's storage: counted once
                if key not in self.live:
                    self.live[key] = [storage.nbytes(), 0]
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self.live[key][1] += 1
                weakref.finalize(t, self._release, key)
        return out


def activation_bytes(fn: Callable[..., Any], *args: Any) -> int:
    """The peak bytes of the tensors that ``fn(*args)`` creates, counted while they are alive (a view once, with its
    base); what existed before (the arguments, the weights) is not counted. Any device, the meta one included
    (shapes without values: a footprint computed, not run)."""
    with _LiveBytes() as meter:
        fn(*args)
    return meter.peak


def _block(images: Tensor, labels: Tensor, scores: Scorer, block: Tensor) -> Tensor:
    """The margins ``(B, c)`` of ``images (B, C, H, W)`` under each of their candidates ``block (B, c, 3)``."""
    b, c = block.shape[:2]
    flat = block.reshape(b * c, 3)
    tiled = images.repeat_interleave(c, 0)
    warped = apply_matrix(tiled, spatial_matrices(tiled, flat[:, 0], flat[:, 1], flat[:, 2]))
    return margins(scores(warped).float(), labels.repeat_interleave(c)).view(b, c)


@dataclass(frozen=True)
class Footprint:
    """The bytes of warping and scoring ``n`` images in one call: ``fixed + n * per_image``."""

    fixed: int
    per_image: int

    def images(self, budget: int = CHUNK_BYTES) -> int:
        """The most images one call may take within ``budget`` bytes (at least 1: a model over the budget for one
        image is scored an image at a time)."""
        return max(1, (int(budget) - self.fixed) // self.per_image)


def footprint(images: Tensor, labels: Tensor, scores: Scorer) -> Footprint:
    """The :class:`Footprint` of a block: the peak measured on one and on two warped copies of ``images[0]``
    (:func:`activation_bytes`, in the caller's grad mode, on its device), ``per_image`` the difference and ``fixed``
    what one image needs beyond it (at least 0)."""
    _check_images(images)
    one = torch.zeros(1, 1, 3, dtype=torch.float64)
    peaks = [activation_bytes(_block, images[:1], labels[:1].to(images.device), scores, one.expand(1, n, 3))
             for n in (1, 2)]
    per_image = max(peaks[1] - peaks[0], 1)
    return Footprint(max(peaks[0] - per_image, 0), per_image)


def images_per_chunk(images: Tensor, labels: Tensor, scores: Scorer, budget: int = CHUNK_BYTES) -> int:
    """How many warped images one scoring call may take in ``budget`` bytes (:func:`footprint` of this model)."""
    return footprint(images, labels, scores).images(budget)


def worst_of(images: Tensor, labels: Tensor, scores: Scorer, candidates: Tensor, chunk_images: int | None = None,
             chunk_bytes: int = CHUNK_BYTES) -> Transformed:
    """Per image, the candidate warp with the smallest margin (the first of equal ones).

    Args:
        images: ``(B, C, H, W)``.
        labels: true classes ``(B,)``.
        scores: the model's class scores of a batch of images.
        candidates: ``(K, 3)`` (the same for every image) or ``(B, K, 3)`` rows ``(angle, shift_x, shift_y)``.
        chunk_images: warped images scored per call (memory, not the result); None: as many as ``chunk_bytes``
            holds for this model (:func:`images_per_chunk`).
        chunk_bytes: the memory budget of one call when ``chunk_images`` is None.

    Returns:
        The images under their winning warps, the ``(B, 3, 3)`` matrices and ``params`` (``angle``, ``shift_x``,
        ``shift_y``, ``margin``, each ``(B,)``).
    """
    _check_images(images)
    b = images.shape[0]
    if candidates.dim() == 2:
        candidates = candidates.expand(b, *candidates.shape)
    if candidates.dim() != 3 or candidates.shape[0] != b or candidates.shape[-1] != 3 or candidates.shape[1] < 1:
        raise InvalidInputError(f"candidates must be (K, 3) or ({b}, K, 3) with K >= 1, got {tuple(candidates.shape)}")
    candidates = candidates.to(torch.float64).cpu()
    k = candidates.shape[1]
    labels = labels.to(images.device)
    if chunk_images is None:
        chunk_images = images_per_chunk(images, labels, scores, chunk_bytes) if b else 1
    best = torch.full((b,), float("inf"), device=images.device)
    pick = torch.zeros(b, dtype=torch.long, device=images.device)
    rows = max(1, min(b, chunk_images))  # images per call: all of them unless the budget holds fewer
    step = max(1, chunk_images // rows)  # candidates per image per call
    for first in range(0, b, rows):
        part = slice(first, first + rows)
        for start in range(0, k, step):
            m = _block(images[part], labels[part], scores, candidates[part, start:start + step])  # (rows, c)
            low, where = m.min(1)  # the first of equal minima within the block
            better = low < best[part]  # strict: an earlier block keeps a tie
            best[part] = torch.where(better, low, best[part])
            pick[part] = torch.where(better, where + start, pick[part])
    won = candidates[torch.arange(b), pick.cpu()]  # (B, 3)
    matrix = spatial_matrices(images, won[:, 0], won[:, 1], won[:, 2])
    params = {"angle": won[:, 0], "shift_x": won[:, 1], "shift_y": won[:, 2], "margin": best.cpu().double()}
    warped = apply_matrix(images, matrix).to(images.dtype)
    kept = (won == 0).all(1).to(images.device)  # the identity won: the image itself, exactly (as the suite's identities)
    warped = torch.where(kept[:, None, None, None], images, warped)
    return Transformed(warped, matrix, params)


def needs(name: str, against: Against | None) -> Against:
    """``against``, or a one-line error naming the worst case that was called without a model."""
    if against is None:
        raise InvalidInputError(f"{name} is a worst case against a model: give the labels and the model (against=)")
    return against


def _identity(images: Tensor) -> Transformed:
    zero = torch.zeros(images.shape[0], dtype=torch.float64)
    return Transformed(images.clone(), _eye(images), {"angle": zero, "shift_x": zero, "shift_y": zero,
                                                      "margin": torch.full_like(zero, float("nan"))})


def spatial_grid_candidates(strength: float) -> Tensor:
    """The ``(775, 3)`` grid ``(angle, shift_x, shift_y)`` at ``strength`` in [0, 1]: the identity (0, 0, 0) first
    (so an image no warp hurts more keeps its pose), then angles outermost, x, y, each ascending."""
    a = float(strength)
    angles = torch.linspace(-MAX_ANGLE * a, MAX_ANGLE * a, GRID_ANGLES, dtype=torch.float64)
    shifts = torch.linspace(-MAX_SHIFT * a, MAX_SHIFT * a, GRID_SHIFTS, dtype=torch.float64)
    grid = torch.cartesian_prod(angles, shifts, shifts)
    identity = (grid == 0).all(1)
    return torch.cat([grid[identity], grid[~identity]])


def spatial_grid(images: Tensor, strength: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """The worst of the 775-warp grid (31 angles x 5 x 5 shifts) over ``[-30 a, 30 a]`` degrees x ``[-3 a, 3 a]`` px,
    ``a = strength`` in [0, 1] (0: the identity). Deterministic (``seed`` unused)."""
    _check_images(images)
    if strength == 0:
        return _identity(images)
    a = needs("spatial-grid", against)
    return worst_of(images, a.labels, a.scores, spatial_grid_candidates(strength), chunk_bytes=a.chunk_bytes)


def worst_of_k(images: Tensor, k: int, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """The worst of ``k`` warps per image, each an angle uniform in [-30, 30] degrees and a shift uniform in [-3, 3] px
    per axis, drawn from the image's seed (int: one draw sequence for the batch; ``(B,)``: one per image); 0 is the
    identity."""
    _check_images(images)
    k = int(k)
    if k == 0:
        return _identity(images)
    a = needs("worst-of-k", against)
    draws = torch.stack([torch.rand(k, 3, generator=g, dtype=torch.float64) for g in _generators(seed, images.shape[0])])
    scale = torch.tensor([MAX_ANGLE, MAX_SHIFT, MAX_SHIFT], dtype=torch.float64)
    return worst_of(images, a.labels, a.scores, (2 * draws - 1) * scale, chunk_bytes=a.chunk_bytes)
