"""Invariance and equivariance metrics: pure functions on arrays, one row of the results table each.

Notation (DESIGN.md): ``s(x)`` class scores, ``pred = argmax s``, ``conf = max s``, ``phi(x)`` the
representation, ``T`` a transformation. Inputs are NumPy arrays or tensors (converted to float64 NumPy);
every function returns plain floats. Ridge regression, PCA and ROC AUC come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score

__all__ = [
    "METRICS",
    "Condition",
    "Estimate",
    "Metric",
    "TooFewImagesError",
    "accuracy",
    "auroc_rows",
    "bootstrap_ci",
    "bootstrap_auroc_ci",
    "bootstrap_mean_ci",
    "bootstrap_ratio_ci",
    "composition_terms",
    "generator_terms",
    "lie_score_values",
    "subspace_project",
    "whitened_terms",
    "condition_metrics",
    "decodability",
    "decodability_estimate",
    "decodability_terms",
    "confidence_drop",
    "consistency",
    "equivariance_error",
    "equivariance_gain",
    "equivariance_ratio",
    "equivariance_terms",
    "invariance_error",
    "invariance_terms",
    "kept_variance",
    "linear_fit",
    "LinearFit",
    "overview_table",
    "pca_project",
    "percentile_interval",
    "ratio",
    "reconstruction_terms",
    "register_metric",
    "resample_index",
    "roc_table",
    "scramble_auroc",
    "selectivity_table",
    "split_halves",
    "true_class_score",
]

PENALTIES = np.logspace(-6, 3, 19)  # ridge penalties relative to the number of fitting rows (standardised data)
SHRINKAGE = 1e-3  # covariance ridge of the whitened invariance, relative to the mean variance
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
        change: ``|phi(Tx) - phi(x)|^2``, the identity map's residual (None when the widths differ).
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
    change = ((y[held] - x[held]) ** 2).sum(1) if x.shape == y.shape else None
    label = None
    if labels is not None:
        lab = np.asarray(labels)
        means = {c: y[fit][lab[fit] == c].mean(0) for c in np.unique(lab[fit])}
        overall = y[fit].mean(0)
        label = np.array([((y[i] - means.get(lab[i], overall)) ** 2).sum() for i in held])
    return LinearFit(held=held, residual=residual, total=total, change=change, label=label,
                     penalty=float(np.median(penalties)), at_edge=edge)


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
    return percentile_interval(auroc_rows(a[idx], b[idx]), level)


def auroc_rows(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Row-wise AUROC of ``positives (R, n)`` against ``negatives (R, m)`` by the Mann-Whitney rank sum."""
    from scipy.stats import rankdata

    n, m = positives.shape[1], negatives.shape[1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    return (ranks[:, :n].sum(1) - n * (n + 1) / 2) / (n * m)


# --- the metric table: what the probe computes for every condition ------------------------------------------


@dataclass(frozen=True)
class Condition:
    """Per-image values of one model on the clean images and under one transformation at one magnitude.

    Attributes:
        labels: ``(N,)`` true classes.
        clean_scores, scores: ``(N, K)`` class scores of ``x`` and ``Tx``.
        clean_rep, rep: ``(N, F)`` representations ``phi(x)`` and ``phi(Tx)``.
        clean_pose, pose: ``(N, D)`` the true class's pose (models with poses), else None.
        recon_terms: per-image reconstruction equivariance numerator and denominator (models with a decoder).
        fidelity_terms: per-image reconstruction fidelity numerator and denominator (models with a decoder).
        semantic: the condition breaks the parts' relations (a non-identity semantic magnitude).
        identity: the condition is the transformation's identity magnitude.
        fits: cache of the fits several metrics share (filled on first use).
    """

    labels: np.ndarray
    clean_scores: np.ndarray
    scores: np.ndarray
    clean_rep: np.ndarray
    rep: np.ndarray
    clean_pose: np.ndarray | None = None
    pose: np.ndarray | None = None
    recon_terms: tuple[np.ndarray, np.ndarray] | None = None
    fidelity_terms: tuple[np.ndarray, np.ndarray] | None = None
    semantic: bool = False
    identity: bool = False
    fits: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def available(self) -> frozenset[str]:
        """What this condition can feed: ``scores``, ``representation``, ``poses``, ``reconstruction``, ``semantic``."""
        have = {"scores", "representation"}
        if self.pose is not None:
            have.add("poses")
        if self.recon_terms is not None:
            have.add("reconstruction")
        if self.fidelity_terms is not None:
            have.add("fidelity")
        if self.semantic:
            have.add("semantic")
        return frozenset(have)

    def fit(self, which: str, seed: int) -> LinearFit:
        """The held-out linear fit of the full-D representation (``full``), its 16-D PCA (``pca16``, PCA fitted on
        the fitting half) or the true-class pose, one map per class (``pose``); computed once per condition."""
        key = (which, seed)
        if key not in self.fits:
            if which == "full":
                self.fits[key] = linear_fit(self.clean_rep, self.rep, seed, labels=self.labels)
            elif which == "pca16":
                split = split_halves(len(self.labels), seed)
                x, y = pca_project(self.clean_rep, self.rep, 16, fit=split[0])
                self.fits[key] = linear_fit(x, y, seed, split=split)
            elif which == "pose":
                self.fits[key] = linear_fit(self.clean_pose, self.pose, seed, groups=self.labels)
            else:
                raise ValueError(f"unknown fit {which!r}")
        return self.fits[key]


@dataclass(frozen=True)
class Estimate:
    """A metric's value on all images, its 95% bootstrap interval and the number of images behind it.

    The interval always contains the value (a percentile interval of a skewed statistic can miss it by a hair; it is
    widened to the value). ``penalty`` and ``at_edge``: the log10 relative ridge penalty of a fitted metric and
    whether it sat at an end of the grid (NaN / False for the others).
    """

    value: float
    ci: tuple[float, float]
    n: int
    penalty: float = float("nan")
    at_edge: bool = False

    def __post_init__(self):
        lo, hi = self.ci
        object.__setattr__(self, "ci", (float(min(lo, self.value)), float(max(hi, self.value))))


@dataclass(frozen=True)
class Metric:
    """One row of the metric table.

    Attributes:
        name: the ``metric`` column of ``summary.csv``.
        fn: ``fn(condition, seed, n_boot) -> Estimate``; None for a metric the probe computes across conditions
            (``scramble_selectivity``, ``decodability``), registered here for its label and source.
        needs: what the condition must provide (see :attr:`Condition.available`).
        label: how tables and figures name it (says full-D, 16-D or pose where it matters).
        better: ``lower``, ``higher``, or ``neither`` (a baseline).
        short: a terminal-table column name.
        overview: averaged over non-identity magnitudes into the report's overview.
        source: where the definition comes from.
    """

    name: str
    fn: Callable[["Condition", int, int], Estimate] | None
    needs: frozenset[str]
    label: str
    better: str
    short: str = ""
    overview: bool = False
    source: str = ""


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the table the probe iterates (in registration order) and the report reads."""
    if metric.better not in ("lower", "higher", "neither"):
        raise ValueError(f"metric {metric.name}: better must be 'lower', 'higher' or 'neither', got {metric.better!r}")
    METRICS[metric.name] = metric
    return metric


def _mean_estimate(values: np.ndarray, value: float, seed: int, n_boot: int) -> Estimate:
    return Estimate(value, bootstrap_mean_ci(values, n_boot, seed), len(values))


def _ratio_estimate(num: np.ndarray, den: np.ndarray, seed: int, n_boot: int, **extra) -> Estimate:
    return Estimate(float(ratio(num, den)), bootstrap_ratio_ci(num, den, n_boot, seed), len(num), **extra)


def _accuracy(c: Condition, seed: int, n_boot: int) -> Estimate:
    pred = c.scores.argmax(1)
    return _mean_estimate(pred == c.labels, accuracy(pred, c.labels), seed, n_boot)


def _consistency(c: Condition, seed: int, n_boot: int) -> Estimate:
    pred, pred0 = c.scores.argmax(1), c.clean_scores.argmax(1)
    return _mean_estimate(pred == pred0, consistency(pred, pred0), seed, n_boot)


def _confidence_drop(c: Condition, seed: int, n_boot: int) -> Estimate:
    conf0, conf = c.clean_scores.max(1), c.scores.max(1)
    return _mean_estimate(conf0 - conf, confidence_drop(conf0, conf), seed, n_boot)


def _true_class_score(c: Condition, seed: int, n_boot: int) -> Estimate:
    true = c.scores[np.arange(len(c.labels)), c.labels]
    return _mean_estimate(true, true_class_score(c.scores, c.labels), seed, n_boot)


def _invariance(pose: bool) -> Callable[[Condition, int, int], Estimate]:
    def fn(c: Condition, seed: int, n_boot: int) -> Estimate:
        if pose:
            num, den = invariance_terms(c.clean_pose, c.pose, seed, groups=c.labels)
        else:
            num, den = invariance_terms(c.clean_rep, c.rep, seed)
        return _ratio_estimate(num, den, seed, n_boot)
    return fn


def _equivariance(which: str) -> Callable[[Condition, int, int], Estimate]:
    def fn(c: Condition, seed: int, n_boot: int) -> Estimate:
        f = c.fit(which, seed)
        value = equivariance_ratio(f.residual, f.total)
        return Estimate(value, bootstrap_ratio_ci(f.residual, f.total, n_boot, seed), len(f.residual),
                        penalty=f.penalty, at_edge=f.at_edge)
    return fn


def _gain(which: str) -> Callable[[Condition, int, int], Estimate]:
    def fn(c: Condition, seed: int, n_boot: int) -> Estimate:
        f = c.fit(which, seed)
        value = gain_value(f.residual, f.change)
        if value == 0.0 and f.change.sum() <= FLOOR:
            return Estimate(0.0, (0.0, 0.0), len(f.residual), penalty=f.penalty, at_edge=f.at_edge)
        lo, hi = bootstrap_ratio_ci(f.residual, f.change, n_boot, seed)
        return Estimate(value, (1 - hi, 1 - lo), len(f.residual), penalty=f.penalty, at_edge=f.at_edge)
    return fn


def _label_r2(c: Condition, seed: int, n_boot: int) -> Estimate:
    f = c.fit("full", seed)
    lo, hi = bootstrap_ratio_ci(f.label, f.total, n_boot, seed)
    return Estimate(float(1 - ratio(f.label, f.total)), (1 - hi, 1 - lo), len(f.label))


def _recon(terms: str) -> Callable[[Condition, int, int], Estimate]:
    def fn(c: Condition, seed: int, n_boot: int) -> Estimate:
        return _ratio_estimate(*getattr(c, terms), seed, n_boot)
    return fn


def _scramble(c: Condition, seed: int, n_boot: int) -> Estimate:
    conf0, conf = c.clean_scores.max(1), c.scores.max(1)
    return Estimate(scramble_auroc(conf0, conf), bootstrap_auroc_ci(conf0, conf, n_boot, seed), len(conf0))


_S, _R, _P = frozenset({"scores"}), frozenset({"representation"}), frozenset({"poses"})
_LV = "Lenc & Vedaldi, CVPR 2015 (standardised ridge, held-out)"
_MAHA = "Mahalanobis distance in the clean covariance (ridge-regularised); basis-free as in Kornblith et al., ICML 2019"
_NEVER = frozenset({"computed across conditions"})
for _metric in (
    Metric("accuracy", _accuracy, _S, "accuracy", "higher", "acc"),
    Metric("consistency", _consistency, _S, "consistency (decision kept)", "higher", "cons"),
    Metric("confidence_drop", _confidence_drop, _S, "confidence drop", "lower", "cdrop"),
    Metric("true_class_score", _true_class_score, _S, "true-class score", "higher", "true"),
    Metric("invariance_error", _invariance(False), _R, "invariance error (whitened, full-D)", "lower", "inv",
           overview=True, source=_MAHA),
    Metric("equivariance_error", _equivariance("full"), _R, "equivariance error (full-D)", "lower", "eq", source=_LV),
    Metric("equivariance_error_pca16", _equivariance("pca16"), _R, "equivariance error (16-D PCA)", "lower", "eq16",
           overview=True, source=_LV),
    Metric("equivariance_gain", _gain("full"), _R, "gain over identity (full-D)", "higher", "gain", overview=True,
           source="capsprobe: held-out residual of the fitted map over the identity map's"),
    Metric("label_r2", _label_r2, _R, "class-label baseline R^2 (full-D)", "neither", "label",
           source="capsprobe: phi(Tx) predicted by its class mean alone"),
    Metric("invariance_error_pose", _invariance(True), _P, "invariance error (true-class pose, per class)", "lower",
           "invpose", source=_MAHA),
    Metric("equivariance_error_pose", _equivariance("pose"), _P, "equivariance error (true-class pose, per class)",
           "lower", "eqpose", overview=True, source=_LV),
    Metric("equivariance_gain_pose", _gain("pose"), _P, "gain over identity (true-class pose, per class)", "higher",
           "gainpose", overview=True, source="capsprobe"),
    Metric("recon_equivariance_error", _recon("recon_terms"), frozenset({"reconstruction"}),
           "reconstruction equivariance error", "lower", "receq",
           source="Sabour et al., NeurIPS 2017 (reconstruction from the true-class capsule)"),
    Metric("recon_fidelity_error", _recon("fidelity_terms"), frozenset({"fidelity"}),
           "reconstruction fidelity error", "lower", "recfid",
           source="Sabour et al., NeurIPS 2017 (reconstruction from the true-class capsule)"),
    Metric("scramble_auroc", _scramble, frozenset({"semantic"}), "scramble AUROC", "higher", "auroc",
           source="clean against transformed confidence (Mann-Whitney AUROC)"),
    Metric("scramble_selectivity", None, _NEVER, "scramble selectivity (AUROC minus matched nuisance)", "higher",
           "sel", overview=True, source="capsprobe: AUROC of the scramble minus that of the nuisance with the closest |Tx - x|^2"),
    Metric("decodability", None, _NEVER, "decodability (16-D PCA)", "higher", "dec",
           source="linear probe (Alain & Bengio 2017) on (phi(x), phi(Tx)) pairs"),
    Metric("decodability_pose", None, _NEVER, "decodability (true-class pose)", "higher", "decpose",
           source="linear probe (Alain & Bengio 2017) on (phi(x), phi(Tx)) pairs"),
):
    register_metric(_metric)


def condition_metrics(condition: Condition, seed: int = 0, n_boot: int = 1000) -> dict[str, Estimate]:
    """Every registered per-condition metric that ``condition`` can feed, in table order."""
    have = condition.available
    out = {}
    for name, m in METRICS.items():
        if m.fn is not None and m.needs <= have:
            try:
                out[name] = m.fn(condition, seed, n_boot)
            except TooFewImagesError:  # per-class metrics on a handful of images: left out, never pooled
                continue
    return out


# --- aggregates the report shows ----------------------------------------------------------------------------


def overview_table(metrics: pd.DataFrame, images: pd.DataFrame, identity: dict[str, str], n_boot: int = 1000,
                   seed: int = 0, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run x transformation, each figure with a 95% bootstrap interval over images.

    Columns (each ``X`` with ``X_low`` and ``X_high``): ``clean_accuracy``; ``mean_accuracy``, the area under
    the accuracy-magnitude curve divided by the magnitude range (trapezoid; the plain mean for categorical
    grids); ``worst_accuracy`` over the grid; ``consistency`` over the non-identity magnitudes; the mean over
    non-identity magnitudes of every metric registered with ``overview=True``, whose interval is the mean of the
    per-condition bounds (conservative); ``scramble_auroc`` pools every non-identity semantic condition against
    the clean images.

    Args:
        metrics: tidy metrics (``summary.csv``).
        images: per-image rows (``results.parquet``).
        identity: per transformation, the label of its identity magnitude.
        extra: per-transformation figures to add (``run transform X X_low X_high``, e.g. decodability).
    """
    out = []
    for (run, transform), img in images.groupby(["run", "transform"], sort=False):
        ident = identity.get(transform)
        met = metrics[(metrics["run"] == run) & (metrics["transform"] == transform)]
        order = met.drop_duplicates("magnitude").sort_values("magnitude_value")
        mags = order["magnitude"].tolist()
        xs = order["magnitude_value"].to_numpy(float)
        pred = img.pivot(index="image_id", columns="magnitude", values="prediction")[mags]
        conf = img.pivot(index="image_id", columns="magnitude", values="confidence")[mags]
        label = img.drop_duplicates("image_id").set_index("image_id")["label"].reindex(pred.index).to_numpy()
        correct = (pred.to_numpy() == label[:, None]).astype(float)  # (N, M)
        n = len(correct)
        idx = resample_index(n, n_boot, seed)  # the same resamples for every group: equal data, equal intervals
        boot_acc = correct[idx].mean(1)  # (n_boot, M)
        categorical = pd.to_numeric(order["magnitude"], errors="coerce").isna().any() or len(xs) < 2

        def area(acc: np.ndarray) -> np.ndarray:
            if categorical:
                return acc.mean(-1)
            return np.trapezoid(acc, xs, axis=-1) / (xs[-1] - xs[0])

        row = {"model": met["model"].iloc[0], "run": run, "seed": met["seed"].iloc[0], "transform": transform,
               "kind": "/".join(dict.fromkeys(met["kind"])), "magnitudes": len(mags), "images": n}

        def put(name: str, value: float, ci: tuple[float, float]) -> None:
            row[name], row[f"{name}_low"], row[f"{name}_high"] = value, ci[0], ci[1]

        others = [m for m in mags if m != ident]
        if ident in mags:
            k = mags.index(ident)
            put("clean_accuracy", correct[:, k].mean(), percentile_interval(boot_acc[:, k]))
            if others:
                agree = (pred[others].to_numpy() == pred[[ident]].to_numpy()).astype(float)
                put("consistency", agree.mean(), percentile_interval(agree[idx].mean((1, 2))))
        put("mean_accuracy", float(area(correct.mean(0))), percentile_interval(area(boot_acc)))
        put("worst_accuracy", float(correct.mean(0).min()), percentile_interval(boot_acc.min(1)))
        for name in (m.name for m in METRICS.values() if m.overview):
            rows = met[(met["metric"] == name) & (met["magnitude"] != ident)]
            if not rows.empty:
                put(name, rows["value"].mean(), (rows["ci_low"].mean(), rows["ci_high"].mean()))
        sem = met[(met["metric"] == "scramble_auroc")]["magnitude"].unique().tolist()
        if ident in mags and sem:
            pos = conf[ident].to_numpy()
            neg = conf[sem].to_numpy()  # (N, S)
            put("scramble_auroc", scramble_auroc(pos, neg.ravel()),
                percentile_interval(auroc_rows(pos[idx], neg[idx].reshape(n_boot, -1))))
        out.append(row)
    table = pd.DataFrame(out)
    if extra is not None and not extra.empty and not table.empty:
        table = table.merge(extra, on=["run", "transform"], how="left")
    return table


def decodability_estimate(phi_clean, phi_moved: Sequence, values: Sequence[float], seed: int = 0,
                          n_boot: int = 1000) -> Estimate:
    """:func:`decodability` with its 95% bootstrap interval over held-out images (all magnitudes of an image
    resampled together) and the chosen penalty."""
    residual, total, penalty = decodability_terms(phi_clean, phi_moved, values, seed)
    lo, hi = bootstrap_ratio_ci(residual, total, n_boot, seed)
    edge = bool(np.isclose(10**penalty, PENALTIES[0]) or np.isclose(10**penalty, PENALTIES[-1]))
    return Estimate(float(1 - ratio(residual, total)), (1 - hi, 1 - lo), len(residual), penalty=penalty, at_edge=edge)


SELECTIVITY_COLUMNS = [
    "model", "run", "seed", "transform", "magnitude", "matched_transform", "matched_magnitude", "pixel_change",
    "matched_pixel_change", "auroc", "matched_auroc", "selectivity", "selectivity_low", "selectivity_high", "n_images",
]


def selectivity_table(images: pd.DataFrame, identity: dict[str, str], n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Scramble selectivity: for every non-identity semantic condition of a run, its AUROC (clean against
    transformed confidence) minus the AUROC of the run's non-identity *nuisance* condition whose mean pixel change
    ``|Tx - x|^2`` is closest, with a paired 95% bootstrap interval (the same image resamples for both AUROCs).

    A model that is merely less sure of any changed image scores about 0; one that reacts to broken part relations
    more than to a nuisance that changes as many pixels scores above 0. Empty when no nuisance condition was probed.

    Args:
        images: per-image rows (``results.parquet``) with ``pixel_change``.
        identity: per transformation, the label of its identity magnitude.
    """
    out = []
    if "pixel_change" not in images:
        return pd.DataFrame(columns=SELECTIVITY_COLUMNS)
    for run, rows in images.groupby("run", sort=False):
        conds = rows.groupby(["transform", "magnitude"], sort=False).agg(
            kind=("kind", "first"), pixel_change=("pixel_change", "mean")).reset_index()
        conds = conds[conds["magnitude"] != conds["transform"].map(identity)]
        nuisance = conds[conds["kind"] == "nuisance"]
        semantic = conds[conds["kind"] == "semantic"]
        ident = rows[rows["magnitude"] == rows["transform"].map(identity)]
        if nuisance.empty or semantic.empty or ident.empty:
            continue
        first = ident["transform"].iloc[0]
        clean = ident[ident["transform"] == first].sort_values("image_id")["confidence"].to_numpy()
        idx = resample_index(len(clean), n_boot, seed)

        def conf(transform: str, magnitude: str) -> np.ndarray:
            sel = rows[(rows["transform"] == transform) & (rows["magnitude"] == magnitude)]
            return sel.sort_values("image_id")["confidence"].to_numpy()

        for s in semantic.itertuples(index=False):
            near = nuisance.iloc[int(np.argmin(np.abs(nuisance["pixel_change"].to_numpy() - s.pixel_change)))]
            neg_s, neg_n = conf(s.transform, s.magnitude), conf(near["transform"], near["magnitude"])
            a_s, a_n = scramble_auroc(clean, neg_s), scramble_auroc(clean, neg_n)
            boot = auroc_rows(clean[idx], neg_s[idx]) - auroc_rows(clean[idx], neg_n[idx])
            est = Estimate(a_s - a_n, percentile_interval(boot), len(clean))
            first_row = rows.iloc[0]
            out.append({"model": first_row["model"], "run": run, "seed": first_row["seed"], "transform": s.transform,
                        "magnitude": s.magnitude, "matched_transform": near["transform"],
                        "matched_magnitude": near["magnitude"], "pixel_change": s.pixel_change,
                        "matched_pixel_change": near["pixel_change"], "auroc": a_s, "matched_auroc": a_n,
                        "selectivity": est.value, "selectivity_low": est.ci[0], "selectivity_high": est.ci[1],
                        "n_images": est.n})
    return pd.DataFrame(out, columns=SELECTIVITY_COLUMNS)


ROC_COLUMNS = ["run", "condition", "fpr", "tpr"]


ROC_POINTS = 201  # false-positive rates stored per curve: enough to draw it, a fixed size whatever the image count


def roc_table(images: pd.DataFrame, metrics: pd.DataFrame, identity: dict[str, str]) -> pd.DataFrame:
    """ROC curve points (``run condition fpr tpr``) of clean against transformed confidence for every
    condition that has a ``scramble_auroc`` (scikit-learn ``roc_curve``), on a grid of :data:`ROC_POINTS` false-positive
    rates: the curve's exact staircase read at each (the highest true-positive rate reached at or below that rate),
    so the file for the figure does not grow with the number of images."""
    from sklearn.metrics import roc_curve

    semantic = metrics[metrics["metric"] == "scramble_auroc"][["run", "transform", "magnitude"]].drop_duplicates()
    frames = []
    for run, transform, magnitude in semantic.itertuples(index=False):
        rows = images[(images["run"] == run) & (images["transform"] == transform)]
        clean = rows[rows["magnitude"] == identity.get(transform)].sort_values("image_id")["confidence"].to_numpy()
        moved = rows[rows["magnitude"] == magnitude].sort_values("image_id")["confidence"].to_numpy()
        if not len(clean) or not len(moved):
            continue
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(clean)), np.zeros(len(moved))], np.r_[clean, moved])
        grid = np.linspace(0.0, 1.0, ROC_POINTS)
        on_grid = tpr[np.searchsorted(fpr, grid, side="right") - 1]  # fpr starts at 0: every index is valid
        frames.append(pd.DataFrame({"run": run, "condition": f"{transform} {magnitude}", "fpr": grid, "tpr": on_grid}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROC_COLUMNS)


# --- Lie derivative (Gruver et al. 2022) ------------------------------------------------------------------------


def lie_score_values(dscores) -> np.ndarray:
    """Per image, the mean over classes of ``|d/dt s_k(g_t x)|`` at ``t = 0``: the end-to-end Local Equivariance
    Error of Gruver, Finzi, Goldblum & Wilson, "The Lie derivative for measuring learned equivariance" (ICLR 2023,
    their ``lee/e2e_lee.py``: the absolute derivative of the class probabilities, averaged over classes, then over
    images). 0 for a decision that does not move at all under the infinitesimal transformation."""
    d = _np(dscores)
    if d.ndim != 2:
        raise ValueError(f"score derivatives must be (N, K), got {d.shape}")
    return np.abs(d).mean(1)


def generator_terms(phi_clean, dphi, seed: int = 0, fit_fraction: float = 0.5, groups=None,
                    split: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The equivariant Lie derivative: fit the generator ``d/dt phi(g_t x) ~ A phi(x) + b`` (the standardised ridge
    fit of :func:`linear_fit`, on the fitting half, per group) and score it on held-out images.

    Returns:
        ``(held, residual, energy)``: held-out indices, ``|dphi - A phi - b|^2`` and ``|dphi|^2`` per held-out
        image, both divided by the representation's mean per-dimension variance. ``sum(residual) / sum(energy)``
        is 0 when one linear action explains the representation's infinitesimal change (an equivariant
        representation, Lenc & Vedaldi's criterion in Lie-algebra form) and about 1 when the fit does no better
        than predicting no change. Gruver et al. score non-image outputs for
        invariance only; this is the part their method cannot measure for pose vectors.
    """
    x, d = _pair(phi_clean, dphi, same_width=True)
    fit = linear_fit(x, d, seed, fit_fraction, groups, split=split)
    s2 = _scale(x) ** 2  # in units of the representation's own spread, so the ratio's floor is scale-free
    return fit.held, fit.residual / s2, (d[fit.held] ** 2).sum(1) / s2


def composition_terms(phi_clean, moved: dict, a: float, b: float, seed: int = 0, fit_fraction: float = 0.5,
                      groups=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Do the fitted maps compose like the group? ``M_a``, ``M_b`` and ``M_{a+b}`` are affine ridge fits
    ``phi(T_a x) ~ M_a phi(x) + c_a`` (:data:`PENALTIES`, chosen by leave-one-out on the fitting half), all in one
    frame: every representation is centred and divided by the root mean variance of the *clean* fitting half (per
    group), so ``M_b`` can be applied to what ``M_a`` predicts. ``T_{a+b} = T_b T_a`` for rotations about one
    centre, so a representation that carries the group's action has ``M_{a+b} = M_b M_a``; a lookup table of
    unrelated maps does not.

    Args:
        phi_clean: ``(N, D)`` clean representations.
        moved: ``{magnitude: (N, D)}`` representations of the transformed images; must hold ``a``, ``b``, ``a+b``.

    Returns:
        Per held-out image: ``|M_{a+b} z - M_b M_a z|^2``, ``|M_{a+b} z|^2`` (the issue's normaliser: the ratio
        of sums is ``|M_{a+b} - M_b M_a| / |M_{a+b}|`` on held-out images, squared) and ``|M_{a+b} z - z|^2``
        (the movement the composed map should reproduce; the ratio to it is 0 for a group action and has no
        meaning for a representation that does not move).
    """
    x = _np(phi_clean)
    for m in (a, b, a + b):
        if m not in moved:
            raise ValueError(f"composition needs the representation at magnitude {m}")
    n = len(x)
    if n < 4:
        raise ValueError(f"composition needs at least 4 images, got {n}")
    g, fit, held = _grouped_split(n, seed, fit_fraction, groups)
    diff, norm, move = np.empty(len(held)), np.empty(len(held)), np.empty(len(held))
    pos = {i: k for k, i in enumerate(held)}
    for group in np.unique(g):
        f, h = fit[g[fit] == group], held[g[held] == group]
        if len(h) == 0:
            continue
        mu, sc = x[f].mean(0), _scale(x[f])
        frame = {m: (_np(moved[m]) - mu) / sc for m in (a, b, a + b)}
        z = (x - mu) / sc
        maps = {m: RidgeCV(alphas=PENALTIES * len(f)).fit(z[f], frame[m][f]) for m in (a, b, a + b)}
        direct = maps[a + b].predict(z[h]).reshape(len(h), -1)
        composed = maps[b].predict(maps[a].predict(z[h]).reshape(len(h), -1)).reshape(len(h), -1)
        idx = [pos[i] for i in h]
        diff[idx] = ((direct - composed) ** 2).sum(1)
        norm[idx] = (direct ** 2).sum(1)
        move[idx] = ((direct - z[h]) ** 2).sum(1)
    return diff, norm, move


def subspace_project(act_clean, dact, dim: int = 32, fit: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer's activations and their Lie derivatives on the top ``dim`` principal axes of the clean activations
    of the fitting images ``fit`` (scikit-learn PCA), so that layers of 100,000 dimensions are measured on the same
    footing as 16-D poses. The derivative is projected without the mean (it is a tangent vector).

    Returns:
        ``(scores, dscores, kept)``: ``(N, dim)`` projections and, per image, ``|P dact|^2 / |dact|^2`` summed as
        the share of the derivative's energy the subspace holds (``kept`` is ``(|P dact|^2, |dact|^2)`` stacked,
        ``(2, N)``). A layer of ``dim`` or fewer dimensions is returned as it is.
    """
    x, d = _pair(act_clean, dact, same_width=True)
    pca = _pca(x, dim, fit)
    if pca is None:
        energy = (d ** 2).sum(1)
        return x, d, np.stack([energy, energy])
    xs, ds = pca.transform(x), d @ pca.components_.T
    return xs, ds, np.stack([(ds ** 2).sum(1), (d ** 2).sum(1)])
