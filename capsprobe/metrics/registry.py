"""The metric registry: what the probe computes for every condition (:class:`Condition` in, :class:`Estimate` out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .confidence import (
    bootstrap_ece_ci,
    cross_fitted_probabilities,
    expected_calibration_error,
    score_logits,
    scores_in_unit_interval,
    tempered,
)
from .functional import (
    FLOOR,
    LinearFit,
    TooFewImagesError,
    accuracy,
    bootstrap_auroc_ci,
    bootstrap_mean_ci,
    bootstrap_ratio_ci,
    confidence_drop,
    consistency,
    equivariance_ratio,
    gain_value,
    invariance_terms,
    linear_fit,
    pca_project,
    ratio,
    scramble_auroc,
    split_halves,
    true_class_score,
)

__all__ = [
    "Condition",
    "Estimate",
    "METRICS",
    "Metric",
    "condition_metrics",
    "register_metric",
]

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
        clean_distance, distance: ``(N,)`` the L2 distance of ``x`` and ``Tx`` to their reconstruction from the
            predicted class's capsule (models with a decoder; Frosst, Sabour & Hinton 2018), else None.
        worst_case: the condition is chosen against the model (an attack, a spatial worst case).
        temperature: the model's temperature fitted on its validation split (images it was neither trained on nor
            probed with), which ``ece_scaled`` applies to every image; None: cross-fitted on the clean halves.
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
    clean_distance: np.ndarray | None = None
    distance: np.ndarray | None = None
    worst_case: bool = False
    temperature: float | None = None
    fits: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def available(self) -> frozenset[str]:
        """What this condition can feed: ``scores``, ``representation``, ``poses``, ``reconstruction``, ``semantic``,
        ``unit_scores`` (every clean and transformed score in ``[0, 1]``: softmax probabilities, capsule lengths)."""
        have = {"scores", "representation"}
        if scores_in_unit_interval(self.clean_scores) and scores_in_unit_interval(self.scores):
            have.add("unit_scores")
        if self.pose is not None:
            have.add("poses")
        if self.recon_terms is not None:
            have.add("reconstruction")
        if self.fidelity_terms is not None:
            have.add("fidelity")
        if self.semantic:
            have.add("semantic")
        if self.worst_case and not self.identity and self.distance is not None and self.clean_distance is not None:
            have.add("detection")
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


def _ece(c: Condition, seed: int, n_boot: int) -> Estimate:
    conf, correct = c.scores.max(1), c.scores.argmax(1) == c.labels
    return Estimate(expected_calibration_error(conf, correct), bootstrap_ece_ci(conf, correct, n_boot, seed),
                    len(conf))


def _ece_scaled(c: Condition, seed: int, n_boot: int) -> Estimate:
    key = ("temperature", seed)
    if key in c.fits:
        pass
    elif c.temperature is not None:  # fitted on the validation split: no probed image is scored by its own fit
        c.fits[key] = tempered(score_logits(c.scores), c.temperature)
    else:  # the clean halves' temperatures: cross-fitted, so no image is scored by its own fit
        c.fits[key] = cross_fitted_probabilities(c.clean_scores, c.scores, c.labels, seed)[0]
    probs = c.fits[key]
    conf, correct = probs.max(1), probs.argmax(1) == c.labels
    return Estimate(expected_calibration_error(conf, correct), bootstrap_ece_ci(conf, correct, n_boot, seed),
                    len(conf))


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
        if value == 0.0 and f.change is not None and f.change.sum() <= FLOOR:
            return Estimate(0.0, (0.0, 0.0), len(f.residual), penalty=f.penalty, at_edge=f.at_edge)
        lo, hi = bootstrap_ratio_ci(f.residual, f.change, n_boot, seed)
        return Estimate(value, (1 - hi, 1 - lo), len(f.residual), penalty=f.penalty, at_edge=f.at_edge)
    return fn


def _label_r2(c: Condition, seed: int, n_boot: int) -> Estimate:
    f = c.fit("full", seed)
    lo, hi = bootstrap_ratio_ci(f.label, f.total, n_boot, seed)
    assert f.label is not None  # a full fit has its label term
    return Estimate(float(1 - ratio(f.label, f.total)), (1 - hi, 1 - lo), len(f.label))


def _recon(terms: str) -> Callable[[Condition, int, int], Estimate]:
    def fn(c: Condition, seed: int, n_boot: int) -> Estimate:
        num, den = getattr(c, terms)
        return _ratio_estimate(num, den, seed, n_boot)
    return fn


def _scramble(c: Condition, seed: int, n_boot: int) -> Estimate:
    conf0, conf = c.clean_scores.max(1), c.scores.max(1)
    return Estimate(scramble_auroc(conf0, conf), bootstrap_auroc_ci(conf0, conf, n_boot, seed), len(conf0))


def _detection(c: Condition, seed: int, n_boot: int) -> Estimate:
    assert c.distance is not None and c.clean_distance is not None  # "detection" is available
    # the attacked images are the positives: 1.0 when every one reconstructs worse than every clean image
    return Estimate(scramble_auroc(c.distance, c.clean_distance),
                    bootstrap_auroc_ci(c.distance, c.clean_distance, n_boot, seed), len(c.distance))


_S, _R, _P = frozenset({"scores"}), frozenset({"representation"}), frozenset({"poses"})
_LV = "Lenc & Vedaldi, CVPR 2015 (standardised ridge, held-out)"
_MAHA = "Mahalanobis distance in the clean covariance (ridge-regularised); basis-free as in Kornblith et al., ICML 2019"
_NEVER = frozenset({"computed across conditions"})
_U = frozenset({"unit_scores"})
_ECE = ("Naeini et al., AAAI 2015; Guo et al., ICML 2017: 15 equal-width confidence bins ((m-1)/15, m/15], "
        "sum_m |B_m|/N |acc(B_m) - conf(B_m)|")
for _metric in (
    Metric("accuracy", _accuracy, _S, "accuracy", "higher", "acc"),
    Metric("consistency", _consistency, _S, "consistency (decision kept)", "higher", "cons"),
    Metric("confidence_drop", _confidence_drop, _S, "confidence drop", "lower", "cdrop"),
    Metric("true_class_score", _true_class_score, _S, "true-class score", "higher", "true"),
    Metric("ece", _ece, _U, "ECE, raw scores (15 bins)", "lower", "ece",
           source=_ECE + "; confidence = the top raw score (softmax probability, capsule length)"),
    Metric("ece_scaled", _ece_scaled, _U, "ECE, temperature-scaled (15 bins)", "lower", "ece_ts",
           source=_ECE + "; softmax(log s / T), T fitted by NLL (Guo et al. 2017) on the run's validation images, "
           "else on the clean scores of the other seeded half (two-fold cross-fitting)"),
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
    Metric("detection_auroc", _detection, frozenset({"detection"}), "detection AUROC (reconstruction distance)",
           "higher", "det", source="Frosst, Sabour & Hinton 2018 (DARCCC); Qin et al., ICLR 2020: attacked against "
           "clean images, scored by |x - decode(predicted capsule)|_2"),
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
