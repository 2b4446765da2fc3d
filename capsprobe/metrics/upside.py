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
a pair: the representations are projected on their top 16 principal axes (scikit-learn PCA) and standardised, both
fitted on the fitting images at every angle; a ridge regression (penalty by leave-one-out over
:data:`~capsprobe.metrics.functional.PENALTIES` x the fitting rows, scikit-learn ``RidgeCV``) predicts
``(cos a, sin a)``, and the angle is ``atan2`` of the two. The regression of an angle through its cosine and sine
avoids the cut at 0 = 360 degrees (Mardia & Jupp 2000, "Directional Statistics", section 11.3). The images are split
in two halves (:func:`~capsprobe.metrics.functional.split_halves`, stratified by class), each image with all its
angles on one side; the ridge fitted on one half decodes the other, and then the other way round (two-fold
cross-fitting), so every image is scored by a ridge that never saw it at any angle.

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
        penalties: the log10 relative penalty each of the two ridges chose.
        at_edge: a penalty sat at an end of its grid.
    """

    predicted: np.ndarray
    error: np.ndarray
    fold: np.ndarray
    penalties: tuple[float, float]
    at_edge: bool

    def recovered(self, tolerance: float = TOLERANCE) -> np.ndarray:
        """``(N, A)`` bool: the decoded angle lies within ``tolerance`` degrees of the applied one."""
        return self.error <= tolerance


def recover_angles(reps, angles: Sequence[float], seed: int = 0, dim: int = 16, groups=None,
                   split: tuple[np.ndarray, np.ndarray] | None = None) -> PoseRecovery:
    """Decode every image's rotation from its representations, two-fold cross-fitted (see the module docstring).

    Args:
        reps: ``(N, A, F)`` the representation of image ``n`` rotated by ``angles[a]``.
        angles: ``(A,)`` the angles applied, degrees.
        seed: the seed of the split into halves.
        dim: the principal axes kept (16, as every fitted metric of the suite); a representation of ``dim`` or fewer
            dimensions is only centred.
        groups: ``(N,)`` labels to stratify the halves by (None: a plain seeded split).
        split: ``(first, second)`` image indices to use instead of :func:`split_halves` (tests).

    Returns:
        The decoded angles and their errors, per image and angle.

    Raises:
        ValueError: ``reps`` is not ``(N, A, F)`` with one entry per angle, or fewer than 4 images or 2 angles.
    """
    x = np.asarray(reps, dtype=np.float64)
    a = np.asarray(angles, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != len(a):
        raise ValueError(f"reps must be (N, A, F) with A = {len(a)} angles, got {x.shape}")
    n, n_angles, _ = x.shape
    if n < 4 or n_angles < 2:
        raise ValueError(f"decoding the angle needs at least 4 images and 2 angles, got {n} and {n_angles}")
    halves = split if split is not None else split_halves(n, seed, 0.5, groups)
    target = np.stack([np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))], 1)  # (A, 2)
    predicted = np.empty((n, n_angles))
    fold = np.empty(n, dtype=int)
    penalties, edge = [], False
    for k, (held, fit) in enumerate((halves, halves[::-1])):
        held, fit = np.asarray(held), np.asarray(fit)
        rows = x[fit].reshape(-1, x.shape[2])  # every fitting image at every angle
        if x.shape[2] > dim:
            pca = PCA(n_components=min(dim, len(rows)), random_state=0).fit(rows)
            project = pca.transform
        else:
            centre = rows.mean(0)
            project = lambda r: r - centre  # noqa: E731
        z = project(rows)
        mu, sd = z.mean(0), z.std(0)
        sd[sd <= FLOOR * max(float(sd.max()), FLOOR)] = 1.0
        alphas = PENALTIES * len(z)
        model = RidgeCV(alphas=alphas).fit((z - mu) / sd, np.tile(target, (len(fit), 1)))
        out = model.predict((project(x[held].reshape(-1, x.shape[2])) - mu) / sd).reshape(len(held), n_angles, 2)
        predicted[held] = np.mod(np.rad2deg(np.arctan2(out[..., 1], out[..., 0])), 360.0)
        fold[held] = k
        penalties.append(float(np.log10(model.alpha_ / len(z))))
        edge = edge or bool(np.isclose(model.alpha_, alphas[0]) or np.isclose(model.alpha_, alphas[-1]))
    return PoseRecovery(predicted=predicted, error=angle_error(predicted, a[None, :]), fold=fold,
                        penalties=(penalties[0], penalties[1]), at_edge=edge)


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
