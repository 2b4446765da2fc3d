"""Invariance and equivariance metrics: pure functions on arrays, one row of the results table each.

Notation (DESIGN.md): ``s(x)`` class scores, ``pred = argmax s``, ``conf = max s``, ``phi(x)`` the
representation, ``T`` a transformation. Inputs are NumPy arrays or tensors (converted to float64 NumPy);
every function returns plain floats. Ridge regression, PCA and ROC AUC come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    "accuracy",
    "auroc_rows",
    "bootstrap_ci",
    "bootstrap_auroc_ci",
    "bootstrap_mean_ci",
    "bootstrap_ratio_ci",
    "condition_metrics",
    "confidence_drop",
    "consistency",
    "equivariance_error",
    "equivariance_ratio",
    "equivariance_terms",
    "invariance_error",
    "invariance_terms",
    "overview_table",
    "pca_project",
    "percentile_interval",
    "reconstruction_equivariance_terms",
    "register_metric",
    "resample_index",
    "roc_table",
    "scramble_auroc",
    "true_class_score",
]

RIDGE_ALPHAS = np.logspace(-4, 4, 9)
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
    return percentile_interval(a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-12), level)


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
        semantic: the condition breaks the parts' relations (a non-identity semantic magnitude).
    """

    labels: np.ndarray
    clean_scores: np.ndarray
    scores: np.ndarray
    clean_rep: np.ndarray
    rep: np.ndarray
    clean_pose: np.ndarray | None = None
    pose: np.ndarray | None = None
    recon_terms: tuple[np.ndarray, np.ndarray] | None = None
    semantic: bool = False

    @property
    def available(self) -> frozenset[str]:
        """What this condition can feed: ``scores``, ``representation``, ``poses``, ``reconstruction``, ``semantic``."""
        have = {"scores", "representation"}
        if self.pose is not None:
            have.add("poses")
        if self.recon_terms is not None:
            have.add("reconstruction")
        if self.semantic:
            have.add("semantic")
        return frozenset(have)


@dataclass(frozen=True)
class Estimate:
    """A metric's value on all images, its 95% bootstrap interval and the number of images behind it."""

    value: float
    ci: tuple[float, float]
    n: int


@dataclass(frozen=True)
class Metric:
    """One row of the metric table.

    Attributes:
        name: the ``metric`` column of ``summary.csv``.
        fn: ``fn(condition, seed, n_boot) -> Estimate``.
        needs: what the condition must provide (see :attr:`Condition.available`).
        label: how tables and figures name it (says full-D, 16-D or pose where it matters).
        better: ``lower`` or ``higher``.
        short: a terminal-table column name.
        overview: averaged over non-identity magnitudes into the report's overview.
        source: where the definition comes from.
    """

    name: str
    fn: Callable[["Condition", int, int], Estimate]
    needs: frozenset[str]
    label: str
    better: str
    short: str = ""
    overview: bool = False
    source: str = ""


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the table the probe iterates (in registration order) and the report reads."""
    if metric.better not in ("lower", "higher"):
        raise ValueError(f"metric {metric.name}: better must be 'lower' or 'higher', got {metric.better!r}")
    METRICS[metric.name] = metric
    return metric


def _mean_estimate(values: np.ndarray, value: float, seed: int, n_boot: int) -> Estimate:
    return Estimate(value, bootstrap_mean_ci(values, n_boot, seed), len(values))


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


def _invariance(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int) -> Estimate:
    num, den = invariance_terms(a, b)
    return Estimate(invariance_error(a, b), bootstrap_ratio_ci(num, den, n_boot, seed), len(num))


def _equivariance(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int) -> Estimate:
    residual, total = equivariance_terms(a, b, seed)
    return Estimate(equivariance_ratio(residual, total), bootstrap_ratio_ci(residual, total, n_boot, seed),
                    len(residual))


def _recon_equivariance(c: Condition, seed: int, n_boot: int) -> Estimate:
    num, den = c.recon_terms
    return Estimate(float(num.sum() / max(den.sum(), 1e-12)), bootstrap_ratio_ci(num, den, n_boot, seed), len(num))


def _scramble(c: Condition, seed: int, n_boot: int) -> Estimate:
    conf0, conf = c.clean_scores.max(1), c.scores.max(1)
    return Estimate(scramble_auroc(conf0, conf), bootstrap_auroc_ci(conf0, conf, n_boot, seed), len(conf0))


_S, _R, _P = frozenset({"scores"}), frozenset({"representation"}), frozenset({"poses"})
_LV = "Lenc & Vedaldi, CVPR 2015"
for _metric in (
    Metric("accuracy", _accuracy, _S, "accuracy", "higher", "acc"),
    Metric("consistency", _consistency, _S, "consistency (decision kept)", "higher", "cons"),
    Metric("confidence_drop", _confidence_drop, _S, "confidence drop", "lower", "cdrop"),
    Metric("true_class_score", _true_class_score, _S, "true-class score", "higher", "true"),
    Metric("invariance_error", lambda c, s, b: _invariance(c.clean_rep, c.rep, s, b), _R,
           "invariance error (full-D)", "lower", "inv", overview=True),
    Metric("equivariance_error", lambda c, s, b: _equivariance(c.clean_rep, c.rep, s, b), _R,
           "equivariance error (full-D)", "lower", "eq", source=_LV),
    Metric("equivariance_error_pca16", lambda c, s, b: _equivariance(*pca_project(c.clean_rep, c.rep, 16), s, b), _R,
           "equivariance error (16-D)", "lower", "eq16", overview=True, source=_LV),
    Metric("invariance_error_pose", lambda c, s, b: _invariance(c.clean_pose, c.pose, s, b), _P,
           "invariance error (true-class pose)", "lower", "invpose"),
    Metric("equivariance_error_pose", lambda c, s, b: _equivariance(c.clean_pose, c.pose, s, b), _P,
           "equivariance error (true-class pose)", "lower", "eqpose", overview=True, source=_LV),
    Metric("recon_equivariance_error", _recon_equivariance, frozenset({"reconstruction"}),
           "reconstruction equivariance error", "lower", "receq"),
    Metric("scramble_auroc", _scramble, frozenset({"semantic"}), "scramble AUROC", "higher", "auroc"),
):
    register_metric(_metric)


def condition_metrics(condition: Condition, seed: int = 0, n_boot: int = 1000) -> dict[str, Estimate]:
    """Every registered metric that ``condition`` can feed, in table order."""
    have = condition.available
    return {name: m.fn(condition, seed, n_boot) for name, m in METRICS.items() if m.needs <= have}


# --- aggregates the report shows ----------------------------------------------------------------------------


def overview_table(metrics: pd.DataFrame, images: pd.DataFrame, identity: dict[str, str], n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
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
    return pd.DataFrame(out)


ROC_COLUMNS = ["run", "condition", "fpr", "tpr"]


def roc_table(images: pd.DataFrame, metrics: pd.DataFrame, identity: dict[str, str]) -> pd.DataFrame:
    """ROC curve points (``run condition fpr tpr``) of clean against transformed confidence for every
    condition that has a ``scramble_auroc`` (scikit-learn ``roc_curve``)."""
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
        frames.append(pd.DataFrame({"run": run, "condition": f"{transform} {magnitude}", "fpr": fpr, "tpr": tpr}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROC_COLUMNS)
