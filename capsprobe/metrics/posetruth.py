"""Pose against the object's true pose (issue 49, item 2): is the azimuth and elevation of the object itself, known
from the data set (smallNORB's and the rendered smallNORB-like set's labels), readable from a representation?

Pure functions on arrays (no model, no data loading). Every fitted read-out follows the conventions of
:mod:`capsprobe.metrics.functional`: a seeded split into a fitting and a held-out half (:func:`pose_split`, which
wraps :func:`~capsprobe.metrics.functional.split_halves`), the representation projected on the top 16 principal axes
of the fitting half and standardised there (scikit-learn PCA; a representation of 16 or fewer dimensions is only
standardised), ridge regression with the penalty chosen by efficient leave-one-out over
:data:`~capsprobe.metrics.functional.PENALTIES` x the fitting rows (scikit-learn ``RidgeCV``), and held-out scores
as ratios of sums of per-image terms, with a percentile bootstrap interval over held-out *instances* (the unit the
split draws; images of one instance are not independent) or images.

- :func:`pose_r2`: held-out ``R^2`` of each pose factor. An angle (the azimuth) is regressed through its cosine and
  sine, which avoids the cut at 0 = 360 degrees (Mardia & Jupp 2000, "Directional Statistics", section 11.3; as
  :mod:`capsprobe.metrics.upside` decodes a rotation), its ``R^2`` the mean of the two and its error the wrapped
  angle between ``atan2(sin, cos)`` of the prediction and the truth (:func:`~capsprobe.metrics.upside.angle_error`);
  a scalar factor (the elevation) is regressed as it is. Beside every probe, the same probe on a *control task*
  (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks", EMNLP): the factor values shuffled
  within class (and within instance), so the targets keep each class's distribution but lose their tie to the image;
  ``selectivity = R^2(real) - R^2(control)`` says how much of the probe's score comes from the representation
  rather than from the probe's own capacity.
- :func:`pose_r2_novel`: the probe fitted on familiar viewpoints and scored on novel ones (does the pose code
  extrapolate? Hinton, Sabour & Frosst 2018's protocol, read from the representation).
- :func:`dci`: which dimensions carry which factor (Eastwood & Williams 2018).
- :func:`step_map`: the fitted linear map between an instance at azimuth ``a`` and at ``a + step``, its gain over
  the identity and whether two steps compose into the double step.

Splitting by instance: smallNORB numbers its instances 0-9 *within* each category, so with ``groups`` (the class)
an instance is the pair (class, instance). With ``instance`` given, no instance has images on both sides: the
representation of a held-out image's own instance at another viewpoint or lighting never trains the probe.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor

from ..errors import InvalidInputError
from .functional import (
    FLOOR,
    LEVEL,
    PENALTIES,
    TooFewImagesError,
    _grouped_split,
    _np,
    _pca,
    gain_value,
    linear_fit,
    percentile_interval,
    ratio,
    resample_index,
    split_halves,
)
from .lie import composition_terms
from .upside import angle_error

__all__ = [
    "ANGULAR",
    "DCI",
    "FactorScore",
    "MLP_SETTINGS",
    "NovelPoseTruth",
    "PROBES",
    "PoseTruth",
    "StepMap",
    "angle_targets",
    "control_factors",
    "dci",
    "factor_columns",
    "pose_r2",
    "pose_r2_novel",
    "pose_split",
    "step_map",
]

ANGULAR: tuple[str, ...] = ("azimuth",)  # factors read as angles in degrees, regressed through (cos, sin)
PROBES: tuple[str, ...] = ("linear", "mlp")
MLP_SETTINGS: dict = dict(  # the small MLP probe (scikit-learn MLPRegressor); random_state is the call's seed
    hidden_layer_sizes=(64,),  # one hidden layer of 64 units
    activation="relu",
    solver="adam",
    alpha=1e-4,  # L2 penalty (scikit-learn's default)
    learning_rate_init=1e-3,
    max_iter=500,  # epochs at most
    early_stopping=True,  # stop when the score on a 10% validation part of the fitting rows stalls ...
    validation_fraction=0.1,
    n_iter_no_change=10,  # ... for 10 epochs
    tol=1e-4,
)
CONTROL_STREAM = 49  # the control shuffle's seed is (seed, 49): a stream apart from the split's


# --- inputs --------------------------------------------------------------------------------------------------------


def factor_columns(factors, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The pose factors as ``{name: (N,) float array}``.

    Args:
        factors: a mapping or a DataFrame of named columns, or an ``(N, F)`` array with ``names``. Angles (the names
            in :data:`ANGULAR`) in degrees: smallNORB's ``info`` azimuth is in units of 10 degrees (0, 2, ..., 34)
            and must be multiplied by 10; the elevation may be in any unit (``R^2`` does not depend on it).
        names: the column names of an array (required for an array: no order is assumed).
    """
    if isinstance(factors, (Mapping, pd.DataFrame)):
        cols = {str(k): _np(factors[k]).ravel() for k in (names if names is not None else list(factors.keys()))}
    else:
        arr = _np(factors)
        arr = arr[:, None] if arr.ndim == 1 else arr
        if names is None or arr.ndim != 2 or arr.shape[1] != len(names):
            raise InvalidInputError(f"factors as an array must be (N, F) with F names, got shape {arr.shape} and "
                                    f"names {names}")
        cols = {str(n): arr[:, k] for k, n in enumerate(names)}
    if not cols or len({len(v) for v in cols.values()}) != 1:
        raise InvalidInputError(f"factors must be one or more columns of one length, got "
                                f"{ {k: len(v) for k, v in cols.items()} }")
    return cols


def angle_targets(degrees) -> np.ndarray:
    """``(N, 2)``: ``(cos a, sin a)`` of angles in degrees (counter-clockwise; 90 degrees is ``(0, 1)``)."""
    rad = np.deg2rad(_np(degrees))
    return np.stack([np.cos(rad), np.sin(rad)], 1)


def _units(n: int, groups, instance) -> np.ndarray | None:
    """Per row, the index of its instance: the pair (group, instance) when both are given, else the instance."""
    if instance is None:
        return None
    inst = np.asarray(instance)
    if len(inst) != n:
        raise InvalidInputError(f"instance must have one entry per row ({n}), got {len(inst)}")
    parts = [pd.factorize(inst)[0]]
    if groups is not None:
        parts.insert(0, pd.factorize(np.asarray(groups))[0])
    return np.unique(np.stack(parts, 1), axis=0, return_inverse=True)[1].ravel()


def pose_split(n: int, seed: int = 0, fit_fraction: float = 0.5, groups=None,
               instance=None) -> tuple[np.ndarray, np.ndarray]:
    """The fitting / held-out rows: :func:`~capsprobe.metrics.functional.split_halves` of the images, or, with
    ``instance``, of the instances (each instance's rows all on one side), stratified by ``groups`` (the class).

    Returns:
        ``(fit, held)`` sorted row indices.

    Raises:
        TooFewImagesError: a side is empty (fewer than 2 images, or 2 instances per class).
    """
    units = _units(n, groups, instance)
    if units is None:
        fit, held = split_halves(n, seed, fit_fraction, None if groups is None else np.asarray(groups))
    else:
        first = np.unique(units, return_index=True)[1]  # one row per instance: its class
        unit_groups = None if groups is None else np.asarray(groups)[first]
        fit_u, _ = split_halves(len(first), seed, fit_fraction, unit_groups)
        in_fit = np.isin(units, fit_u)
        fit, held = np.flatnonzero(in_fit), np.flatnonzero(~in_fit)
    if len(fit) == 0 or len(held) == 0:
        raise TooFewImagesError(f"{n} images leave no fitting or no held-out {'instance' if instance is not None else 'image'}"
                                " (2 instances per class at least)")
    return fit, held


def control_factors(factors, groups=None, instance=None, seed: int = 0, within=None,
                    names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The control task's targets (Hewitt & Liang 2019): the factor values permuted among the rows of each cell
    (class, and instance when given; also ``within``, e.g. familiar vs novel), one permutation for all factors of a
    row, so each cell keeps its multiset of values (and the joint values of a row), and a row's values are those of
    a random image of its cell: the tie to the image is broken.

    Hewitt & Liang's control task gives each word *type* a fixed random label, which a probe can memorise. Here the
    held-out rows are other instances (or other images) than the fitting rows, so no memorisation carries over:
    a probe's control ``R^2`` is about 0, or below 0 by the variance of its guesses (more for a probe that fits
    noise), and ``selectivity`` is then somewhat above ``R^2(real)``. Read both.
    """
    cols = factor_columns(factors, names)
    n = len(next(iter(cols.values())))
    keys = [pd.factorize(np.asarray(k))[0] for k in (groups, instance, within) if k is not None]
    cell = (np.unique(np.stack(keys, 1), axis=0, return_inverse=True)[1].ravel() if keys
            else np.zeros(n, dtype=int))
    rng = np.random.default_rng((seed, CONTROL_STREAM))
    order = np.arange(n)
    for c in np.unique(cell):
        rows = np.flatnonzero(cell == c)
        order[rows] = rows[rng.permutation(len(rows))]
    return {k: v[order] for k, v in cols.items()}


# --- probes --------------------------------------------------------------------------------------------------------


def _features(x: np.ndarray, dim: int | None, fit: np.ndarray) -> np.ndarray:
    """All rows projected on the top ``dim`` principal axes of the fitting rows (None or 0: none) and standardised
    on the fitting rows (a constant column is only centred)."""
    pca = _pca(x, dim, fit) if dim else None
    z = x if pca is None else pca.transform(x)
    mu, sd = z[fit].mean(0), z[fit].std(0)
    sd[sd <= FLOOR * max(float(sd.max()) if sd.size else 0.0, FLOOR)] = 1.0
    return (z - mu) / sd


def _targets(name: str, values: np.ndarray, angular: Sequence[str]) -> np.ndarray:
    return angle_targets(values) if name in angular else values[:, None]


def _probe(z_fit: np.ndarray, y_fit: np.ndarray, z_score: np.ndarray, probe: str,
           seed: int) -> tuple[np.ndarray, float, bool]:
    """Fit a probe on ``(z_fit, y_fit)``, predict ``z_score``: ``(prediction (S, k), log10 relative penalty or NaN,
    at_edge)``. The linear probe's ``at_edge``: the penalty sits at an end of :data:`PENALTIES`; the MLP's: it ran
    ``max_iter`` epochs without early stopping."""
    if probe == "linear":
        alphas = PENALTIES * len(z_fit)
        model = RidgeCV(alphas=alphas).fit(z_fit, y_fit)
        edge = bool(np.isclose(model.alpha_, alphas[0]) or np.isclose(model.alpha_, alphas[-1]))
        pred = model.predict(z_score).reshape(len(z_score), -1)
        return pred, float(np.log10(model.alpha_ / len(z_fit))), edge
    mu, sd = y_fit.mean(0), y_fit.std(0)
    sd[sd <= FLOOR] = 1.0
    mlp = MLPRegressor(random_state=seed, **MLP_SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(z_fit, (y_fit - mu) / sd if y_fit.shape[1] > 1 else ((y_fit - mu) / sd).ravel())
    pred = mlp.predict(z_score).reshape(len(z_score), -1) * sd + mu
    return pred, float("nan"), bool(mlp.n_iter_ >= MLP_SETTINGS["max_iter"])


@dataclass(frozen=True)
class FactorScore:
    """One factor decoded by one probe, on held-out rows.

    Attributes:
        name: the factor.
        r2: held-out ``R^2`` (an angle: the mean of its cosine's and its sine's); NaN where the factor does not vary
            on the held-out rows.
        r2_parts: per target column (an angle: ``(cos, sin)``).
        ci_low, ci_high: the percentile bootstrap interval of ``r2`` over held-out instances (or images).
        angle_error: an angle's mean wrapped error in degrees (NaN for a scalar factor).
        residual, total: ``(H, k)`` per held-out row and target column, ``(y - y_hat)^2`` and ``(y - mean y)^2``
            (mean over the held-out rows): ``R^2 = 1 - sum(residual) / sum(total)`` per column.
        penalty: log10 of the ridge penalty relative to the fitting rows (NaN for the MLP).
        at_edge: the penalty sits at an end of its grid (the MLP: it never stopped early).
    """

    name: str
    r2: float
    r2_parts: tuple[float, ...]
    ci_low: float
    ci_high: float
    angle_error: float
    residual: np.ndarray = field(repr=False)
    total: np.ndarray = field(repr=False)
    penalty: float
    at_edge: bool


def _r2(residual: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Per target column ``1 - sum(residual) / sum(total)``, summed over the rows (``(..., n, k) -> (..., k)``);
    NaN where the target does not vary."""
    tot = total.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > FLOOR, 1 - residual.sum(-2) / np.maximum(tot, FLOOR), np.nan)


def _cluster_sums(terms: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``(C, ...)``: ``terms`` summed per cluster (the bootstrap resamples clusters)."""
    _, inv = np.unique(clusters, return_inverse=True)
    out = np.zeros((inv.max() + 1,) + terms.shape[1:])
    np.add.at(out, inv.ravel(), terms)
    return out


def _boot_r2(residual: np.ndarray, total: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(R,)`` bootstrap ``R^2`` (mean over target columns) from per-cluster sums and resampled clusters."""
    return np.nanmean(_r2(residual[idx], total[idx]), -1)


def _score(name: str, y: np.ndarray, pred: np.ndarray, penalty: float, edge: bool, clusters: np.ndarray,
           idx: np.ndarray, angular: Sequence[str], truth: np.ndarray, level: float) -> FactorScore:
    residual = (y - pred) ** 2
    total = (y - y.mean(0)) ** 2
    parts = _r2(residual, total)
    r2 = float(np.mean(parts)) if not np.isnan(parts).any() else float("nan")
    lo, hi = percentile_interval(_boot_r2(_cluster_sums(residual, clusters), _cluster_sums(total, clusters), idx),
                                 level)
    err = float("nan")
    if name in angular:
        err = float(angle_error(np.rad2deg(np.arctan2(pred[:, 1], pred[:, 0])), truth).mean())
    return FactorScore(name=name, r2=r2, r2_parts=tuple(float(p) for p in parts), ci_low=lo, ci_high=hi,
                       angle_error=err, residual=residual, total=total, penalty=penalty, at_edge=edge)


@dataclass(frozen=True)
class PoseTruth:
    """Pose factors decoded from a representation by one probe, beside the same probe on the control task.

    Attributes:
        probe: ``"linear"`` or ``"mlp"``.
        dim: the width the probe read (after the PCA).
        fit, held: the fitting and the scored row indices.
        real, control: ``{factor: FactorScore}`` on the true and on the shuffled factor values.
        selectivity: ``{factor: R^2(real) - R^2(control)}``.
        selectivity_ci: its percentile bootstrap interval (the same resamples for both terms: paired).
        n_instances: instances (or images, without ``instance``) on the fitting and the scored side.
        level: the intervals' level.
    """

    probe: str
    dim: int
    fit: np.ndarray = field(repr=False)
    held: np.ndarray = field(repr=False)
    real: dict[str, FactorScore]
    control: dict[str, FactorScore]
    selectivity: dict[str, float]
    selectivity_ci: dict[str, tuple[float, float]]
    n_instances: tuple[int, int]
    level: float = LEVEL

    @property
    def n_fit(self) -> int:
        return len(self.fit)

    @property
    def n_held(self) -> int:
        return len(self.held)

    @property
    def at_edge(self) -> bool:
        """A real probe's penalty at an end of its grid (the MLP: it never stopped early)."""
        return any(s.at_edge for s in self.real.values())

    @property
    def control_at_edge(self) -> bool:
        """A control probe at an end of its grid: expected at the largest penalty (the probe predicts the mean)."""
        return any(s.at_edge for s in self.control.values())

    def row(self) -> dict:
        """One flat row for a table: per factor ``<f>_r2``, ``<f>_r2_low``/``_high``, ``<f>_control_r2``,
        ``<f>_selectivity`` (+ ``_low``/``_high``), ``<f>_angle_error``, ``<f>_penalty``; and the counts."""
        out: dict = {"probe": self.probe, "dim": self.dim, "n_fit": self.n_fit, "n_held": self.n_held,
                     "n_instances_fit": self.n_instances[0], "n_instances_held": self.n_instances[1],
                     "at_edge": self.at_edge, "control_at_edge": self.control_at_edge}
        for name, s in self.real.items():
            c = self.control[name]
            out |= {f"{name}_r2": s.r2, f"{name}_r2_low": s.ci_low, f"{name}_r2_high": s.ci_high,
                    f"{name}_control_r2": c.r2, f"{name}_control_r2_low": c.ci_low,
                    f"{name}_control_r2_high": c.ci_high, f"{name}_selectivity": self.selectivity[name],
                    f"{name}_selectivity_low": self.selectivity_ci[name][0],
                    f"{name}_selectivity_high": self.selectivity_ci[name][1], f"{name}_angle_error": s.angle_error,
                    f"{name}_penalty": s.penalty, f"{name}_control_penalty": c.penalty}
        return out


def _decode(x: np.ndarray, cols: dict[str, np.ndarray], control: dict[str, np.ndarray], fit: np.ndarray,
            score: np.ndarray, units: np.ndarray | None, probe: str, dim: int | None, seed: int, n_boot: int,
            angular: Sequence[str], level: float) -> PoseTruth:
    """Fit every factor's probe (and its control's) on ``fit``, score ``score``."""
    if probe not in PROBES:
        raise InvalidInputError(f"probe must be one of {PROBES}, got {probe!r}")
    z = _features(x, dim, fit)
    clusters = score if units is None else units[score]
    n_clusters = len(np.unique(clusters))
    idx = resample_index(n_clusters, n_boot, seed)
    real, ctl, sel, sel_ci = {}, {}, {}, {}
    for name, values in cols.items():
        out = {}
        for kind, v in (("real", values), ("control", control[name])):
            y = _targets(name, v, angular)
            pred, penalty, edge = _probe(z[fit], y[fit], z[score], probe, seed)
            out[kind] = _score(name, y[score], pred, penalty, edge, clusters, idx, angular, v[score], level)
        real[name], ctl[name] = out["real"], out["control"]
        sel[name] = out["real"].r2 - out["control"].r2
        boots = [_boot_r2(_cluster_sums(s.residual, clusters), _cluster_sums(s.total, clusters), idx)
                 for s in (out["real"], out["control"])]
        sel_ci[name] = percentile_interval(boots[0] - boots[1], level)
    n_inst = (len(fit), len(score)) if units is None else (len(np.unique(units[fit])), len(np.unique(units[score])))
    return PoseTruth(probe=probe, dim=z.shape[1], fit=fit, held=score, real=real, control=ctl, selectivity=sel,
                     selectivity_ci=sel_ci, n_instances=n_inst, level=level)


def _inputs(representation, factors, names) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = _np(representation)
    cols = factor_columns(factors, names)
    if x.ndim != 2 or x.shape[0] != len(next(iter(cols.values()))):
        raise InvalidInputError(f"representation must be (N, D) with one row per factor value, got {x.shape} for "
                                f"{len(next(iter(cols.values())))} rows")
    return x, cols


def pose_r2(representation, factors, groups=None, instance=None, probe: str = "linear", pca: int | None = 16,
            seed: int = 0, fit_fraction: float = 0.5, names: Sequence[str] | None = None,
            angular: Sequence[str] = ANGULAR, n_boot: int = 1000, level: float = LEVEL) -> PoseTruth:
    """Held-out ``R^2`` of each pose factor decoded from a representation, beside its control task (module docstring).

    The rows are split by :func:`pose_split` (by instance when ``instance`` is given, stratified by ``groups``); the
    representation is projected on the top ``pca`` principal axes of the fitting rows and standardised there; each
    factor gets its own probe, fitted on the fitting rows and scored on the held-out ones:

    - ``linear``: ridge regression, penalty by leave-one-out over :data:`PENALTIES` x the fitting rows
      (scikit-learn ``RidgeCV``); an angle's cosine and sine share one penalty;
    - ``mlp``: scikit-learn ``MLPRegressor`` with :data:`MLP_SETTINGS`: one hidden layer of 64 ReLU units, Adam
      (learning rate 1e-3), L2 penalty 1e-4, early stopping on a random 10% of the fitting rows (not split by
      instance: it only picks the stopping epoch) after 10 epochs without improvement, at most 500 epochs,
      ``random_state = seed``; the targets standardised on the fitting rows.

    The control task (:func:`control_factors`, seeded by ``seed``) runs the same probe on the factor values shuffled
    within class (and instance); ``selectivity = R^2(real) - R^2(control)``.

    Args:
        representation: ``(N, D)`` one row per image (the true-class capsule's pose, the whole representation, or a
            convnet's features).
        factors: the pose factors (:func:`factor_columns`): e.g. ``{"azimuth": degrees, "elevation": ...}``.
        groups: ``(N,)`` class labels: the split is stratified by them and the control shuffles within them.
        instance: ``(N,)`` object instance (numbered within class, as smallNORB): split by instance.
        probe: ``"linear"`` or ``"mlp"``.
        pca: principal axes kept (None or 0: none; a representation of ``pca`` or fewer dimensions is only
            standardised).
        angular: the factors read as angles (degrees).
        n_boot: bootstrap resamples of the held-out instances for the intervals.

    Returns:
        :class:`PoseTruth`.
    """
    x, cols = _inputs(representation, factors, names)
    n = len(x)
    fit, held = pose_split(n, seed, fit_fraction, groups, instance)
    control = control_factors(cols, groups, instance, seed)
    return _decode(x, cols, control, fit, held, _units(n, groups, instance), probe, pca, seed, n_boot, angular,
                   level)


@dataclass(frozen=True)
class NovelPoseTruth:
    """One probe fitted on the familiar rows of the fitting instances, scored on the held-out instances' familiar
    rows (``familiar``, for reference) and novel rows (``novel``); both share ``fit``."""

    familiar: PoseTruth
    novel: PoseTruth

    @property
    def fit(self) -> np.ndarray:
        return self.familiar.fit

    def row(self) -> dict:
        """:meth:`PoseTruth.row` of both, the keys prefixed ``familiar_`` and ``novel_``."""
        return ({f"familiar_{k}": v for k, v in self.familiar.row().items()}
                | {f"novel_{k}": v for k, v in self.novel.row().items()})


def pose_r2_novel(representation, factors, familiar, groups=None, instance=None, probe: str = "linear",
                  pca: int | None = 16, seed: int = 0, fit_fraction: float = 0.5, names: Sequence[str] | None = None,
                  angular: Sequence[str] = ANGULAR, n_boot: int = 1000, level: float = LEVEL) -> NovelPoseTruth:
    """Does the pose read-out extrapolate? :func:`pose_r2` with the probe (and the PCA and standardisation) fitted
    on the *familiar* rows of the fitting instances only, and scored on the held-out instances' novel rows, and, for
    reference, their familiar rows. The control shuffles within (class, instance, familiar or novel), so the fitting
    rows' control targets keep the familiar range.

    Args:
        familiar: ``(N,)`` bool: the row's viewpoint is familiar (smallNORB: azimuths 300-40 degrees, or elevations
            30-40 degrees).
        (the rest as :func:`pose_r2`)

    Returns:
        :class:`NovelPoseTruth`.
    """
    x, cols = _inputs(representation, factors, names)
    n = len(x)
    fam = np.asarray(familiar, dtype=bool)
    if fam.shape != (n,) or fam.all() or not fam.any():
        raise InvalidInputError(f"familiar must be (N,) bool with familiar and novel rows, got shape {fam.shape}")
    fit, held = pose_split(n, seed, fit_fraction, groups, instance)
    fit = fit[fam[fit]]
    control = control_factors(cols, groups, instance, seed, within=fam)
    units = _units(n, groups, instance)
    sides = {}
    for name, rows in (("familiar", held[fam[held]]), ("novel", held[~fam[held]])):
        if len(fit) < 2 or len(rows) == 0:
            raise TooFewImagesError(f"no {name} held-out rows, or fewer than 2 familiar fitting rows")
        sides[name] = _decode(x, cols, control, fit, rows, units, probe, pca, seed, n_boot, angular, level)
    return NovelPoseTruth(familiar=sides["familiar"], novel=sides["novel"])


# --- per-dimension attribution: DCI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCI:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018) of a representation's dimensions
    for the pose factors.

    Attributes:
        factors: the factor columns (an angle as two: ``<name>_cos``, ``<name>_sin``).
        importance: ``(D, K)`` ``R_ij``: the importance of dimension ``i`` for factor ``j``.
        per_dimension: ``(D,)`` ``D_i``, each dimension's disentanglement (NaN for a dimension of no importance).
        weights: ``(D,)`` ``rho_i``, each dimension's share of the total importance.
        disentanglement: ``sum_i rho_i D_i``.
        completeness: ``{factor: C_j}``; overall_completeness: their mean.
        informativeness: ``{factor: held-out R^2}``; overall_informativeness: their mean.
        n_fit, n_held: fitting and held-out rows.
        penalties: per factor, log10 of the ridge penalty relative to the fitting rows.
        at_edge: a penalty at an end of :data:`PENALTIES`.
    """

    factors: tuple[str, ...]
    importance: np.ndarray
    per_dimension: np.ndarray
    weights: np.ndarray
    disentanglement: float
    completeness: dict[str, float]
    overall_completeness: float
    informativeness: dict[str, float]
    overall_informativeness: float
    n_fit: int
    n_held: int
    penalties: dict[str, float]
    at_edge: bool

    def row(self) -> dict:
        """One flat row: overall scores, then ``completeness_<f>`` and ``informativeness_<f>`` per factor."""
        out: dict = {"disentanglement": self.disentanglement, "completeness": self.overall_completeness,
                     "informativeness": self.overall_informativeness, "n_fit": self.n_fit, "n_held": self.n_held,
                     "at_edge": self.at_edge}
        for f in self.factors:
            out |= {f"completeness_{f}": self.completeness[f], f"informativeness_{f}": self.informativeness[f],
                    f"penalty_{f}": self.penalties[f]}
        return out


def _normalised_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of a probability matrix in base ``base`` (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    return h / np.log(base)


def dci(representation, factors, groups=None, instance=None, pca: int | None = None, seed: int = 0,
        fit_fraction: float = 0.5, names: Sequence[str] | None = None,
        angular: Sequence[str] = ANGULAR) -> DCI:
    """DCI (Eastwood & Williams, "A framework for the quantitative evaluation of disentangled representations",
    ICLR 2018) of the representation's dimensions for the pose factors.

    Why DCI and not MIG (Chen et al. 2018, "Isolating sources of disentanglement in VAEs"): MIG needs the mutual
    information between each code dimension and each factor, estimated by discretising continuous codes (a choice
    of bins that moves the score) and defined for discrete factors; an angle's information is then in two
    dimensions at once for any linear code, which MIG's gap between the best two dimensions reads as entanglement.
    DCI takes continuous factors through a regressor, attributes every dimension, and its informativeness is the
    held-out ``R^2`` of the same linear read-out as :func:`pose_r2`.

    Definitions (the paper's section 3). With ``R_ij >= 0`` the importance of dimension ``i`` for factor ``j``
    (``D`` dimensions, ``K`` factors):

    - disentanglement of dimension ``i``: ``D_i = 1 - H_K(P_i.)``, ``P_ij = R_ij / sum_k R_ik``, ``H_K`` the entropy
      in base ``K`` (1: the dimension serves one factor); overall ``sum_i rho_i D_i`` with
      ``rho_i = sum_j R_ij / sum_ij R_ij`` (dimensions of no importance weigh nothing);
    - completeness of factor ``j``: ``C_j = 1 - H_D(P~_.j)``, ``P~_ij = R_ij / sum_k R_kj`` (1: one dimension
      carries the factor); the overall completeness is the mean over factors;
    - informativeness of factor ``j``: the paper's prediction error of the regressor, here the held-out ``R^2``
      (higher is better; ``1 - R^2`` is its normalised squared error); the overall, the mean.

    Importances: the absolute coefficients of a ridge regression of each factor, standardised on the fitting rows,
    on the dimensions, standardised on the fitting rows (penalty by leave-one-out over :data:`PENALTIES`, one per
    factor). The paper uses the lasso's absolute weights or a random forest's importances. Absolute coefficients on
    standardised inputs and targets are the linear probe's own read-out (so the attribution explains exactly the
    ``R^2`` :func:`pose_r2` reports), deterministic and fast; gradient-boosted or forest importances need their own
    tuning and many more rows, and credit a dimension for nonlinear use the linear probe cannot make. Ridge shares
    weight between correlated dimensions where the lasso picks one, so a factor copied on two dimensions reads
    ``C = 1 - log 2 / log D`` (the copy is real redundancy), not 1.

    An angle is two factors, its cosine and its sine: a 2-D rotation code holds each on one axis, and no single
    axis can hold an angle linearly. The entropies are normalised by ``log D``: compare representations at one
    width (the true-class pose's 16 dimensions against a 16-D PCA of a convnet's features: ``pca=16``; the
    principal axes are then the dimensions attributed). Default: no PCA, so the representation's own axes are
    attributed (does dimension ``k`` of the capsule track the azimuth?).

    Args:
        (as :func:`pose_r2`; ``pca`` defaults to None here)

    Returns:
        :class:`DCI`.
    """
    x, cols = _inputs(representation, factors, names)
    n = len(x)
    fit, held = pose_split(n, seed, fit_fraction, groups, instance)
    z = _features(x, pca, fit)
    names_out, targets = [], []
    for name, v in cols.items():
        if name in angular:
            t = angle_targets(v)
            names_out += [f"{name}_cos", f"{name}_sin"]
            targets += [t[:, 0], t[:, 1]]
        else:
            names_out.append(name)
            targets.append(v)
    y = np.stack(targets, 1)
    mu, sd = y[fit].mean(0), y[fit].std(0)
    sd[sd <= FLOOR] = 1.0
    y = (y - mu) / sd
    alphas = PENALTIES * len(fit)
    d, k = z.shape[1], y.shape[1]
    importance = np.empty((d, k))
    informativeness, penalties, edge = {}, {}, False
    for j, name in enumerate(names_out):
        model = RidgeCV(alphas=alphas).fit(z[fit], y[fit, j])
        importance[:, j] = np.abs(model.coef_).ravel()
        pred = model.predict(z[held]).ravel()
        r2 = _r2(((y[held, j] - pred) ** 2)[:, None], ((y[held, j] - y[held, j].mean()) ** 2)[:, None])[0]
        informativeness[name] = float(r2)
        penalties[name] = float(np.log10(model.alpha_ / len(fit)))
        edge = edge or bool(np.isclose(model.alpha_, alphas[0]) or np.isclose(model.alpha_, alphas[-1]))
    row_sum = importance.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_dim = 1 - _normalised_entropy(importance / row_sum, max(k, 2))
        per_dim = np.where(row_sum.ravel() > 0, per_dim, np.nan)
    total = importance.sum()
    weights = row_sum.ravel() / total if total > 0 else np.zeros(d)
    disentanglement = float(np.nansum(weights * per_dim)) if k > 1 else 1.0
    col_sum = importance.sum(0, keepdims=True)
    completeness_j = 1 - _normalised_entropy((importance / np.where(col_sum > 0, col_sum, 1.0)).T, max(d, 2))
    completeness = {f: float(c) for f, c in zip(names_out, completeness_j)}
    return DCI(factors=tuple(names_out), importance=importance, per_dimension=per_dim, weights=weights,
               disentanglement=disentanglement, completeness=completeness,
               overall_completeness=float(np.mean(completeness_j)), informativeness=informativeness,
               overall_informativeness=float(np.mean(list(informativeness.values()))), n_fit=len(fit),
               n_held=len(held), penalties=penalties, at_edge=edge)


# --- the step map and its composition ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepMap:
    """The fitted map between an instance at azimuth ``a`` and at ``a + step``, and how two steps compose.

    Attributes:
        gain: held-out gain over the identity of ``phi(a + step) ~ M phi(a) + b``
            (:func:`~capsprobe.metrics.functional.gain_value`: 1 - residual / identity's residual).
        error: held-out ``1 - R^2`` of the same fit.
        composition: ``|M_2s z - M_s M_s z| / |M_2s z|`` on held-out images, root of the ratio of sums (the
            composition metric of :func:`capsprobe.metrics.lie.composition_terms`, reported as
            :mod:`capsprobe.probe.lie` reports it).
        composition_moved: the same difference over the double step's movement ``|M_2s z - z|`` (NaN when it does
            not move).
        ci: ``{"gain" | "composition" | "composition_moved": (low, high)}``, percentile bootstrap over held-out
            instances (or pairs).
        fit, held: the source rows of the fitting and held-out step pairs.
        n_pairs: ``(fitting, held-out)`` step pairs; n_triples: the same for the composition's (a, a+s, a+2s).
        penalty: log10 relative penalty of the step map (median over groups); at_edge: it sits at a grid end.
    """

    gain: float
    error: float
    composition: float
    composition_moved: float
    ci: dict[str, tuple[float, float]]
    fit: np.ndarray = field(repr=False)
    held: np.ndarray = field(repr=False)
    n_pairs: tuple[int, int]
    n_triples: tuple[int, int]
    penalty: float
    at_edge: bool

    def row(self) -> dict:
        out: dict = {"gain": self.gain, "error": self.error, "composition": self.composition,
                     "composition_moved": self.composition_moved, "n_pairs_fit": self.n_pairs[0],
                     "n_pairs_held": self.n_pairs[1], "n_triples_fit": self.n_triples[0],
                     "n_triples_held": self.n_triples[1], "penalty": self.penalty, "at_edge": self.at_edge}
        for k, (lo, hi) in self.ci.items():
            out |= {f"{k}_low": lo, f"{k}_high": hi}
        return out


def _pairs_of(pairs, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    src, dst = (np.asarray(p, dtype=int).ravel() for p in pairs)
    if len(src) != len(dst) or len(src) == 0 or src.min(initial=0) < 0 or max(src.max(), dst.max()) >= n:
        raise InvalidInputError(f"{what} pairs must be two index arrays of one length into {n} rows")
    if len(np.unique(src)) != len(src):
        raise InvalidInputError(f"{what} pairs: each source row at most once")
    return src, dst


def _ratio_ci(num: np.ndarray, den: np.ndarray, clusters: np.ndarray, seed: int, n_boot: int, level: float,
              transform) -> tuple[float, float]:
    a, b = _cluster_sums(num, clusters), _cluster_sums(den, clusters)
    idx = resample_index(len(a), n_boot, seed)
    return percentile_interval(transform(ratio(a[idx], b[idx])), level)


def step_map(representation, step, double, groups=None, instance=None, seed: int = 0, fit_fraction: float = 0.5,
             n_boot: int = 1000, level: float = LEVEL) -> StepMap:
    """The fitted linear map from an instance's representation at azimuth ``a`` to the same instance at
    ``a + step`` (same elevation and lighting), its gain, and its composition error across two steps.

    The map is capsprobe's equivariance fit (Lenc & Vedaldi 2015; :func:`~capsprobe.metrics.functional.linear_fit`:
    standardised ridge, penalty by leave-one-out, one map per group) with the pairs as ``(phi(x), phi(Tx))``; its
    gain over the identity is :func:`~capsprobe.metrics.functional.gain_value`. The composition is
    :func:`capsprobe.metrics.lie.composition_terms` with ``a = b = step``: ``M_s`` and ``M_2s`` fitted in one frame
    on the fitting half and ``sqrt(sum |M_2s z - M_s M_s z|^2 / sum |M_2s z|^2)`` over held-out images, i.e.
    ``|M_2s - M_s M_s| / |M_2s|`` on the held-out images (0 when the map acts as a group: a rotation in depth that
    the representation carries linearly). The rows are split by :func:`pose_split` (by instance when given), and a
    pair lies on its source row's side.

    Args:
        representation: ``(N, D)``.
        step: ``(src, dst)`` index arrays: row ``dst[k]`` is row ``src[k]``'s instance at azimuth ``+ step``.
        double: ``(src, dst)``: the same at ``+ 2 step``. The composition uses the sources in both.
        groups: ``(N,)`` classes: stratify the split, one map per class (as capsule poses are fitted).
        instance: ``(N,)`` instances (numbered within class): split by instance; a pair must stay in its instance.

    Returns:
        :class:`StepMap`.
    """
    x = _np(representation)
    if x.ndim != 2:
        raise InvalidInputError(f"representation must be (N, D), got {x.shape}")
    n = len(x)
    s_src, s_dst = _pairs_of(step, n, "step")
    d_src, d_dst = _pairs_of(double, n, "double-step")
    units = _units(n, groups, instance)
    if units is not None and ((units[s_src] != units[s_dst]).any() or (units[d_src] != units[d_dst]).any()):
        raise InvalidInputError("a step pair joins two instances; pairs must stay within an instance")
    fit_rows, _ = pose_split(n, seed, fit_fraction, groups, instance)
    in_fit = np.zeros(n, dtype=bool)
    in_fit[fit_rows] = True
    g = None if groups is None else np.asarray(groups)

    # the step map and its gain: one row per step pair
    split = (np.flatnonzero(in_fit[s_src]), np.flatnonzero(~in_fit[s_src]))
    lf = linear_fit(x[s_src], x[s_dst], seed, fit_fraction, None if g is None else g[s_src], split=split)
    clusters = s_src[lf.held] if units is None else units[s_src[lf.held]]
    change = lf.change if lf.change is not None else np.zeros_like(lf.residual)
    gain = gain_value(lf.residual, change)
    error = float(ratio(lf.residual, lf.total))
    ci = {"gain": _ratio_ci(lf.residual, change, clusters, seed, n_boot, level, lambda r: 1 - r)}

    # composition: one row per source with both a step and a double step
    common, i_s, i_d = np.intersect1d(s_src, d_src, return_indices=True)
    t_split = (np.flatnonzero(in_fit[common]), np.flatnonzero(~in_fit[common]))
    tg = None if g is None else g[common]
    _, t_fit, t_held = _grouped_split(len(common), seed, fit_fraction, tg, t_split)
    moved = {1.0: x[s_dst[i_s]], 2.0: x[d_dst[i_d]]}
    diff, norm, move = composition_terms(x[common], moved, 1.0, 1.0, seed, fit_fraction, tg, split=t_split)
    t_clusters = common[t_held] if units is None else units[common[t_held]]
    comp = float(np.sqrt(ratio(diff, norm)))
    moves = move.sum() > FLOOR
    comp_moved = float(np.sqrt(ratio(diff, move))) if moves else float("nan")
    ci["composition"] = _ratio_ci(diff, norm, t_clusters, seed, n_boot, level, np.sqrt)
    ci["composition_moved"] = (_ratio_ci(diff, move, t_clusters, seed, n_boot, level, np.sqrt) if moves
                               else (float("nan"), float("nan")))
    return StepMap(gain=gain, error=error, composition=comp, composition_moved=comp_moved, ci=ci,
                   fit=s_src[split[0]], held=s_src[lf.held], n_pairs=(len(split[0]), len(lf.held)),
                   n_triples=(len(t_fit), len(t_held)), penalty=lf.penalty, at_edge=lf.at_edge)
