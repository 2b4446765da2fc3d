"""The perturbation suite: geometric nuisances and part-scrambling ("Picasso") edits, on the images' device.

Every transformation is a pure function ``fn(images, magnitude, seed) -> Transformed`` built on kornia's
functional ops, deterministic given (images, magnitude, seed). ``seed`` is an int (one draw for the batch)
or an int64 tensor ``(B,)`` with one seed per image, which the probe derives from the image's id so that
results do not depend on how the data is batched. The identity magnitude (0, 1.0 for scale, ``none``,
grid 1) returns the images unchanged, exactly.

Convention:
    - Coordinates are pixel coordinates: ``x`` to the right, ``y`` down, ``(0, 0)`` the centre of the
      top-left pixel.
    - Centre of rotation, scaling and shear: the image centre ``((W - 1) / 2, (H - 1) / 2)``, so rotations by
      multiples of 90 degrees map the pixel grid onto itself.
    - Angle: degrees; positive is counter-clockwise as the image is displayed (a pixel right of the centre
      moves above it under +90).
    - translate: ``m`` pixels right and ``m`` pixels down (negative: left and up).
    - scale: factor about the centre (2 moves a pixel twice as far from the centre).
    - shear: horizontal, ``x' = x + k (y - cy)`` (rows below the centre move right for ``k > 0``).
    - Interpolation bilinear with ``align_corners=True``; what comes from outside the frame is 0 (black).
    - Matrices are ``(B, 3, 3)`` and map input pixel coordinates to output pixel coordinates
      (kornia's ``warp_affine`` convention; note kornia's ``get_affine_matrix2d`` negates angles relative to
      ``rotate``, kornia issue #4408, so it is not used here).
    - flip: ``horizontal`` mirrors left-right, ``vertical`` top-bottom (exact, no interpolation).
    - affnist: the affNIST protocol's per-image random warp (:func:`affnist_warp`); not part of
      ``all``.
    - jigsaw: ``g`` patches per side, a seeded permutation that is never the identity; ``g`` must divide
      the image size. swap: ``top-bottom`` / ``left-right`` exchange the two halves (exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.geometry.transform import hflip, vflip, warp_affine
from torch import Tensor

from ..data import ink_boxes
from ..errors import InvalidInputError

__all__ = [
    "rotation_matrix",
    "shear_matrix",
    "AFFNIST",
    "FLIPS",
    "SWAPS",
    "Seed",
    "Transformed",
    "affine",
    "affnist",
    "affnist_warp",
    "apply_matrix",
    "flip",
    "jigsaw",
    "rotate",
    "scale",
    "shear",
    "swap",
    "translate",
]

Seed = int | Tensor


@dataclass(frozen=True)
class Transformed:
    """Result of a transformation.

    Attributes:
        images: transformed images ``(B, C, H, W)``.
        matrix: the ``(B, 3, 3)`` pixel-coordinate matrix applied (geometric transforms), else None.
        params: per-image parameters of what was applied, each ``(B,)`` (the worst cases of :mod:`.worst`: the
            winning warp), else None.
    """

    images: Tensor
    matrix: Tensor | None = None
    params: dict[str, Tensor] | None = None


def _check_images(images: Tensor) -> None:
    if images.dim() != 4:
        raise InvalidInputError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")


def _eye(images: Tensor) -> Tensor:
    return torch.eye(3, device=images.device, dtype=torch.float32).expand(images.shape[0], 3, 3).clone()


def _centre(images: Tensor) -> tuple[float, float]:
    h, w = images.shape[-2:]
    return (w - 1) / 2, (h - 1) / 2


def _about_centre(linear: Tensor, images: Tensor, shift: Tensor | None = None) -> Tensor:
    """3x3 matrices applying ``linear (B, 2, 2)`` about the image centre, then ``shift (B, 2)``."""
    cx, cy = _centre(images)
    c = linear.new_tensor([cx, cy])
    m = torch.zeros(linear.shape[0], 3, 3, dtype=linear.dtype, device=linear.device)
    m[:, :2, :2] = linear
    m[:, :2, 2] = c - linear @ c
    if shift is not None:
        m[:, :2, 2] += shift
    m[:, 2, 2] = 1
    return m


def apply_matrix(images: Tensor, matrix: Tensor) -> Tensor:
    """Warp ``images (B, C, H, W)`` by pixel-coordinate matrices ``(B, 3, 3)`` (bilinear, zero fill)."""
    _check_images(images)
    h, w = images.shape[-2:]
    m = matrix[:, :2, :].to(device=images.device, dtype=torch.float32)
    return warp_affine(images.float(), m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)


def _snap(values: Tensor) -> Tensor:
    """Round entries within 1e-9 of an integer, so cos(90 deg) is 0 and 90-degree turns stay exact."""
    rounded = values.round()
    return torch.where((values - rounded).abs() < 1e-9, rounded, values)


def rotation_matrix(angles_deg: Tensor, snap: bool = False) -> Tensor:
    """``(..., 2, 2)`` rotations, counter-clockwise on screen by ``angles_deg (...)``: the one home of the suite's
    rotation convention (the Lie generators differentiate it). ``snap`` rounds cos and sin at multiples of 90
    degrees to exact 0 and +-1 (the suite's warps); without it the matrix is differentiable in the angle."""
    t = torch.deg2rad(angles_deg)
    c, s = torch.cos(t), torch.sin(t)
    if snap:
        c, s = _snap(c), _snap(s)
    # y points down: counter-clockwise on screen is x' = c x + s y, y' = -s x + c y
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def shear_matrix(k: Tensor) -> Tensor:
    """``(..., 2, 2)`` horizontal shears ``x' = x + k y`` for ``k (...)`` (differentiable in ``k``)."""
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return torch.stack([torch.stack([one, k], -1), torch.stack([zero, one], -1)], -2)


def _rotation(angles_deg: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 2, 2)`` rotations by ``angles_deg (B,)``, computed in float64 and snapped."""
    return rotation_matrix(angles_deg.double(), snap=True).to(dtype)


def _shear(k: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 2, 2)`` horizontal shears for ``k (B,)``."""
    return shear_matrix(k.to(dtype))


def _geometric(images: Tensor, matrix: Tensor) -> Transformed:
    return Transformed(apply_matrix(images, matrix), matrix)


def rotate(images: Tensor, angle: float, seed: Seed = 0) -> Transformed:
    """Rotate by ``angle`` degrees (counter-clockwise on screen) about the image centre.

    Args:
        images: ``(B, C, H, W)``.
        angle: degrees in [-180, 180].
        seed: unused (deterministic).
    """
    _check_images(images)
    if angle == 0:
        return Transformed(images.clone(), _eye(images))
    lin = _rotation(torch.full((images.shape[0],), float(angle))).to(images.device)
    matrix = _about_centre(lin, images)
    if float(angle) % 90 == 0 and images.shape[-1] == images.shape[-2]:
        # a quarter turn permutes the pixels: rot90 is exact where interpolation would blur by rounding
        return Transformed(torch.rot90(images, int(float(angle) // 90) % 4, dims=(-2, -1)), matrix)
    return _geometric(images, matrix)


def translate(images: Tensor, pixels: float, seed: Seed = 0) -> Transformed:
    """Shift by ``pixels`` to the right and ``pixels`` down (negative: left and up), zero fill.

    Args:
        images: ``(B, C, H, W)``.
        pixels: in [-8, 8].
        seed: unused (deterministic).
    """
    _check_images(images)
    if pixels == 0:
        return Transformed(images.clone(), _eye(images))
    m = _eye(images)
    m[:, 0, 2] = float(pixels)
    m[:, 1, 2] = float(pixels)
    return _geometric(images, m)


def scale(images: Tensor, factor: float, seed: Seed = 0) -> Transformed:
    """Scale by ``factor`` about the image centre.

    Args:
        images: ``(B, C, H, W)``.
        factor: in [0.5, 1.5]; 1 is the identity.
        seed: unused (deterministic).
    """
    _check_images(images)
    if factor == 1:
        return Transformed(images.clone(), _eye(images))
    lin = torch.eye(2, device=images.device).expand(images.shape[0], 2, 2) * float(factor)
    return _geometric(images, _about_centre(lin, images))


def shear(images: Tensor, k: float, seed: Seed = 0) -> Transformed:
    """Horizontal shear ``x' = x + k (y - cy)`` about the image centre.

    Args:
        images: ``(B, C, H, W)``.
        k: in [-0.6, 0.6].
        seed: unused (deterministic).
    """
    _check_images(images)
    if k == 0:
        return Transformed(images.clone(), _eye(images))
    lin = _shear(torch.full((images.shape[0],), float(k), device=images.device))
    return _geometric(images, _about_centre(lin, images))


def _generators(seed: Seed, batch: int) -> list[torch.Generator]:
    """One CPU generator per image: from its own seed, or all from one shared draw sequence."""
    if isinstance(seed, Tensor):
        if seed.shape != (batch,):
            raise InvalidInputError(f"per-image seeds must be ({batch},), got {tuple(seed.shape)}")
        return [torch.Generator().manual_seed(int(s)) for s in seed.tolist()]
    gen = torch.Generator().manual_seed(int(seed))
    return [gen] * batch


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def affine(images: Tensor, strength: float, seed: Seed = 0) -> Transformed:
    """A random affNIST-like warp per image, scaled by ``strength`` in [0, 1].

    At strength 1 each image gets a rotation in [-20, 20] degrees, a horizontal shear in [-0.2, 0.2], a
    scale in [0.8, 1.2] per axis and a shift in [-4, 4] px per axis (all uniform); ``strength`` scales every
    range towards the identity. Deterministic given ``seed`` (int, or one per image ``(B,)``).
    """
    _check_images(images)
    if strength == 0:
        return Transformed(images.clone(), _eye(images))
    a = float(strength)
    mats = []
    for gen in _generators(seed, images.shape[0]):
        angle = _uniform(gen, -20 * a, 20 * a)
        k = _uniform(gen, -0.2 * a, 0.2 * a)
        sx, sy = _uniform(gen, 1 - 0.2 * a, 1 + 0.2 * a), _uniform(gen, 1 - 0.2 * a, 1 + 0.2 * a)
        tx, ty = _uniform(gen, -4 * a, 4 * a), _uniform(gen, -4 * a, 4 * a)
        rot = _rotation(torch.tensor([angle]))[0]
        lin = rot @ _shear(torch.tensor([k]))[0] @ torch.diag(torch.tensor([sx, sy]))
        mats.append((lin, torch.tensor([tx, ty])))
    lin = torch.stack([m[0] for m in mats]).to(images.device)
    shift = torch.stack([m[1] for m in mats]).to(images.device)
    return _geometric(images, _about_centre(lin, images, shift))


FLIPS = ("none", "horizontal", "vertical")


def flip(images: Tensor, direction: str, seed: Seed = 0) -> Transformed:
    """Mirror ``horizontal`` (left-right) or ``vertical`` (top-bottom); ``none`` is the identity. Exact."""
    _check_images(images)
    if direction not in FLIPS:
        raise InvalidInputError(f"flip takes one of {', '.join(FLIPS)}, got {direction!r}")
    m = _eye(images)
    h, w = images.shape[-2:]
    if direction == "none":
        return Transformed(images.clone(), m)
    if direction == "horizontal":
        m[:, 0, 0], m[:, 0, 2] = -1, w - 1
        return Transformed(hflip(images), m)
    m[:, 1, 1], m[:, 1, 2] = -1, h - 1
    return Transformed(vflip(images), m)


def _permutation(gen: torch.Generator, n: int) -> Tensor:
    identity = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=gen)
        if not torch.equal(perm, identity):
            return perm


def jigsaw(images: Tensor, grid: int, seed: Seed = 0) -> Transformed:
    """Cut each image into ``grid x grid`` patches and put them back in a seeded, non-identity order.

    Args:
        images: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``grid``.
        grid: patches per side (2, 4, 7 at 28 px); 1 is the identity.
        seed: int (one permutation for the batch) or ``(B,)`` (one per image).
    """
    _check_images(images)
    grid = int(grid)
    if grid == 1:
        return Transformed(images.clone())
    b, c, h, w = images.shape
    if h % grid or w % grid:
        raise InvalidInputError(f"jigsaw grid {grid} does not divide the image size {h}x{w}")
    ph, pw = h // grid, w // grid
    n = grid * grid
    patches = images.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, ph, pw)
    gens = _generators(seed, b)
    if isinstance(seed, Tensor):
        perms = torch.stack([_permutation(g, n) for g in gens])
    else:
        perms = _permutation(gens[0], n).expand(b, n)
    perms = perms.to(images.device)
    shuffled = torch.gather(patches, 1, perms[:, :, None, None, None].expand_as(patches))
    out = shuffled.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    return Transformed(out)


SWAPS = ("none", "top-bottom", "left-right")


def swap(images: Tensor, halves: str, seed: Seed = 0) -> Transformed:
    """Exchange the ``top-bottom`` or ``left-right`` halves (a roll by half the size); ``none`` is the identity."""
    _check_images(images)
    if halves not in SWAPS:
        raise InvalidInputError(f"swap takes one of {', '.join(SWAPS)}, got {halves!r}")
    if halves == "none":
        return Transformed(images.clone())
    h, w = images.shape[-2:]
    if halves == "top-bottom":
        return Transformed(torch.roll(images, shifts=h // 2, dims=-2))
    return Transformed(torch.roll(images, shifts=w // 2, dims=-1))


AFFNIST = ("none", "warp")


def affnist_warp(
    images: Tensor,
    seed: Seed = 0,
    max_rotation: float = 20.0,
    max_shear: float = 0.2,
    scale_range: tuple[float, float] = (0.8, 1.2),
    ink: float = 0.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Random affine warps drawn like affNIST's, with a translation that keeps the digit on the canvas.

    Per image (uniform draws): a rotation in ``[-max_rotation, max_rotation]`` degrees (counter-clockwise on
    screen), a horizontal shear in ``[-max_shear, max_shear]``, a scale per axis in ``scale_range``, all about the
    canvas centre (this module's conventions and matrix helpers); then a shift in pixels drawn within the range
    that keeps the warped bounding box of the ink (pixels above ``ink``) on the canvas (0 on an axis where the
    warped digit is wider than the canvas). Bilinear, zero fill, ``align_corners=True``.

    Args:
        images: float ``(B, C, H, W)`` in [0, 1], digits already on their canvas (e.g.
            :func:`capsprobe.data.place_on_canvas`).
        seed: an int for the batch, or ``(B,)`` int seeds, one per image (batching-independent).

    Returns:
        The warped images and the parameters drawn: ``angle``, ``shear``, ``scale_x``, ``scale_y``, ``shift_x``,
        ``shift_y``, each ``(B,)``, and ``matrix`` ``(B, 3, 3)`` float64 in pixel coordinates (input -> output).
    """

    _check_images(images)
    b, _, h, w = images.shape
    gens = _generators(seed, b)
    draws = torch.stack([torch.rand(6, generator=g, dtype=torch.float64) for g in gens])  # (B, 6) in [0, 1)
    angle = (2 * draws[:, 0] - 1) * max_rotation
    shear_k = (2 * draws[:, 1] - 1) * max_shear
    lo, hi = scale_range
    sx, sy = lo + (hi - lo) * draws[:, 2], lo + (hi - lo) * draws[:, 3]
    f64 = torch.float64
    lin = _rotation(angle, f64) @ _shear(shear_k, f64) @ torch.diag_embed(torch.stack([sx, sy], -1))  # (B, 2, 2)
    cx, cy = _centre(images)
    centre = torch.tensor([cx, cy], dtype=f64)

    # bounding box of the ink, its corners through the linear part, and the shifts that keep them on the canvas
    boxes = ink_boxes(images.detach().cpu(), ink).double()  # (B, 4): x0, y0, x1, y1
    empty = boxes[:, 2] < 0
    x0, x1 = torch.where(empty, centre[0], boxes[:, 0]), torch.where(empty, centre[0], boxes[:, 2])
    y0, y1 = torch.where(empty, centre[1], boxes[:, 1]), torch.where(empty, centre[1], boxes[:, 3])
    corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                           torch.stack([x0, y1], -1), torch.stack([x1, y1], -1)], 1)  # (B, 4, 2)
    moved = (corners - centre) @ lin.transpose(1, 2) + centre
    low = torch.stack([-moved[..., 0].amin(1), -moved[..., 1].amin(1)], -1)  # smallest allowed shift (x, y)
    high = torch.stack([(w - 1) - moved[..., 0].amax(1), (h - 1) - moved[..., 1].amax(1)], -1)
    fits = low <= high
    shift = torch.where(fits, low + (high - low) * draws[:, 4:6], torch.zeros_like(low))

    matrix = _about_centre(lin, images, shift)  # (B, 3, 3) float64
    warped = apply_matrix(images, matrix)
    params = {"angle": angle, "shear": shear_k, "scale_x": sx, "scale_y": sy, "shift_x": shift[:, 0],
              "shift_y": shift[:, 1], "matrix": matrix}
    return warped, params


def affnist(images: Tensor, mode: str, seed: Seed = 0) -> Transformed:
    """The affNIST test warp (:func:`affnist_warp`): ``warp`` draws, per image, a rotation up to 20 degrees, a
    shear up to 0.2, a scale of 0.8-1.2 per axis and a shift that keeps the digit on the canvas; ``none`` is the
    identity.
    """
    _check_images(images)
    if mode not in AFFNIST:
        raise InvalidInputError(f"affnist takes one of {', '.join(AFFNIST)}, got {mode!r}")
    if mode == "none":
        return Transformed(images.clone(), _eye(images))
    warped, params = affnist_warp(images, seed)
    return Transformed(warped.to(images.dtype), params["matrix"].float().to(images.device))
