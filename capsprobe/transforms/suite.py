"""The transformation suite: each :class:`Transform` with its magnitudes, kind and report metadata, and the registry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import Tensor

from ..errors import InvalidInputError
from .corruptions import CORRUPTIONS, GEOMETRIC, MNISTC
from .functional import (
    AFFNIST,
    FLIPS,
    SWAPS,
    Seed,
    Transformed,
    affine,
    affnist,
    flip,
    jigsaw,
    rotate,
    scale,
    shear,
    swap,
    translate,
)
from .gradient import (
    apgd_ce,
    apgd_dlr,
    apgd_t,
    autoattack,
    fgsm,
    fgsm_margin,
    pgd,
    pgd_long,
    pgd_margin,
    pgd_transfer,
    square,
)
from .worst import Against, spatial_grid, worst_of_k

__all__ = [
    "GROUPS",
    "headline_conditions",
    "register_transform",
    "SUITE",
    "TRANSFORMS",
    "Transform",
    "UnknownTransformError",
    "get_transform",
    "magnitude_label",
    "magnitude_value",
    "parse_magnitude",
    "parse_magnitude_specs",
    "resolve",
]

class UnknownTransformError(InvalidInputError):
    """A transformation name that is not in the suite."""


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
        showcase: the magnitude the report's reconstruction grid shows (None: the grid's last).
        headline: the magnitudes whose model comparison the report's headlines state.
        scramble: a part-scrambling ("Picasso") edit, whose detection the report sets against a nuisance.
        worst_case: chosen per image against the model (:mod:`.worst`, :mod:`.gradient`): called with
            ``against``, the labels and the model.
        fits: ``fits(magnitude, channels, height, width) -> None`` when the magnitude can be applied to such images,
            else the reason in a few words (a jigsaw grid that does not divide the side, a shift past the canvas, a
            channel count the operation does not take); None: every magnitude fits every image. The probe plan
            (:class:`capsprobe.probe.ProbePlan`) asks it before anything is trained or loaded.

    Adding a transformation is one :func:`register_transform` call: the probe, the report's headlines and
    showcase, and the CLI's help read these fields.
    """

    name: str
    fn: Callable[..., Transformed]  # fn(images, magnitude, seed), and against= for a worst case
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
    showcase: Any = None
    headline: tuple = ()
    scramble: bool = False
    worst_case: bool = False
    fits: Callable[[Any, int, int, int], str | None] | None = None

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
        assert self.low is not None and self.high is not None  # numeric magnitudes have a range
        if not (self.low <= value <= self.high):
            raise InvalidInputError(f"{self.name} magnitude {magnitude} is outside [{self.low:g}, {self.high:g}] ({self.unit})")
        return value

    def __call__(self, images: Tensor, magnitude: Any, seed: Seed = 0, *, against: Against | None = None
                 ) -> Transformed:
        """``fn(images, magnitude, seed)``; a worst case is also told what it is chosen ``against`` (the labels and
        the model); the others ignore it."""
        if self.worst_case:
            return self.fn(images, self.validate(magnitude), seed, against=against)
        return self.fn(images, self.validate(magnitude), seed)


def _jigsaw_fits(grid: Any, channels: int, height: int, width: int) -> str | None:
    """A jigsaw grid cuts the image into equal patches: it must divide both sides."""
    g = int(grid)
    if height % g or width % g:
        return f"jigsaw grid {g} does not divide the image size {height}x{width}"
    return None


def _shift_fits(pixels: Any, channels: int, height: int, width: int) -> str | None:
    """A shift in pixels (the suite's magnitudes are pixels, tuned to 28-pixel digits) must leave part of the image
    on the canvas: ``|pixels|`` below both sides."""
    if abs(float(pixels)) >= min(height, width):
        return f"translate by {magnitude_label(pixels)} px moves a {height}x{width} image off its canvas"
    return None


# the gradient attacks' default radii: MNIST's usual range up to 0.3 (Madry et al. 2018), and 0.5, where an attack
# that works can turn every image into the same grey and any model falls to chance or below (the masking check)
EPS_GRID = (0, 0.05, 0.1, 0.2, 0.3, 0.5)
EPS_CHECK = (0, 0.1, 0.3)

TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("rotate", rotate, (-180, -135, -90, -45, -30, -15, 0, 15, 30, 45, 90, 135, 180), 0, "degrees",
                  "nuisance", -180, 180, semantic_from=90,
                  showcase=45, headline=(45,)),
        Transform("flip", flip, FLIPS, "none", "direction", "semantic", choices=FLIPS, showcase="horizontal"),
        Transform("translate", translate, (-8, -6, -4, -2, 0, 2, 4, 6, 8), 0, "pixels (x and y)", "nuisance", -8, 8,
                  showcase=4, headline=(4,), fits=_shift_fits),
        Transform("scale", scale, (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5), 1.0, "factor", "nuisance", 0.5, 1.5,
                  showcase=0.75),
        Transform("shear", shear, (-0.6, -0.4, -0.2, 0, 0.2, 0.4, 0.6), 0, "x per y", "nuisance", -0.6, 0.6,
                  showcase=0.4),
        Transform("affine", affine, (0, 0.25, 0.5, 0.75, 1.0), 0, "strength", "nuisance", 0, 1, showcase=1.0,
                  headline=(1.0,)),
        Transform("jigsaw", jigsaw, (1, 2, 4, 7), 1, "patches per side", "semantic", 1, 28, geometric=False,
                  integer=True, showcase=4, headline=(4,), scramble=True, fits=_jigsaw_fits),
        Transform("swap", swap, SWAPS, "none", "halves", "semantic", choices=SWAPS, geometric=False,
                  showcase="top-bottom", headline=("top-bottom", "left-right"), scramble=True),
        Transform("affnist", affnist, AFFNIST, "none", "affNIST test warp", "nuisance", choices=AFFNIST,
                  showcase="warp", headline=("warp",)),
        Transform("spatial-grid", spatial_grid, (0, 0.5, 1.0), 0, "strength (x 30 degrees, x 3 px)", "nuisance", 0, 1,
                  showcase=1.0, headline=(1.0,), worst_case=True),
        Transform("worst-of-k", worst_of_k, (0, 1, 10), 0, "random warps (30 degrees, 3 px)", "nuisance", 0, 1000,
                  integer=True, showcase=10, headline=(10,), worst_case=True),
        *(Transform(name, fn, grid, 0, "L-inf eps (pixels in [0, 1])", "nuisance", 0, 1, geometric=False,
                    showcase=0.1, headline=(0.1,) if name in ("fgsm", "pgd") else (), worst_case=True)
          for name, fn, grid in (
              ("fgsm", fgsm, EPS_GRID), ("pgd", pgd, EPS_GRID), ("pgd-long", pgd_long, EPS_CHECK),
              ("fgsm-margin", fgsm_margin, EPS_CHECK), ("pgd-margin", pgd_margin, EPS_CHECK),
              ("pgd-transfer", pgd_transfer, EPS_CHECK), ("apgd-ce", apgd_ce, EPS_CHECK),
              ("apgd-dlr", apgd_dlr, EPS_CHECK), ("apgd-t", apgd_t, EPS_CHECK), ("square", square, EPS_CHECK),
              ("autoattack", autoattack, EPS_CHECK))),
    )
}
# "all" is the DESIGN suite; affnist (the affNIST protocol's test warp) and the worst cases against the model
# (spatial-grid, worst-of-k: Engstrom et al. 2019; the gradient attacks of .gradient) are asked for by name
SUITE = ("rotate", "flip", "translate", "scale", "shear", "affine", "jigsaw", "swap")

# MNIST-C (Mu & Gilmer 2019), asked for together as "mnist-c": the benchmark's 15 corruptions at its one severity
# each (magnitude "mnist-c"; "none" the identity). All are nuisances: the paper keeps only corruptions that human
# readers still label correctly, and none scrambles the digit's parts (stripe and Canny edges change its look, rotate
# stays at 23 degrees, far from the 90 where rotate turns semantic)
for _name, _fn in CORRUPTIONS.items():
    TRANSFORMS[_name] = Transform(_name, _fn, MNISTC, "none", "MNIST-C severity", "nuisance", choices=MNISTC,
                                  geometric=_name in GEOMETRIC, showcase="mnist-c")
GROUPS = {"mnist-c": tuple(CORRUPTIONS)}


def register_transform(transform: Transform) -> Transform:
    """Add ``transform`` to the registry (by name; asked for by name, or in ``SUITE`` for ``all``)."""
    if transform.identity not in transform.grid:
        raise ValueError(f"{transform.name}: the identity {transform.identity!r} must be in the grid")
    TRANSFORMS[transform.name] = transform
    return transform


def headline_conditions() -> tuple[tuple[str, str], ...]:
    """(transformation, magnitude label) pairs the report's headlines compare models at, in registry order."""
    return tuple((name, magnitude_label(m)) for name, t in TRANSFORMS.items() for m in t.headline)


def get_transform(name: str) -> Transform:
    """The suite entry ``name``; raises :class:`UnknownTransformError` listing the valid names."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise UnknownTransformError(
            f"unknown transformation {name!r}; choose from: {', '.join(TRANSFORMS)}, or all, mnist-c"
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
    """Suite entries for ``names``; ``all`` expands to the whole suite, ``mnist-c`` to MNIST-C's 15 corruptions;
    duplicates are dropped."""
    out: list[Transform] = []
    for name in names:
        group = SUITE if name == "all" else GROUPS.get(name)
        for t in [TRANSFORMS[n] for n in group] if group is not None else [get_transform(name)]:
            if t not in out:
                out.append(t)
    if not out:
        raise UnknownTransformError(f"no transformation given; choose from: {', '.join(TRANSFORMS)}, or all, mnist-c")
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
        if name in out:
            raise InvalidInputError(f"magnitudes for {name} are given twice; list them once (e.g. {name}=0,45,90)")
        t = TRANSFORMS[name]
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise InvalidInputError(f"magnitudes {spec!r} lists no magnitude")
        out[name] = [parse_magnitude(t, v) for v in items]
    return out
