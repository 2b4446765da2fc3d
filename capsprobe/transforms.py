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

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from kornia.geometry.transform import hflip, vflip, warp_affine
from torch import Tensor

from .errors import InvalidInputError

__all__ = [
    "SUITE",
    "TRANSFORMS",
    "Transform",
    "Transformed",
    "UnknownTransformError",
    "affine",
    "affnist",
    "affnist_warp",
    "apply_matrix",
    "flip",
    "get_transform",
    "jigsaw",
    "magnitude_label",
    "magnitude_value",
    "parse_magnitude",
    "parse_magnitude_specs",
    "resolve",
    "rotate",
    "scale",
    "shear",
    "swap",
    "translate",
]

Seed = int | Tensor


class UnknownTransformError(InvalidInputError):
    """A transformation name that is not in the suite."""


@dataclass(frozen=True)
class Transformed:
    """Result of a transformation.

    Attributes:
        images: transformed images ``(B, C, H, W)``.
        matrix: the ``(B, 3, 3)`` pixel-coordinate matrix applied (geometric transforms), else None.
    """

    images: Tensor
    matrix: Tensor | None = None


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


def _rotation(angles_deg: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 2, 2)`` rotations, counter-clockwise on screen by ``angles_deg (B,)``."""
    t = torch.deg2rad(angles_deg.double())
    c, s = _snap(torch.cos(t)), _snap(torch.sin(t))
    # y points down: counter-clockwise on screen is x' = c x + s y, y' = -s x + c y
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2).to(dtype)  # (B, 2, 2)


def _shear(k: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 2, 2)`` horizontal shears ``x' = x + k y`` for ``k (B,)``."""
    lin = torch.eye(2, dtype=dtype, device=k.device).repeat(k.shape[0], 1, 1)
    lin[:, 0, 1] = k.to(dtype)
    return lin


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
    from .data import ink_boxes

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


@dataclass(frozen=True)
class Transform:
    """A named transformation of the suite with its magnitude grid and range.

    Attributes:
        name: the suite name.
        fn: ``fn(images, magnitude, seed) -> Transformed``.
        grid: default magnitudes.
        identity: the magnitude that leaves images unchanged.
        unit: unit of the magnitude.
        low, high: numeric range (None for categorical magnitudes).
        choices: allowed categorical magnitudes (None for numeric ones).
        geometric: returns a matrix.
        semantic_from: magnitudes whose ``|m|`` reaches this are semantic (rotate), when not None.
        kind: ``nuisance`` or ``semantic`` for every non-identity magnitude (unless ``semantic_from``).
    """

    name: str
    fn: Callable[[Tensor, Any, Seed], Transformed]
    grid: tuple
    identity: Any
    unit: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    geometric: bool = True
    integer: bool = False
    semantic_from: float | None = None

    def kind_at(self, magnitude: Any) -> str:
        """``nuisance`` or ``semantic`` at ``magnitude`` (rotations become semantic from 90 degrees)."""
        if self.semantic_from is not None and abs(float(magnitude)) >= self.semantic_from:
            return "semantic"
        return self.kind

    def validate(self, magnitude: Any) -> Any:
        """Return ``magnitude`` in its canonical type, or raise ValueError naming the allowed range."""
        if self.choices is not None:
            if magnitude not in self.choices:
                raise InvalidInputError(f"{self.name} magnitude {magnitude!r} is not one of {', '.join(map(str, self.choices))}")
            return magnitude
        try:
            value = float(magnitude)
        except (TypeError, ValueError):
            raise InvalidInputError(f"{self.name} magnitude {magnitude!r} is not a number") from None
        if not math.isfinite(value):
            raise InvalidInputError(f"{self.name} magnitude {magnitude!r} is not a finite number")
        if self.integer:
            if value != int(value):
                raise InvalidInputError(f"{self.name} magnitude {magnitude!r} must be a whole number")
            value = int(value)
        if not (self.low <= value <= self.high):
            raise InvalidInputError(f"{self.name} magnitude {magnitude} is outside [{self.low:g}, {self.high:g}] ({self.unit})")
        return value

    def __call__(self, images: Tensor, magnitude: Any, seed: Seed = 0) -> Transformed:
        return self.fn(images, self.validate(magnitude), seed)


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("rotate", rotate, (-180, -135, -90, -45, -30, -15, 0, 15, 30, 45, 90, 135, 180), 0, "degrees",
                  "nuisance", -180, 180, semantic_from=90),
        Transform("flip", flip, FLIPS, "none", "direction", "semantic", choices=FLIPS),
        Transform("translate", translate, (-8, -6, -4, -2, 0, 2, 4, 6, 8), 0, "pixels (x and y)", "nuisance", -8, 8),
        Transform("scale", scale, (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5), 1.0, "factor", "nuisance", 0.5, 1.5),
        Transform("shear", shear, (-0.6, -0.4, -0.2, 0, 0.2, 0.4, 0.6), 0, "x per y", "nuisance", -0.6, 0.6),
        Transform("affine", affine, (0, 0.25, 0.5, 0.75, 1.0), 0, "strength", "nuisance", 0, 1),
        Transform("jigsaw", jigsaw, (1, 2, 4, 7), 1, "patches per side", "semantic", 1, 28, geometric=False,
                  integer=True),
        Transform("swap", swap, SWAPS, "none", "halves", "semantic", choices=SWAPS, geometric=False),
        Transform("affnist", affnist, AFFNIST, "none", "affNIST test warp", "nuisance", choices=AFFNIST),
    )
}
# "all" is the DESIGN suite; affnist (the affNIST protocol's test warp) is asked for by name
SUITE = ("rotate", "flip", "translate", "scale", "shear", "affine", "jigsaw", "swap")


def get_transform(name: str) -> Transform:
    """The suite entry ``name``; raises :class:`UnknownTransformError` listing the valid names."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise UnknownTransformError(
            f"unknown transformation {name!r}; choose from: {', '.join(TRANSFORMS)}, or all"
        ) from None


def parse_magnitude(transform: Transform, text: str) -> Any:
    """A magnitude from command-line text, validated (``"45"`` -> 45.0, ``"horizontal"`` stays a string)."""
    return transform.validate(text if transform.choices is not None else text.strip())


def magnitude_label(magnitude: Any) -> str:
    """A stable text label: ``45``, ``0.5``, ``horizontal``."""
    if isinstance(magnitude, str):
        return magnitude
    value = float(magnitude)
    return str(int(value)) if value == int(value) else f"{value:g}"


def magnitude_value(transform: Transform, magnitude: Any) -> float:
    """A number to plot a magnitude against (the index in ``choices`` for categorical ones)."""
    if transform.choices is not None:
        return float(transform.choices.index(magnitude))
    return float(magnitude)


def resolve(names: Sequence[str]) -> list[Transform]:
    """Suite entries for ``names``; ``all`` expands to the whole suite; duplicates are dropped."""
    out: list[Transform] = []
    for name in names:
        for t in [TRANSFORMS[n] for n in SUITE] if name == "all" else [get_transform(name)]:
            if t not in out:
                out.append(t)
    if not out:
        raise UnknownTransformError(f"no transformation given; choose from: {', '.join(TRANSFORMS)}, or all")
    return out


def parse_magnitude_specs(specs: Sequence[str], transforms: Sequence[Transform]) -> dict[str, list[Any]]:
    """Parse ``--magnitudes`` values: ``rotate=0,45,90`` or, with a single transformation, ``0,45,90``.

    Raises:
        ValueError: a spec names a transformation not probed, or a magnitude is out of range.
    """
    out: dict[str, list[Any]] = {}
    names = [t.name for t in transforms]
    for spec in specs:
        if "=" in spec:
            name, _, values = spec.partition("=")
            name = name.strip()
        elif len(transforms) == 1:
            name, values = names[0], spec
        else:
            raise InvalidInputError(f"magnitudes {spec!r}: name the transformation (e.g. rotate=0,45,90) when probing several")
        if name not in names:
            raise InvalidInputError(f"magnitudes {spec!r}: {name!r} is not among the transformations probed ({', '.join(names)})")
        t = TRANSFORMS[name]
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise InvalidInputError(f"magnitudes {spec!r} lists no magnitude")
        out[name] = [parse_magnitude(t, v) for v in items]
    return out
