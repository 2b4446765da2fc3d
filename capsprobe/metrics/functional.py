"""Invariance and equivariance metrics: pure functions on arrays, one row of the results table each.

Notation (DESIGN.md): ``s(x)`` class scores, ``pred = argmax s``, ``conf = max s``, ``phi(x)`` the
representation, ``T`` a transformation. Inputs are NumPy arrays or tensors (converted to float64 NumPy);
every function returns plain floats. Ridge regression, PCA and ROC AUC come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score

__all__ = [
    "FLOOR",
    "LEVEL",
    "LinearFit",
    "PENALTIES",
    "RESOLUTION",
    "SHRINKAGE",
    "TooFewImagesError",
    "accuracy",
    "auroc_rows",
    "bootstrap_auroc_ci",
    "resampled_auroc",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "bootstrap_ratio_ci",
    "confidence_drop",
    "consistency",
    "decodability",
    "decodability_terms",
    "equivariance_error",
    "equivariance_gain",
    "equivariance_ratio",
    "equivariance_terms",
    "gain_value",
    "identity_change",
    "invariance_error",
    "invariance_terms",
    "kept_variance",
    "linear_fit",
    "pca_project",
    "percentile_interval",
    "ratio",
    "reconstruction_terms",
    "resample_index",
    "scramble_auroc",
    "split_halves",
    "true_class_score",
    "whitened_terms",
]

PENALTIES = np.logspace(-6, 3, 19)  # ridge penalties relative to the number of fitting rows (standardised data)
SHRINKAGE = 1e-3  # covariance ridge of the whitened invariance, relative to the mean variance
RESOLUTION = 1e-6  # a change of the representation below this share of its own size is float32 rounding, not a move
LEVEL = 0.95


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def accuracy(pred, labels) -> float:
    """``mean[pred(Tx) = y]``."""
    return float(np.mean(_np(pred) == _np(labels)))


def consistency(pred_t, pred_clean) -> float:
    """``mean[pred(Tx) = pred(x)]``: how often the decision survives the transformation."""
    return float(np.mean(_np(pred_t) == _np(pred_clean)))


def confidence_drop(conf_clean, conf_t) -> float:
    """``mean[conf(x) - conf(Tx)]`` (positive: less sure of the transformed image)."""
    return float(np.mean(_np(conf_clean) - _np(conf_t)))


def true_class_score(scores_t, labels) -> float:
    """``mean[s_y(Tx)]``: the score of the true class after the transformation."""
    s, y = _np(scores_t), _np(labels).astype(int)
    return float(np.mean(s[np.arange(len(y)), y]))


FLOOR = 1e-12  # the one floor of every ratio, for point estimates and bootstrap resamples alike


def ratio(num, den) -> float | np.ndarray:
    """``sum(num) / sum(den)`` along the last axis with the denominator floored at :data:`FLOOR` (one rule for the
    point estimate and every bootstrap resample, so the interval and the estimate agree)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return num.sum(-1) / np.maximum(den.sum(-1), FLOOR)


def split_halves(n: int, seed: int = 0, fit_fraction: float = 0.5,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The seeded fitting / held-out split of ``n`` images every fitted metric uses (stratified by ``groups``).

    Returns:
        ``(fit, held)`` index arrays, each sorted. With ``groups``, each group is split on its own (same fraction).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        k = int(round(n * fit_fraction))
        return np.sort(order[:k]), np.sort(order[k:])
    groups = np.asarray(groups)
    fit, held = [], []
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        k = int(round(len(members) * fit_fraction))
        fit.append(members[:k])
        held.append(members[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def _pair(phi_clean, phi_t, same_width: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y = _np(phi_clean), _np(phi_t)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or (same_width and x.shape != y.shape):
        raise ValueError(f"representations must be (N, D) arrays with one N{' and one D' if same_width else ''}, "
                         f"got {x.shape} and {y.shape}")
    return x, y


def _groups_of(groups, n: int) -> np.ndarray:
    return np.zeros(n, dtype=int) if groups is None else np.asarray(groups)


def _grouped_split(n: int, seed: int, fit_fraction: float, groups, split=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels per image, and the fitting / held-out indices restricted to groups with at least 2 fitting images
    (a class seen too rarely to fit is left out, never pooled with another)."""
    g = _groups_of(groups, n)
    fit, held = split if split is not None else split_halves(n, seed, fit_fraction, None if groups is None else g)
    counts = pd.Series(g[fit]).value_counts()
    usable = counts.index[counts >= 2].to_numpy()
    fit, held = fit[np.isin(g[fit], usable)], held[np.isin(g[held], usable)]
    if len(held) == 0:
        raise TooFewImagesError(f"{n} images leave no {'class' if groups is not None else 'set'} with 2 fitting and 1 "
                                "held-out image")
    return g, fit, held


class TooFewImagesError(ValueError):
    """Too few images (per class, for per-class metrics) to fit on one half and score on the other."""


def _scale(a: np.ndarray) -> float:
    """Root mean per-dimension variance: one positive number that standardises a representation (1 if constant)."""
    s = float(np.sqrt(a.var(0).mean())) if len(a) else 0.0
    return s if s > 0 and np.isfinite(s) else 1.0


def invariance_terms(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5, groups=None,
                     shrinkage: float = SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out image, the whitened change ``d' W d`` (``d = phi(Tx) - phi(x)``) and the whitened clean spread
    ``c' W c`` (``c = phi(x) - mean``), with ``W = (Sigma + lambda I)^-1`` from the *clean* representations of the
    fitting half (per group when ``groups`` are given, e.g. one per true class for poses) and
    ``lambda = shrinkage * trace(Sigma) / D`` (a ridge-regularised covariance).

    In the whitened clean basis both terms are unchanged by any invertible linear map ``A`` of the representation
    (exactly for ``shrinkage = 0``: ``(A d)' (A Sigma A')^-1 (A d) = d' Sigma^-1 d``), so models with different
    bases and scales compare. Mahalanobis (1936) distance; the same basis-free reading as Kornblith et al. (ICML
    2019) ask of representation similarity, here of a representation and its transformed self.
    """
    x, y = _pair(phi_clean, phi_t, same_width=True)
    return whitened_terms(x, y - x, seed, fit_fraction, groups, shrinkage)


def whitened_terms(phi_clean, change, seed: int = 0, fit_fraction: float = 0.5, groups=None,
                   shrinkage: float = SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out image, ``d' W d`` for a given change ``d`` of the representation (``phi(Tx) - phi(x)``, or the
    Lie derivative ``d/dt phi(g_t x)``) and ``c' W c`` for the clean spread, whitened as in
    :func:`invariance_terms` (which calls this with ``d = phi(Tx) - phi(x)``)."""
    x, y = _pair(phi_clean, change, same_width=True)
    n = len(x)
    if n < 4:
        raise ValueError(f"invariance needs at least 4 images, got {n}")
    g, fit, held = _grouped_split(n, seed, fit_fraction, groups)
    num, den = np.empty(len(held)), np.empty(len(held))
    pos = {i: k for k, i in enumerate(held)}
    for group in np.unique(g):
        f, h = fit[g[fit] == group], held[g[held] == group]
        if len(h) == 0:
            continue
        mu = x[f].mean(0)
        cov = np.cov(x[f], rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
        lam = shrinkage * np.trace(cov) / cov.shape[0]
        vals, vecs = np.linalg.eigh(cov + lam * np.eye(cov.shape[0]))
        keep = vals > max(vals.max(), 0) * 1e-12  # only a constant representation loses directions here
        w = vecs[:, keep] / np.sqrt(vals[keep])  # whitening: |w' v|^2 = v' (Sigma + lambda I)^-1 v
        d, c = y[h] @ w, (x[h] - mu) @ w
        idx = [pos[i] for i in h]
        num[idx], den[idx] = (d**2).sum(1), (c**2).sum(1)
    return num, den


def invariance_error(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5, groups=None,
                     shrinkage: float = SHRINKAGE) -> float:
    """``E d' W d / E c' W c`` on held-out images (:func:`invariance_terms`): 0 when the representation does not
    move, about 2 when ``phi(Tx)`` is an independent draw from the clean distribution; basis- and scale-free."""
    return float(ratio(*invariance_terms(phi_clean, phi_t, seed, fit_fraction, groups, shrinkage)))


@dataclass(frozen=True)
class LinearFit:
    """A held-out linear fit ``phi(Tx) ~ M phi(x) + b`` and its baselines, per held-out image.

    Attributes:
        held: the held-out image indices (rows of the terms below).
        residual: ``|phi(Tx) - M phi(x) - b|^2``.
        total: ``|phi(Tx) - mean phi(Tx)|^2`` (mean over the held-out images of the group): ``1 - R^2`` is
            ``sum(residual) / sum(total)``.
        change: ``|phi(Tx) - phi(x)|^2``, the identity map's residual (None when the widths differ); all 0 when the
            held-out images moved by less than :data:`RESOLUTION` of the representation's size (:func:`identity_change`).
        label: ``|phi(Tx) - class mean of phi(Tx)|^2``, the class-label baseline (class means of the fitting half;
            None without labels).
        penalty: log10 of the chosen ridge penalty relative to the number of fitting images (median over groups).
        at_edge: a chosen penalty sits at an end of :data:`PENALTIES`.
    """

    held: np.ndarray
    residual: np.ndarray
    total: np.ndarray
    change: np.ndarray | None
    label: np.ndarray | None
    penalty: float
    at_edge: bool


def linear_fit(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5, groups=None, labels=None,
               split: tuple[np.ndarray, np.ndarray] | None = None) -> LinearFit:
    """Fit ``phi(Tx) ~ M phi(x) + b`` on a seeded half of the images, score it on the other half.

    Lenc & Vedaldi, "Understanding image representations by measuring their equivariance and equivalence",
    CVPR 2015: a representation is equivariant to ``T`` when a map ``M_T`` predicts ``phi(Tx)`` from ``phi(x)``.
    ``M`` is linear, fitted by ridge regression (scikit-learn ``RidgeCV``, the penalty chosen by efficient
    leave-one-out on the fitting half from :data:`PENALTIES` times the number of fitting images) on *standardised*
    representations: each side is divided by its root mean per-dimension variance on the fitting half, so the fit
    and every ratio built from it are unchanged when either representation is multiplied by a positive constant.
    With ``groups`` (e.g. true classes for capsule poses) one map and one normaliser per group, never pooled.

    Args:
        split: ``(fit, held)`` indices to use instead of :func:`split_halves` (e.g. to share a PCA's fitting half).
    """
    x, y = _pair(phi_clean, phi_t)
    n = len(x)
    if n < 4:
        raise ValueError(f"equivariance needs at least 4 images, got {n}")
    g, fit, held = _grouped_split(n, seed, fit_fraction, groups, split)
    residual, total = np.empty(len(held)), np.empty(len(held))
    pos = {i: k for k, i in enumerate(held)}
    penalties, edge = [], False
    for group in np.unique(g):
        f, h = fit[g[fit] == group], held[g[held] == group]
        if len(h) == 0:
            continue
        sx, sy = _scale(x[f]), _scale(y[f])
        model = RidgeCV(alphas=PENALTIES * len(f)).fit(x[f] / sx, y[f] / sy)
        pred = model.predict(x[h] / sx).reshape(len(h), -1) * sy
        idx = [pos[i] for i in h]
        residual[idx] = ((y[h] - pred) ** 2).sum(1)
        total[idx] = ((y[h] - y[h].mean(0)) ** 2).sum(1)
        rel = float(model.alpha_) / len(f)
        penalties.append(np.log10(rel))
        edge = edge or bool(np.isclose(rel, PENALTIES[0]) or np.isclose(rel, PENALTIES[-1]))
    change = identity_change(x[held], y[held]) if x.shape == y.shape else None
    label = None
    if labels is not None:
        lab = np.asarray(labels)
        means = {c: y[fit][lab[fit] == c].mean(0) for c in np.unique(lab[fit])}
        overall = y[fit].mean(0)
        label = np.array([((y[i] - means.get(lab[i], overall)) ** 2).sum() for i in held])
    return LinearFit(held=held, residual=residual, total=total, change=change, label=label,
                     penalty=float(np.median(penalties)), at_edge=edge)


def identity_change(phi_clean, phi_t) -> np.ndarray:
    """Per image ``|phi(Tx) - phi(x)|^2`` (the identity map's residual), set to 0 for every image when the root mean
    square change is below :data:`RESOLUTION` of the root mean square size ``|phi|``: float32 keeps about 7 digits,
    so an invariant representation computed in another order (a sum over permuted pixels) moves by about 1e-7 of
    itself, which is no change. Without this floor the gain over the identity of an exactly invariant
    representation compared the fitted map's ridge shrinkage with that rounding (the ink under a quarter turn read
    -18, not 0: ``tests/metrics/test_known_answers.py``)."""
    x, y = _pair(phi_clean, phi_t, same_width=True)
    change = ((y - x) ** 2).sum(1)
    size = ((x**2).sum(1) + (y**2).sum(1)) / 2
    return np.zeros_like(change) if change.sum() <= RESOLUTION**2 * size.sum() else change


def equivariance_terms(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5,
                       groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out residual and total terms of :func:`linear_fit`: their ratio of sums is ``1 - R^2``."""
    fit = linear_fit(phi_clean, phi_t, seed, fit_fraction, groups)
    return fit.residual, fit.total


def equivariance_error(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5, groups=None) -> float:
    """Held-out ``1 - R^2`` of the standardised ridge fit ``phi(Tx) ~ M phi(x) + b`` (Lenc & Vedaldi 2015).

    0: the change of the representation is predicted by one linear map (equivariant, which includes invariant:
    read it beside :func:`equivariance_gain`); about 1: ``phi(Tx)`` is unpredictable from ``phi(x)``. ``R^2`` is
    variance-weighted over dimensions, normalised by the variance of ``phi(Tx)`` (not of ``phi(x)``).
    """
    return equivariance_ratio(*equivariance_terms(phi_clean, phi_t, seed, fit_fraction, groups))


def equivariance_ratio(residual, total) -> float:
    """``1 - R^2`` from held-out terms (0 when nothing varies and the prediction is exact, 1 when it is not)."""
    residual, total = _np(residual), _np(total)
    if total.sum() <= FLOOR:
        return 0.0 if residual.sum() <= FLOOR else 1.0
    return float(ratio(residual, total))


def equivariance_gain(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5, groups=None) -> float:
    """``1 - sum|phi(Tx) - M phi(x) - b|^2 / sum|phi(Tx) - phi(x)|^2`` on held-out images: how much of the change
    the fitted map explains beyond the identity map (0 when the representation does not move at all)."""
    fit = linear_fit(phi_clean, phi_t, seed, fit_fraction, groups)
    return gain_value(fit.residual, fit.change)


def gain_value(residual, change) -> float:
    """``1 - sum(residual) / sum(change)``; 0 when the representation does not change (nothing to explain)."""
    residual, change = _np(residual), _np(change)
    return 0.0 if change.sum() <= FLOOR else float(1 - ratio(residual, change))


def pca_project(phi_clean, phi_t, dim: int = 16, fit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Project both representations on the top ``dim`` principal axes of the *clean* representations of the
    fitting images ``fit`` (all images when None; scikit-learn PCA). Used to compare models at one size: every
    representation is reduced to 16-D before the 16-D fit. A representation of ``dim`` or fewer dimensions is
    returned as it is."""
    x, y = _pair(phi_clean, phi_t)
    pca = _pca(x, dim, fit)
    return (x, y) if pca is None else (pca.transform(x), pca.transform(y))


def _pca(x: np.ndarray, dim: int, fit: np.ndarray | None) -> PCA | None:
    if x.shape[1] <= dim:
        return None
    rows = x if fit is None else x[fit]
    return PCA(n_components=min(dim, len(rows)), random_state=0).fit(rows)


def kept_variance(phi_clean, dim: int = 16, seed: int = 0, fit_fraction: float = 0.5) -> float:
    """The share of the clean representations' variance (fitting half) the 16-D PCA keeps (1 when already small)."""
    x = _np(phi_clean)
    pca = _pca(x, dim, split_halves(len(x), seed, fit_fraction)[0])
    return 1.0 if pca is None else float(pca.explained_variance_ratio_.sum())


def decodability_terms(phi_clean, phi_moved: Sequence, values: Sequence[float], seed: int = 0, dim: int = 16,
                       fit_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, float]:
    """How well a transformation's magnitude is predicted from ``(phi(x), phi(Tx))`` on held-out images.

    The images are split (:func:`split_halves`); both representations are projected on the 16-D PCA of the clean
    fitting half (``p``, ``q``); the features are ``p``, ``q`` and their normalised outer product
    ``p q' / |p|^2`` (for a linear action ``q = A(m) p`` its entries are the matrix elements of ``A(m)``: for a
    rotation of a plane ``cos m`` and ``sin m``, for a scaling ``m``), each column standardised on the fitting rows;
    a ridge regression (penalty by leave-one-out) on every (fitting image, magnitude) predicts the magnitude.
    A representation that does not move, or whose change does not depend on the magnitude, scores about 0; one
    that carries the magnitude, about 1. Probing with a decoder in the spirit of Alain & Bengio (ICLR 2017
    workshop, "linear classifier probes"), on pairs.

    Args:
        phi_moved: ``phi(T_m x)`` for each magnitude ``m``.
        values: the magnitudes as numbers (same order).

    Returns:
        Per held-out image the squared error summed over magnitudes and the squared deviation of the magnitudes
        from their mean (``R^2 = 1 - sum(residual) / sum(total)``), and the log10 relative penalty chosen.
    """
    x = _np(phi_clean)
    moved = [_pair(x, m)[1] for m in phi_moved]
    v = np.asarray(values, dtype=np.float64)
    if len(moved) != len(v) or len(np.unique(v)) < 2:
        raise ValueError("decodability needs one representation per magnitude and at least 2 distinct magnitudes")
    n = len(x)
    if n < 4:
        raise ValueError(f"decodability needs at least 4 images, got {n}")
    fit, held = split_halves(n, seed, fit_fraction)
    pca = _pca(x, dim, fit)
    project = (lambda a: a - x[fit].mean(0)) if pca is None else pca.transform
    p = project(x)
    norm = (p**2).sum(1, keepdims=True)
    norm = norm + 1e-3 * norm[fit].mean() + FLOOR
    feats = []
    for m in moved:
        q = project(m)
        feats.append(np.concatenate([p, q, (p[:, :, None] * q[:, None, :]).reshape(n, -1) / norm], axis=1))
    z_fit = np.concatenate([f[fit] for f in feats])
    t_fit = np.repeat(v, len(fit))
    mu, sd = z_fit.mean(0), z_fit.std(0)
    sd[sd <= FLOOR * max(float(sd.max()), FLOOR)] = 1.0
    model = RidgeCV(alphas=PENALTIES * len(z_fit)).fit((z_fit - mu) / sd, t_fit)
    pred = np.stack([model.predict((f[held] - mu) / sd) for f in feats], 1)  # (held, M)
    residual = ((pred - v) ** 2).sum(1)
    total = np.full(len(held), ((v - v.mean()) ** 2).sum())
    return residual, total, float(np.log10(model.alpha_ / len(z_fit)))


def decodability(phi_clean, phi_moved: Sequence, values: Sequence[float], seed: int = 0, dim: int = 16) -> float:
    """Held-out ``R^2`` of the magnitude decoded from ``(phi(x), phi(Tx))`` (:func:`decodability_terms`)."""
    residual, total, _ = decodability_terms(phi_clean, phi_moved, values, seed, dim)
    return float(1 - ratio(residual, total))


def scramble_auroc(conf_clean, conf_t) -> float:
    """AUROC of ``conf(x)`` (positives) against ``conf(Tx)`` (negatives), scikit-learn ``roc_auc_score``.

    0.5: the model is as sure of the scrambled images as of the intact ones (blind to the scramble);
    1.0: always less sure of a scrambled image than of any intact one. Not specific to scrambles: any change of
    the image lowers confidence; :func:`selectivity_table` subtracts the matched nuisance.
    """
    a, b = _np(conf_clean), _np(conf_t)
    y_true = np.r_[np.ones(len(a)), np.zeros(len(b))]
    return float(roc_auc_score(y_true, np.r_[a, b]))


def reconstruction_terms(recon, target) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``|recon - target|^2`` and ``|target|^2``: their ratio of sums is a normalised reconstruction
    error (CapsNet; 0 exact, 1 as large as the target itself).

    - equivariance: ``recon = decode(phi(Tx))``, ``target = T(decode(phi(x)))`` with the *same* warp matrix as
      the input (does the pose move the way the image moved?);
    - fidelity: ``recon = decode(phi(Tx))``, ``target = Tx`` (does the pose carry the transformed digit?); at the
      identity this is the clean reconstruction error.
    """
    a, b = _np(recon), _np(target)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return ((a - b) ** 2).sum(1), (b**2).sum(1)



def resample_index(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` bootstrap resamples of ``n`` images (with replacement), seeded: the one resampling scheme."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def percentile_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values`` (along the first axis; NaNs ignored)."""
    lo, hi = np.nanpercentile(_np(values), [50 * (1 - level), 50 * (1 + level)], axis=0)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling images (the first axis) jointly."""
    data = [_np(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise ValueError("bootstrap arrays must have one length")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        values[i] = statistic(*(a[idx] for a in data))
    return percentile_interval(values, level)


def bootstrap_mean_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (vectorised)."""
    v = _np(values)
    return percentile_interval(v[resample_index(len(v), n_boot, seed)].mean(1), level)


def bootstrap_ratio_ci(num, den, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(num) / sum(den)`` over per-image terms (vectorised)."""
    a, b = _np(num), _np(den)
    idx = resample_index(len(a), n_boot, seed)
    return percentile_interval(ratio(a[idx], b[idx]), level)


def bootstrap_auroc_ci(conf_clean, conf_t, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`scramble_auroc`, resampling images (clean and transformed pairs).

    Vectorised with the Mann-Whitney form ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` (average
    ranks for ties), which equals scikit-learn's ``roc_auc_score`` on every resample.
    """
    a, b = _np(conf_clean), _np(conf_t)
    idx = resample_index(len(a), n_boot, seed)
    return percentile_interval(resampled_auroc(a, b, idx), level)


def resampled_auroc(positives, negatives, idx: np.ndarray, block: int = 64) -> np.ndarray:
    """AUROC of ``positives[idx[r]]`` against ``negatives[idx[r]]`` for every bootstrap row ``r``: what
    ``auroc_rows(positives[idx], negatives[idx].reshape(len(idx), -1))`` gives, in ``O(R (n + m))`` instead of a
    sort of every resample.

    A resample is a multiset: image ``i`` drawn ``c_ri`` times. The negatives are sorted once; a row's cumulative
    counts over that order give, for every positive, how many drawn negatives lie below it and how many tie with it,
    so the Mann-Whitney count ``U = sum_i c_ri (#below + #ties / 2)`` is exact integer arithmetic (the average-rank
    form's value). At 10,000 images and 1,000 resamples the rank form sorted 10^3 arrays of 2 x 10^4 values.

    Args:
        positives: ``(n,)`` one score per image.
        negatives: ``(n,)`` or ``(n, k)``: ``k`` scores per image, resampled with it.
        idx: ``(R, n)`` resampled image indices (:func:`resample_index`).
        block: rows handled at once (bounds memory at ``block x n k`` integers).

    Returns:
        ``(R,)`` AUROCs.
    """
    pos = _np(positives).astype(float).ravel()
    n = len(pos)
    neg = _np(negatives).astype(float).reshape(n, -1)
    k = neg.shape[1]
    idx = np.asarray(idx)
    rows = len(idx)
    counts = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
    flat = neg.ravel()  # image i's k scores at i k .. i k + k - 1
    order = np.argsort(flat, kind="stable")
    sorted_neg, owner = flat[order], order // k
    below = np.searchsorted(sorted_neg, pos, side="left")  # negatives strictly below each positive
    upto = np.searchsorted(sorted_neg, pos, side="right")  # ... and those tied with it
    out = np.empty(rows)
    for start in range(0, rows, block):
        c = counts[start:start + block]
        cum = np.zeros((len(c), len(flat) + 1), dtype=np.int64)
        np.cumsum(c[:, owner], axis=1, out=cum[:, 1:])
        twice_u = (c * (cum[:, below] + cum[:, upto])).sum(1)  # 2 U: below counts twice, ties once
        out[start:start + block] = twice_u / (2.0 * n * n * k)
    return out


def auroc_rows(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Row-wise AUROC of ``positives (R, n)`` against ``negatives (R, m)`` by the Mann-Whitney rank sum."""

    n, m = positives.shape[1], negatives.shape[1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    return (ranks[:, :n].sum(1) - n * (n + 1) / 2) / (n * m)
