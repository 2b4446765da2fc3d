"""The upside-down protocol's joint score: is a rotated image still recognised, *and* can its rotation be read back
from the model's representation? (issue 48; the motivating article's upside-down kitten, ``background/
motivating-article.txt``).

Every test image is shown at :data:`ANGLES` (the full circle, every 15 degrees; the suite's rotation convention,
counter-clockwise on screen, :func:`capsprobe.transforms.functional.rotate`). Per image and angle:

- *recognised*: the prediction is the label;
- *pose recovered*: the angle decoded from the representation of the rotated image alone is within
  :data:`TOLERANCE` degrees of the angle applied, wrapped around the circle (:func:`angle_error`);
- *joint*: both.

The angle is decoded as in :func:`capsprobe.metrics.functional.decodability_terms`, on one representation instead of
a pair (and, in the upside-down task, one decoder per class: ``by_group``): the representations are projected on
their top 16 principal axes (scikit-learn PCA) and standardised, both fitted on the fitting images at every angle;
a ridge regression (penalty by leave-one-out over :data:`~capsprobe.metrics.functional.PENALTIES` x the fitting
rows, scikit-learn ``RidgeCV``) predicts ``(cos a, sin a)``, and the angle is ``atan2`` of the two. The regression
of an angle through its cosine and sine avoids the cut at 0 = 360 degrees (Mardia & Jupp 2000, "Directional
Statistics", section 11.3). The images (of each class, with ``by_group``) are split in two halves
(:func:`~capsprobe.metrics.functional.split_halves`), each image with all its angles on one side; the ridge fitted
on one half decodes the other, and then the other way round (two-fold cross-fitting), so every image is scored by a
ridge that never saw it at any angle.

The four outcomes the article talks about (:data:`OUTCOMES`), as shares of image x angle:

- ``equivariant``: recognised and its pose recovered (the joint score);
- ``invariant``: recognised, the pose lost: invariant and blind to pose;
- ``pose_only``: the pose recovered, the class lost;
- ``failing``: neither.

Chance: a decoder that knows nothing of the angle puts a fixed guess within 15 degrees of 2 of the 24 angles
(a window of 30 degrees), so an angle-blind representation recovers the pose of 1/12 of image x angle, not 1/24.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV

from .functional import FLOOR, PENALTIES, split_halves

__all__ = ["ANGLES", "KEY_ANGLES", "OUTCOMES", "OUTCOME_LABELS", "TOLERANCE", "PoseRecovery", "angle_error",
           "outcome_shares", "outcomes", "recover_angles"]

ANGLES: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 15))  # the full circle, every 15 degrees
KEY_ANGLES: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)  # the quarter turns (exact pixel permutations)
TOLERANCE = 15.0  # degrees: a pose is recovered when the decoded angle is this close to the applied one
OUTCOMES = ("equivariant", "invariant", "pose_only", "failing")
OUTCOME_LABELS = {"equivariant": "recognised, pose recovered (equivariant)",
                  "invariant": "recognised, pose lost (invariant, blind to pose)",
                  "pose_only": "pose recovered, class lost",
                  "failing": "neither (failing)"}


def angle_error(predicted, true) -> np.ndarray:
    """``|predicted - true|`` in degrees, wrapped around the circle into ``[0, 180]`` (359 and 1 are 2 apart)."""
    d = np.mod(np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64), 360.0)
    return np.minimum(d, 360.0 - d)


@dataclass(frozen=True)
class PoseRecovery:
    """The angles decoded from the representations, each by the ridge fitted on the other half of the images.

    Attributes:
        predicted: ``(N, A)`` decoded angles in degrees, in ``[0, 360)``.
        error: ``(N, A)`` wrapped absolute errors (:func:`angle_error`), degrees in ``[0, 180]``.
        fold: ``(N,)`` the half each image lies in (0: the first of :func:`split_halves`, scored by the ridge fitted
            on half 1; 1: the other way round).
        penalties: the log10 relative penalty each ridge chose (two per decoder).
        at_edge: a penalty sat at an end of its grid.
    """

    predicted: np.ndarray
    error: np.ndarray
    fold: np.ndarray
    penalties: tuple[float, ...]
    at_edge: bool

    def recovered(self, tolerance: float = TOLERANCE) -> np.ndarray:
        """``(N, A)`` bool: the decoded angle lies within ``tolerance`` degrees of the applied one."""
        return self.error <= tolerance


def recover_angles(reps, angles: Sequence[float], seed: int = 0, dim: int = 16, groups=None, by_group: bool = False,
                   split: tuple[np.ndarray, np.ndarray] | None = None) -> PoseRecovery:
    """Decode every image's rotation from its representations, two-fold cross-fitted (see the module docstring).

    Args:
        reps: ``(N, A, F)`` the representation of image ``n`` rotated by ``angles[a]``.
        angles: ``(A,)`` the angles applied, degrees.
        seed: the seed of the split into halves.
        dim: the principal axes kept (16, as every fitted metric of the suite); a representation of ``dim`` or fewer
            dimensions is only centred.
        groups: ``(N,)`` labels: the halves are stratified by them (None: a plain seeded split).
        by_group: one decoder per group (its own PCA, standardisation and ridge, fitted on half of the group's images
            and scoring the other half), as the suite fits capsule poses per class: each class's upright digit has
            its own place in the representation, so one linear read-out shared by all classes asks more than that
            the representation carries the angle. Needs ``groups``, and at least 4 images in each group.
        split: ``(first, second)`` image indices to use instead of :func:`split_halves` (tests; not with
            ``by_group``).

    Returns:
        The decoded angles and their errors, per image and angle.

    Raises:
        ValueError: ``reps`` is not ``(N, A, F)`` with one entry per angle, fewer than 4 images (in a group, with
            ``by_group``) or 2 angles, or ``by_group`` without ``groups`` or with ``split``.
    """
    x = np.asarray(reps, dtype=np.float64)
    a = np.asarray(angles, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != len(a):
        raise ValueError(f"reps must be (N, A, F) with A = {len(a)} angles, got {x.shape}")
    if not by_group:
        return _recover(x, a, seed, dim, split if split is not None else split_halves(len(x), seed, 0.5, groups))
    if groups is None or split is not None:
        raise ValueError("by_group needs groups, and draws its own halves (no split)")
    g = np.asarray(groups)
    predicted, fold = np.empty((len(x), len(a))), np.empty(len(x), dtype=int)
    penalties: list[float] = []
    edge = False
    for value in np.unique(g):
        members = np.flatnonzero(g == value)
        part = _recover(x[members], a, seed, dim, split_halves(len(members), seed), what=f"group {value}")
        predicted[members], fold[members] = part.predicted, part.fold
        penalties += part.penalties
        edge = edge or part.at_edge
    return PoseRecovery(predicted=predicted, error=angle_error(predicted, a[None, :]), fold=fold,
                        penalties=tuple(penalties), at_edge=edge)


def _recover(x: np.ndarray, a: np.ndarray, seed: int, dim: int, halves: tuple[np.ndarray, np.ndarray],
             what: str = "") -> PoseRecovery:
    """:func:`recover_angles` on one set of images ``x (N, A, F)`` with its halves."""
    n, n_angles, width = x.shape
    if n < 4 or n_angles < 2:
        raise ValueError(f"decoding the angle needs at least 4 images and 2 angles{' in ' + what if what else ''}, "
                         f"got {n} and {n_angles}")
    target = np.stack([np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))], 1)  # (A, 2)
    predicted = np.empty((n, n_angles))
    fold = np.empty(n, dtype=int)
    penalties, edge = [], False
    for k, (held, fit) in enumerate((halves, halves[::-1])):
        held, fit = np.asarray(held), np.asarray(fit)
        rows = x[fit].reshape(-1, width)  # every fitting image at every angle
        if width > dim:
            project = PCA(n_components=min(dim, len(rows)), random_state=0).fit(rows).transform
        else:
            centre = rows.mean(0)
            project = lambda r: r - centre  # noqa: E731
        z = project(rows)
        mu, sd = z.mean(0), z.std(0)
        sd[sd <= FLOOR * max(float(sd.max()), FLOOR)] = 1.0
        alphas = PENALTIES * len(z)
        model = RidgeCV(alphas=alphas).fit((z - mu) / sd, np.tile(target, (len(fit), 1)))
        out = model.predict((project(x[held].reshape(-1, width)) - mu) / sd).reshape(len(held), n_angles, 2)
        predicted[held] = np.mod(np.rad2deg(np.arctan2(out[..., 1], out[..., 0])), 360.0)
        fold[held] = k
        penalties.append(float(np.log10(model.alpha_ / len(z))))
        edge = edge or bool(np.isclose(model.alpha_, alphas[0]) or np.isclose(model.alpha_, alphas[-1]))
    return PoseRecovery(predicted=predicted, error=angle_error(predicted, a[None, :]), fold=fold,
                        penalties=tuple(penalties), at_edge=edge)


def outcomes(recognised, recovered) -> dict[str, np.ndarray]:
    """Per image (and angle), the four outcomes of :data:`OUTCOMES` as bool arrays of the inputs' shape (exactly one
    of them is true at each entry)."""
    r, p = np.asarray(recognised, dtype=bool), np.asarray(recovered, dtype=bool)
    if r.shape != p.shape:
        raise ValueError(f"recognised and recovered must have one shape, got {r.shape} and {p.shape}")
    return {"equivariant": r & p, "invariant": r & ~p, "pose_only": ~r & p, "failing": ~r & ~p}


def outcome_shares(recognised, recovered) -> dict[str, float]:
    """The share of entries in each outcome (:func:`outcomes`); they sum to 1."""
    return {name: float(v.mean()) for name, v in outcomes(recognised, recovered).items()}
