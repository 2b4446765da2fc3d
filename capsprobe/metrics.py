"""Invariance and equivariance metrics: pure functions on arrays, one row of the results table each.

Notation (DESIGN.md): ``s(x)`` class scores, ``pred = argmax s``, ``conf = max s``, ``phi(x)`` the
representation, ``T`` a transformation. Inputs are NumPy arrays or tensors (converted to float64 NumPy);
every function returns plain floats. Ridge regression, PCA and ROC AUC come from scikit-learn.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score

__all__ = [
    "accuracy",
    "auroc_rows",
    "bootstrap_ci",
    "bootstrap_auroc_ci",
    "bootstrap_mean_ci",
    "bootstrap_ratio_ci",
    "confidence_drop",
    "consistency",
    "equivariance_error",
    "equivariance_ratio",
    "equivariance_terms",
    "invariance_error",
    "invariance_terms",
    "pca_project",
    "reconstruction_equivariance_terms",
    "scramble_auroc",
    "true_class_score",
]

RIDGE_ALPHAS = np.logspace(-4, 4, 9)


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


def invariance_terms(phi_clean, phi_t) -> tuple[np.ndarray, np.ndarray]:
    """Per-image numerator ``|phi(Tx) - phi(x)|^2`` and denominator ``|phi(x) - mean phi(x)|^2`` terms."""
    a, b = _np(phi_clean), _np(phi_t)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"representations must be two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    return ((b - a) ** 2).sum(1), ((a - a.mean(0)) ** 2).sum(1)


def invariance_error(phi_clean, phi_t) -> float:
    """``E|phi(Tx) - phi(x)|^2 / E|phi(x) - mean phi(x)|^2`` (0: perfectly invariant; 2: unrelated draws).

    The change is measured in units of the spread of clean representations, so representations of
    different sizes and scales compare.
    """
    num, den = invariance_terms(phi_clean, phi_t)
    return float(num.mean() / max(den.mean(), 1e-12))


def equivariance_terms(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Held-out residual and total terms of the linear fit ``phi(Tx) ~ M phi(x) + b``.

    Lenc & Vedaldi, "Understanding image representations by measuring their equivariance and equivalence",
    CVPR 2015: a representation is equivariant to ``T`` when a map ``M_T`` predicts ``phi(Tx)`` from
    ``phi(x)``. Here ``M_T`` is linear, fitted by ridge regression (scikit-learn ``RidgeCV``, penalty chosen by
    efficient leave-one-out on the fitting half) on a seeded random half of the images.

    Returns:
        For every held-out image, ``|phi(Tx) - M phi(x) - b|^2`` and ``|phi(Tx) - mean phi(Tx)|^2`` (mean over
        the held-out half): their ratio of means is ``1 - R^2``.
    """
    x, y = _np(phi_clean), _np(phi_t)
    if x.shape[0] != y.shape[0] or x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"representations must be (N, D) arrays with one N, got {x.shape} and {y.shape}")
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"equivariance needs at least 4 images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fit_fraction))
    fit, held = order[:k], order[k:]
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit(x[fit], y[fit])
    residual = ((y[held] - model.predict(x[held])) ** 2).sum(1)
    total = ((y[held] - y[held].mean(0)) ** 2).sum(1)
    return residual, total


def equivariance_error(phi_clean, phi_t, seed: int = 0, fit_fraction: float = 0.5) -> float:
    """Held-out ``1 - R^2`` of the ridge fit ``phi(Tx) ~ M phi(x) + b`` (Lenc & Vedaldi 2015).

    0: the change of the representation is perfectly predicted by one linear map (equivariant, which
    includes invariant); about 1: ``phi(Tx)`` is unpredictable from ``phi(x)``. ``R^2`` is variance-weighted
    over dimensions (total residual over total variance). When ``phi(Tx)`` does not vary at all the
    error is 0 if it is also predicted exactly, else 1.
    """
    return equivariance_ratio(*equivariance_terms(phi_clean, phi_t, seed, fit_fraction))


def equivariance_ratio(residual, total) -> float:
    """``1 - R^2`` from the held-out terms of :func:`equivariance_terms` (0 or 1 when nothing varies)."""
    residual, total = _np(residual), _np(total)
    if total.sum() <= 1e-12:
        return 0.0 if residual.sum() <= 1e-12 else 1.0
    return float(residual.sum() / total.sum())


def pca_project(phi_clean, phi_t, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Project both representations on the top ``dim`` principal axes of the *clean* ones (scikit-learn PCA).

    Used to compare models at one size: every representation is reduced to 16-D before the equivariance
    fit. A representation already of ``dim`` or fewer dimensions is returned as it is.
    """
    x, y = _np(phi_clean), _np(phi_t)
    if x.shape[1] <= dim:
        return x, y
    pca = PCA(n_components=min(dim, x.shape[0]), random_state=0).fit(x)
    return pca.transform(x), pca.transform(y)


def scramble_auroc(conf_clean, conf_t) -> float:
    """AUROC of ``conf(x)`` (positives) against ``conf(Tx)`` (negatives), scikit-learn ``roc_auc_score``.

    0.5: the model is as sure of the scrambled images as of the intact ones (blind to the scramble);
    1.0: always less sure of a scrambled image than of any intact one.
    """
    a, b = _np(conf_clean), _np(conf_t)
    y_true = np.r_[np.ones(len(a)), np.zeros(len(b))]
    return float(roc_auc_score(y_true, np.r_[a, b]))


def reconstruction_equivariance_terms(recon_t, transformed_recon) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``|decode(phi(Tx)) - T(decode(phi(x)))|^2`` and ``|T(decode(phi(x)))|^2`` (CapsNet).

    Their ratio of means is the normalised reconstruction equivariance error: 0 when decoding the
    transformed image's pose gives the transformed reconstruction, 1 when the error is as large as the
    reconstruction itself.
    """
    a, b = _np(recon_t), _np(transformed_recon)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return ((a - b) ** 2).sum(1), (b**2).sum(1)


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
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_mean_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (vectorised)."""
    v = _np(values)
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    means = v[idx].mean(1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_ratio_ci(num, den, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(num) / sum(den)`` over per-image terms (vectorised)."""
    a, b = _np(num), _np(den)
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    ratios = a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-12)
    lo, hi = np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)



def bootstrap_auroc_ci(conf_clean, conf_t, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`scramble_auroc`, resampling images (clean and transformed pairs).

    Vectorised with the Mann-Whitney form ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` (average
    ranks for ties), which equals scikit-learn's ``roc_auc_score`` on every resample.
    """
    a, b = _np(conf_clean), _np(conf_t)
    n = len(a)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    auc = auroc_rows(a[idx], b[idx])
    lo, hi = np.percentile(auc, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def auroc_rows(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Row-wise AUROC of ``positives (R, n)`` against ``negatives (R, m)`` by the Mann-Whitney rank sum."""
    from scipy.stats import rankdata

    n, m = positives.shape[1], negatives.shape[1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    return (ranks[:, :n].sum(1) - n * (n + 1) / 2) / (n * m)
