"""Calibration of class scores: the expected calibration error, temperature scaling and reliability bins.

A model is calibrated when, among the images it is ``p`` sure of, a share ``p`` is right. The *confidence* of an
image is its top class score; *correct* is ``argmax = y``.

- **ECE** (Naeini, Cooper & Hauskrecht, AAAI 2015; the form of Guo, Pleiss, Sun & Weinberger, ICML 2017, eq. 3):
  ``ECE = sum_m |B_m| / N |acc(B_m) - conf(B_m)| = (1 / N) sum_m |sum_{i in B_m} (correct_i - conf_i)|`` over
  :data:`ECE_BINS` = 15 equal-width bins of confidence, ``B_m = ((m - 1) / M, m / M]`` (a confidence of exactly 0
  joins the first bin, of exactly 1 the last). 0: calibrated; an overconfident model's ECE is its gap between
  confidence and accuracy.
- **Scores as probabilities, one rule for every model**: the log of the class scores are the logits,
  ``z = log max(s, tiny)`` and ``p_T = softmax(z / T) = s^(1/T) / sum_k s_k^(1/T)``. For a convnet, whose scores are
  ``softmax(logits)``, ``log s`` are the logits shifted by one constant per image, so ``p_T`` *is* Guo et al.'s
  temperature scaling of the logits (``p_1`` the softmax itself); for a CapsNet, whose scores are capsule lengths in
  ``[0, 1)`` (margin loss, Sabour et al. 2017: not probabilities, not summing to 1), ``p_1`` is the normalised
  lengths and ``p_T`` their tempered form.
- **Temperature** (:func:`fit_temperature`): one scalar ``T`` minimising the negative log-likelihood of the labels,
  by L-BFGS (SciPy's L-BFGS-B) on ``log T`` bounded to ``[log 0.01, log 100]``; it never changes a decision.

The probe's two registered metrics (:mod:`.registry`): ``ece``, the raw scores' top score as the confidence (a
softmax probability for a convnet, a capsule length for a CapsNet: what the report compared), and ``ece_scaled``,
``p_T``'s, with the temperature fitted on the run's validation split where the probe has it
(:attr:`~capsprobe.metrics.registry.Condition.temperature`: ``capsprobe perturb`` and ``run`` fit it on the images
the run's training held out), else on *clean* scores of images other than the one scored (two-fold cross-fitting:
the seeded halves of :func:`~capsprobe.metrics.functional.split_halves`, ``T`` of one half's clean images scales the
other half under every condition); either way clean and corrupted conditions share the temperature; both over all N
images, with a 95% bootstrap interval over images that holds the temperatures fixed.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

from .functional import FLOOR, LEVEL, TooFewImagesError, percentile_interval, resample_index, split_halves

__all__ = [
    "ECE_BINS",
    "RELIABILITY_COLUMNS",
    "TEMPERATURE_BOUNDS",
    "bootstrap_ece_ci",
    "confidence_bins",
    "cross_fitted_probabilities",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "reliability_table",
    "score_logits",
    "scores_in_unit_interval",
    "tempered",
]

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017)
TEMPERATURE_BOUNDS = (0.01, 100.0)  # the fitted temperature's range (a separable set would drive T to 0)
_TINY = float(np.finfo(np.float32).tiny)  # the floor of a score before its log: a float32 softmax underflows below it
_SLACK = 1e-5  # float32 rounding of a squash or a softmax may pass 1 by a few ulps


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def scores_in_unit_interval(scores) -> bool:
    """Every score finite and in ``[0, 1]`` (softmax probabilities, capsule lengths): what the ECE can read."""
    s = _np(scores)
    return bool(s.size and np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1 + _SLACK)


def confidence_bins(confidence, bins: int = ECE_BINS) -> np.ndarray:
    """The bin of each confidence: ``m - 1`` for ``(m - 1) / M < c <= m / M`` (0 and below: bin 0; 1 and above:
    bin ``M - 1``).

    Args:
        confidence: ``(N,)`` top scores.
        bins: ``M``, equal-width bins over ``[0, 1]``.

    Returns:
        ``(N,)`` integer bin indices in ``0 .. M - 1``.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    c = _np(confidence)
    edges = np.arange(bins + 1) / bins  # m / M exactly as written (linspace can miss it by an ulp)
    return np.clip(np.searchsorted(edges, c, side="left") - 1, 0, bins - 1)


def _terms(confidence, correct, bins: int) -> tuple[np.ndarray, np.ndarray]:
    c, y = _np(confidence), _np(correct)
    if c.ndim != 1 or c.shape != y.shape:
        raise ValueError(f"confidence and correct must be (N,) arrays of one N, got {c.shape} and {y.shape}")
    if len(c) == 0:
        raise ValueError("the ECE needs at least one image")
    return confidence_bins(c, bins), y - c


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """``(1 / N) sum_m |sum_{i in B_m} (correct_i - conf_i)|`` over ``bins`` equal-width bins (see the module).

    Args:
        confidence: ``(N,)`` top scores in ``[0, 1]``.
        correct: ``(N,)`` 1 where the top class is the label, else 0.
        bins: ``M`` (15: Guo et al. 2017).
    """
    b, gap = _terms(confidence, correct, bins)
    return float(np.abs(np.bincount(b, weights=gap, minlength=bins)).sum() / len(gap))


def bootstrap_ece_ci(confidence, correct, n_boot: int = 1000, seed: int = 0, bins: int = ECE_BINS,
                     level: float = LEVEL, block: int = 256) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`expected_calibration_error`, resampling images (vectorised: one
    ``bincount`` per block of resamples; the bins stay those of the confidences)."""
    b, gap = _terms(confidence, correct, bins)
    n = len(gap)
    idx = resample_index(n, n_boot, seed)
    values = np.empty(n_boot)
    for start in range(0, n_boot, block):
        rows = idx[start:start + block]
        flat = (b[rows] + bins * np.arange(len(rows))[:, None]).ravel()
        sums = np.bincount(flat, weights=gap[rows].ravel(), minlength=len(rows) * bins).reshape(len(rows), bins)
        values[start:start + block] = np.abs(sums).sum(1) / n
    return percentile_interval(values, level)


def score_logits(scores) -> np.ndarray:
    """``log max(s, tiny)``: class scores as logits (for a softmax, its logits up to one constant per image).

    Args:
        scores: ``(N, K)`` non-negative class scores.
    """
    return np.log(np.maximum(_np(scores), _TINY))


def tempered(logits, temperature: float) -> np.ndarray:
    """``softmax(z / T)`` along the classes: ``(N, K)`` probabilities."""
    return np.exp(log_softmax(_np(logits) / float(temperature), axis=1))


def fit_temperature(logits, labels) -> float:
    """The temperature ``T`` that minimises the mean negative log-likelihood ``-log softmax(z / T)_y`` (Guo et al.
    2017), by L-BFGS on ``u = log T`` from ``T = 1``, bounded to :data:`TEMPERATURE_BOUNDS`.

    The NLL is convex in ``1 / T``, so the one minimum is found; when every image is right and the classes separate,
    it falls as ``T -> 0`` and the lower bound is returned.

    Args:
        logits: ``(N, K)`` logits (for the probe's scores, :func:`score_logits`).
        labels: ``(N,)`` true classes.
    """
    z, y = _np(logits), np.asarray(labels).astype(int)
    if z.ndim != 2 or z.shape[0] != len(y) or len(y) == 0:
        raise ValueError(f"logits must be (N, K) with one row per label, got {z.shape} for {len(y)} labels")
    true = z[np.arange(len(y)), y]

    def nll(u: np.ndarray) -> tuple[float, np.ndarray]:
        beta = float(np.exp(-u[0]))  # 1 / T
        scaled = beta * z
        lse = logsumexp(scaled, axis=1)
        p = np.exp(scaled - lse[:, None])
        value = float(np.mean(lse - beta * true))
        d_beta = float(np.mean((p * z).sum(1) - true))
        return value, np.array([-beta * d_beta])  # d/du = d/d(beta) * (-beta)

    lo, hi = np.log(TEMPERATURE_BOUNDS)
    res = minimize(nll, np.zeros(1), jac=True, method="L-BFGS-B", bounds=[(lo, hi)],
                   options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 200})
    return float(np.exp(res.x[0]))


_FITTED: dict[bytes, tuple[float, float]] = {}  # a run's clean halves' temperatures, fitted once for all its conditions


def _clean_temperatures(z0: np.ndarray, y: np.ndarray, first: np.ndarray, second: np.ndarray, seed: int
                        ) -> tuple[float, float]:
    """The temperatures of the two clean halves: every condition of a run shares its clean scores, so the fit is made
    once per (clean scores, labels, seed) and remembered (by a digest of their bytes; at most 64 kept)."""
    key = hashlib.blake2b(np.ascontiguousarray(z0).tobytes() + y.tobytes() + str(seed).encode(), digest_size=16).digest()
    if key not in _FITTED:
        if len(_FITTED) >= 64:
            _FITTED.clear()
        _FITTED[key] = (fit_temperature(z0[first], y[first]), fit_temperature(z0[second], y[second]))
    return _FITTED[key]


def cross_fitted_probabilities(clean_scores, scores, labels, seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """``p_T`` of ``scores`` for every image, ``T`` fitted on the *clean* scores of the other seeded half.

    Args:
        clean_scores, scores: ``(N, K)`` class scores of the clean and the transformed images.
        labels: ``(N,)`` true classes.
        seed: the split's seed (:func:`~capsprobe.metrics.functional.split_halves`).

    Returns:
        ``(N, K)`` probabilities, and the temperatures fitted on the first and on the second half.

    Raises:
        TooFewImagesError: fewer than 4 images (a half of 1 image fits nothing).
    """
    y = np.asarray(labels).astype(int)
    if len(y) < 4:
        raise TooFewImagesError(f"temperature scaling needs at least 4 images (2 per half), got {len(y)}")
    z0, z = score_logits(clean_scores), score_logits(scores)
    first, second = split_halves(len(y), seed)
    t_first, t_second = _clean_temperatures(z0, y, first, second, seed)
    out = np.empty_like(z)
    out[second] = tempered(z[second], t_first)
    out[first] = tempered(z[first], t_second)
    return out, (t_first, t_second)


def reliability_bins(confidence, correct, bins: int = ECE_BINS) -> pd.DataFrame:
    """One row per non-empty bin: ``bin lower upper count confidence accuracy`` (mean confidence and accuracy of the
    bin's images): the points of a reliability diagram (DeGroot & Fienberg 1983; Niculescu-Mizil & Caruana 2005)."""
    b, _ = _terms(confidence, correct, bins)
    c, y = _np(confidence), _np(correct)
    count = np.bincount(b, minlength=bins)
    keep = count > 0
    edges = np.arange(bins + 1) / bins
    return pd.DataFrame({
        "bin": np.arange(bins)[keep], "lower": edges[:-1][keep], "upper": edges[1:][keep], "count": count[keep],
        "confidence": np.bincount(b, weights=c, minlength=bins)[keep] / count[keep],
        "accuracy": np.bincount(b, weights=y, minlength=bins)[keep] / np.maximum(count[keep], FLOOR),
    })


RELIABILITY_COLUMNS = ["model", "condition", "role", "ece", "ece_scaled", "bin", "lower", "upper", "count",
                       "confidence", "accuracy"]


def reliability_table(images: pd.DataFrame, metrics: pd.DataFrame, identity: Mapping[str, str],
                      bins: int = ECE_BINS) -> pd.DataFrame:
    """Per model, the reliability bins of its raw confidences on the clean images and under its worst condition.

    The clean condition is the first probed transformation's identity magnitude; the worst is the non-identity
    condition with the highest ``ece`` (mean over the model's runs). A model's runs (training seeds) are pooled
    into one set of bins; ``ece`` and ``ece_scaled`` are the means over its runs of the ``summary.csv`` values.

    Args:
        images: per-image rows (``model run transform magnitude label prediction confidence``).
        metrics: tidy metrics (``model run transform magnitude metric value``) with ``ece`` rows.
        identity: per transformation, the label of its identity magnitude.

    Returns:
        :data:`RELIABILITY_COLUMNS` rows (``role``: ``clean`` or ``worst``; ``condition``: ``transform magnitude``);
        empty when no model has ``ece`` rows and per-image rows for both conditions.
    """
    m, im = metrics, images
    if "model" not in m:
        m = m.assign(model=m["run"])
    if "model" not in im:
        im = im.assign(model=im["run"])
    ece = m[m["metric"].isin(["ece", "ece_scaled"])]
    rows = []
    for model in dict.fromkeys(ece["model"]):
        mine = ece[ece["model"] == model]
        means = mine.groupby(["transform", "magnitude", "metric"], sort=False)["value"].mean().unstack("metric")
        if "ece" not in means:
            continue
        is_identity = np.array([identity.get(t) == str(g) for t, g in means.index])
        if not is_identity.any() or is_identity.all():
            continue
        clean_key = means.index[np.flatnonzero(is_identity)[0]]
        worst_key = means[~is_identity]["ece"].idxmax()
        for role, (transform, magnitude) in (("clean", clean_key), ("worst", worst_key)):
            sel = im[(im["model"] == model) & (im["transform"] == transform) & (im["magnitude"].astype(str) == str(magnitude))]
            if sel.empty:
                continue
            correct = (sel["prediction"].to_numpy() == sel["label"].to_numpy()).astype(float)
            table = reliability_bins(sel["confidence"].to_numpy(), correct, bins)
            scaled = means.loc[(transform, magnitude)].get("ece_scaled", np.nan)
            rows.append(table.assign(model=model, condition=f"{transform} {magnitude}", role=role,
                                     ece=float(means.loc[(transform, magnitude), "ece"]), ece_scaled=float(scaled)))
    if not rows:
        return pd.DataFrame(columns=RELIABILITY_COLUMNS)
    return pd.concat(rows, ignore_index=True)[RELIABILITY_COLUMNS]
