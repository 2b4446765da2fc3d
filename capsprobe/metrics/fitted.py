"""Fitted metrics over training seeds *and* test images, from per-seed estimates and each run's image interval.

A *fitted* metric (decodability, the equivariance gain, label R^2, an AUROC, the Lie measures: everything not
defined per image) gives one estimate per run, and every run is scored on the same test images. The t interval
(and Welch's test) over the per-seed estimates sees the training seeds but not the image sample all seeds share: with
the image sampling as large as the seed spread it is too narrow. What each run does carry is its own interval over
images (``summary.csv``'s and ``lie.csv``'s ``ci_low`` / ``ci_high``: a percentile bootstrap over the test images
with the run's model fixed). This module joins the two.

The model (one model; the crossed random-effects model of Searle, Casella & McCulloch 1992, "Variance Components",
sections 4.4 and 4.7, seen through its per-seed means)::

    Y_s = mu + a_s + b + e_s      s = 1..S
    a_s: the training seed (var sigma_a^2), b: the image sample, shared by every seed (var sigma_b^2),
    e_s: seed x image, the part of run s's image-sampling error that is its own (var sigma_e^2)

Writing the estimate to first order as its value plus the mean of per-image influence values (Hampel 1974; Efron &
Tibshirani 1993, ch. 21), ``b`` is the image mean of the seed-averaged influence and ``e_s`` the image mean of run
``s``'s departure from it. Then, with ``s^2`` the sample variance of the per-seed estimates and ``v_s`` run ``s``'s
image se squared (all three moments need no normality)::

    Var(mean Y) = sigma_a^2 / S + sigma_b^2 + sigma_e^2 / S
    E[s^2]      = sigma_a^2 + sigma_e^2       (b is the same in every seed: it cancels from the spread)
    E[v_s]      = sigma_b^2 + sigma_e^2       (resampling images moves both image terms of run s)

so ``Var(mean Y) = E[s^2] / S + sigma_b^2`` exactly, and the image term is ``sigma_b^2 = E[v] - sigma_e^2``. The
per-run summaries do not identify ``sigma_e^2`` (that needs the seeds x images table: the per-image influence values
of every run, whose residual mean square is ``sigma_e^2``), only its bounds ``0 <= sigma_e^2 <= min(E v, E s^2)``.
This module takes the bound that is safe: ``sigma_e^2 = 0``, the whole image variance shared by the seeds::

    se^2 = s^2 / S + shared * mean_s(v_s)       shared = 1 (default): biased up by exactly sigma_e^2, never down

(``shared`` < 1 when the share of the image variance common to the seeds, ``sigma_b^2 / (sigma_b^2 + sigma_e^2)``,
is known, for instance from stored per-image influence values; ``s^2 / S + max(0, mean(v) - s^2)`` would be the
other bound, and is liberal when the seeds' image errors agree, as they do for seeds of one architecture.) The bias
is small where it matters: where images dominate, ``sigma_e^2 <= s^2`` is small beside ``mean(v)``; where seeds
dominate, ``sigma_e^2 <= mean(v)`` is small beside ``s^2``. The degrees of freedom are Satterthwaite's (1946), the
seed term on ``S - 1`` and the image term on ``image_df`` (:func:`bootstrap_se_df`: the images and the bootstrap's
resamples; infinite by default, as the image term is known to a few percent where the seed term is known to a few
tens of percent). With no image se it is the t interval over seeds; with no seed spread, the image se on its df; in
between it is never narrower than the t interval over seeds.

A difference ``A - B`` (two models, seeds independent between them) adds the two models' terms: the seed terms as
Welch's (1947) test does (each model its own seed variance) and the image terms as if the two models' image errors
were independent (``correlation = 0``). Both models are scored on the same images, so their image errors are usually
positively correlated and the difference's true image term is smaller (``v_A + v_B - 2 r sqrt(v_A v_B)``): treating
them as independent over-states it, unless the two models' errors on the images run *against* each other (a
correlation below 0: only Cauchy-Schwarz, ``correlation = -1``, bounds every case). ``correlation`` takes a known
value. With no image se it is exactly Welch's test over seeds.

Better, where the runs' bootstrap *replicates* are kept (:func:`fitted_mean_replicates`,
:func:`fitted_difference_replicates`): the probe draws the same image resamples for every run (one probe seed), so
replicate ``k`` of every run, of every model, is on the same images, and the covariance over replicates of two runs'
estimates is their shared image variance: ``sigma_b^2`` between two seeds of a model, ``Cov(b_A, b_B)`` between two
models. That measures what the summaries can only bound: no ``sigma_e^2`` bias, and the two models' shared image
errors cancel from a difference as they do in the paired per-image test. In the simulation it holds 4.4-5.5% from 3
seeds on (200 replicates; the image term's df is taken as ``K - 1``, a little optimistic) where the summaries' test,
with the models' image errors correlated 0.5, rejects 0.05-0.5% with a se 1.4-1.8x too large. It needs the probe to
store ``n_boot`` floats per run x condition x metric (not done yet).

Two references, as :mod:`capsprobe.metrics.stats` has them for the per-image metrics:

- 95% intervals and raw p-values: t on the Satterthwaite df (``df``), the interval never narrower than the one over
  seeds alone (``se_seeds`` on ``seed_df``; the p-value the larger of the two). Satterthwaite's df is liberal where the
  estimated term has few df and the known one is small: adding a small image term to 2 seeds lifts the df from 1
  towards infinity while the se barely moves, so the plain interval *narrows* as the image se grows from 0 (at 2
  seeds, seed-dominant, it covered 89% in the simulation). An added variance component cannot make the estimate
  more precise than the seeds alone say, so the seeds-only interval is a floor: it is Welch's where the image se is
  small, and does not bind where the image term dominates;
- the far tail (Holm, Bonferroni-level intervals): t on ``tail_df``, Satterthwaite's df with the seed term taken at
  its upper 95% confidence limit (``seed_var seed_df / chi2_{seed_df}(0.05)``), floored by the seeds alone as above
  (with no image se: Welch's test again). The Satterthwaite df grows when the seed variance comes out small, exactly
  when the statistic is large; with the seed term at the largest value the seeds allow, the df stays near the seed
  level's where the seeds could dominate and near the images' where they cannot. The seed level's own df
  (``seed_df``), what the per-image test uses, bounds every mixture too, but at 3 seeds where the images dominate it
  leaves the 0.1% level at about 0% (t on 2-4 df against a statistic that is nearly normal): nothing would be
  established. This rule is a choice calibrated by the
  simulation (0.00-0.12% at 0.1%, Monte-Carlo se 0.014%, over every regime and 2-10 seeds, the image se known or
  read from a 200 or 1,000-resample interval), not a theorem.

The calibration (:func:`fitted_calibration_table`) simulates the model above for two models under the null, with
the per-run image se known or estimated the way the probe estimates it (a percentile interval from 200 or 1,000
bootstrap resamples of a few hundred images, the resamples the same for every run), at 2, 3, 5 and 10 seeds, where
the image se is 3x, 1x and 0.3x the seed se: false positives at 5%, coverage of the per-model 95% interval and the
rate at 0.1%, beside the current t interval / Welch test over seeds.

What it assumes: the per-run image se is an honest se of the run's estimate over image samples (a bootstrap that
refits nothing leaves out the variance of the fitting half: the probe's split is the same for every run, so that
part is shared by the seeds and belongs in ``b``, unmeasured); the estimates are roughly normal over seeds and images
(an estimate near a bound, an AUROC near 1, is not); the image sample is the same for every seed of a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import ndtri

from .functional import LEVEL
from .stats import t_interval, t_p_value

__all__ = ["FITTED_METHODS", "FITTED_REGIMES", "FittedEstimate", "FittedRegime", "bootstrap_se_df",
           "fitted_calibration_table", "fitted_difference", "fitted_difference_replicates", "fitted_mean",
           "fitted_mean_replicates", "image_se_from_interval"]


@dataclass(frozen=True)
class FittedEstimate:
    """A mean over seeds (or a difference of two models' means) with a standard error over seeds and images.

    Arrays of the batch shape of the input (0-d for one estimate: ``float(est.value)``).

    Attributes:
        value: the mean of the per-seed estimates (``A - B`` for a difference).
        se: its standard error, ``sqrt(seed_var + image_var)``.
        df: Satterthwaite degrees of freedom of ``se`` (``image_df`` when no seed term is estimated).
        seed_var: the seed term of ``se^2`` (``s^2 / S``; summed over the two models; NaN with one seed).
        image_var: the image term of ``se^2``.
        seed_df: the seed level's degrees of freedom (``S - 1``; Welch's df of the seed terms for a difference): the
            seeds-only interval's, the floor of every interval.
        tail_df: the far-tail reference's degrees of freedom (:meth:`tail_interval`, :attr:`tail_p`; module
            docstring): Satterthwaite's with the seed terms at their upper 95% confidence limits.
        level: the level of :attr:`interval`.
    """

    value: np.ndarray
    se: np.ndarray
    df: np.ndarray
    seed_var: np.ndarray
    image_var: np.ndarray
    seed_df: np.ndarray
    tail_df: np.ndarray
    level: float = LEVEL

    @property
    def se_seeds(self) -> np.ndarray:
        """The part of ``se`` that the seeds bring, ``sqrt(seed_var)`` (``compare``'s ``se_seeds`` column)."""
        return np.sqrt(self.seed_var)

    @property
    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``level`` interval: ``value -/+ t_{df}(1/2 + level/2) se``, never narrower than the interval over
        seeds alone, ``value -/+ t_{seed_df}(1/2 + level/2) se_seeds`` (module docstring)."""
        return self.interval_at(self.level)

    def interval_at(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`interval` at another ``level``."""
        return self._union(self.df, level)

    @property
    def p(self) -> np.ndarray:
        """Two-sided p-value of ``value = 0`` that goes with :attr:`interval`: the larger of the p-value against t on
        ``df`` and the one over seeds alone (``se_seeds`` on ``seed_df``)."""
        return self._union_p(self.df)

    @property
    def tail_p(self) -> np.ndarray:
        """Two-sided p-value against t on ``tail_df`` (floored by the seeds alone, as :attr:`p`): for the levels of a
        multiplicity-corrected family."""
        return self._union_p(self.tail_df)

    def tail_interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """``value -/+ t_{tail_df}(1/2 + level/2) se`` (floored by the seeds alone): the interval at Bonferroni-type
        levels."""
        return self._union(self.tail_df, level)

    def _seeds_only(self) -> tuple[np.ndarray, np.ndarray]:
        """``se_seeds`` and ``seed_df``, 0 and 1 where there is no seed term (one seed: no floor)."""
        return np.nan_to_num(self.se_seeds), np.where(np.isfinite(self.seed_df), self.seed_df, 1.0)

    def _union(self, df: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = t_interval(self.value, self.se, df, level)
        slo, shi = t_interval(self.value, *self._seeds_only(), level)
        return np.minimum(lo, slo), np.maximum(hi, shi)

    def _union_p(self, df: np.ndarray) -> np.ndarray:
        p = t_p_value(self.value, self.se, df)
        return np.where(np.isfinite(self.seed_var), np.maximum(p, t_p_value(self.value, *self._seeds_only())), p)


def image_se_from_interval(ci_low, ci_high, level: float = LEVEL, n_boot: int | None = None) -> np.ndarray:
    """The image se of a run from its ``level`` interval over images: ``(ci_high - ci_low) / (2 z)``.

    For the probe's percentile bootstrap intervals (:func:`capsprobe.metrics.percentile_interval`) this is the
    bootstrap se of a normal-shaped bootstrap distribution, read from the width (Efron & Tibshirani 1993, ch. 13);
    for a skewed one it is the se that gives the same central width. NaN where a bound is NaN.

    ``z`` is ``z_{1/2 + level/2}`` (1.96 at 95%), or with ``n_boot`` the normal quantile the probe's interpolated
    sample quantile (numpy's default, Hyndman & Fan 1996 type 7) reaches on average from ``n_boot`` resamples:
    ``Phi^-1((q (n_boot - 1) + 1) / (n_boot + 1))`` with ``q = 1/2 + level/2``, the expected position of that order
    statistic. Type 7 pulls the extreme quantiles inwards: 1.884 at 200 resamples and 1.945 at 1,000 instead of
    1.96, so without ``n_boot`` the se of a 200-resample interval is 4% low.
    """
    lo, hi = np.asarray(ci_low, dtype=float), np.asarray(ci_high, dtype=float)
    if np.any(hi < lo):
        raise ValueError("image_se_from_interval: ci_high below ci_low")
    q = 0.5 + level / 2
    z = stats.norm.ppf(q if n_boot is None else (q * (n_boot - 1) + 1) / (n_boot + 1))
    return (hi - lo) / (2 * z)


def bootstrap_se_df(n_images: float, n_boot: float, level: float = LEVEL) -> float:
    """Effective degrees of freedom of an image se squared read from a ``level`` percentile interval of ``n_boot``
    bootstrap resamples of ``n_images`` images: ``1 / (1 / (n_images - 1) + 1 / df_boot)``.

    ``n_images - 1`` is the df of the variance of ``n_images`` normal influence values; ``df_boot = 2 / CV^2`` of the
    squared width of the interval from ``n_boot`` resamples, from the asymptotic variance of two sample quantiles
    ``q_p``, ``q_{1-p}`` (``p (1 - p) / (n phi(z)^2)`` each, covariance ``p^2 / (n phi(z)^2)``; Serfling 1980,
    section 2.3): ``Var(width) = 2 p (1 - 2 p) / (n_boot phi(z)^2)`` with ``p = 1/2 - level/2``. About ``0.55
    n_boot`` at 95% (110 at 200 resamples, 550 at 1,000). Heavy-tailed influence values have fewer.
    """
    p = 0.5 - level / 2
    z = stats.norm.ppf(1 - p)
    cv2_width = 2 * p * (1 - 2 * p) / (n_boot * stats.norm.pdf(z) ** 2) / (2 * z) ** 2
    df_boot = 2 / (4 * cv2_width)  # the square doubles the coefficient of variation
    return float(1 / (1 / max(n_images - 1, 1) + 1 / df_boot))


def _satterthwaite(terms: Sequence[tuple[np.ndarray, np.ndarray | float]]) -> np.ndarray:
    """Degrees of freedom of ``sum(v)`` for independent variance terms ``(v, df)`` (Satterthwaite 1946); a term on
    infinite df or of zero size adds nothing to the denominator; ``inf`` when every term is known."""
    total = sum(np.asarray(v, dtype=float) for v, _ in terms)
    denom = sum(np.where((np.asarray(v) > 0) & np.isfinite(d), np.asarray(v, dtype=float) ** 2 / np.asarray(d, float),
                         0.0) for v, d in terms)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(denom) > 0, np.asarray(total) ** 2 / np.where(np.asarray(denom) > 0, denom, 1.0),
                        np.inf)


def _upper(var: np.ndarray, df, confidence: float = 0.95) -> np.ndarray:
    """A variance estimate on ``df`` degrees of freedom at its upper ``confidence`` limit: ``var df / chi2_df(1 -
    confidence)`` (the normal-theory interval of a variance)."""
    return var * df / stats.chi2.ppf(1 - confidence, df)


def _check(values, image_se, name: str) -> tuple[np.ndarray, np.ndarray]:
    v, s = np.asarray(values, dtype=float), np.asarray(image_se, dtype=float)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"{name}: expected per-seed values of shape (..., S) with S >= 1, got {v.shape}")
    if s.shape != v.shape:
        raise ValueError(f"{name}: image_se must have the values' shape {v.shape}, got {s.shape}")
    if np.any(s < 0):
        raise ValueError(f"{name}: negative image se")
    return v, s


def _parts(values: np.ndarray, image_se: np.ndarray, shared: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean, seed term ``s^2 / S`` (NaN at one seed), image term ``shared mean(v)`` and ``S`` of ``(..., S)``."""
    n = values.shape[-1]
    seed = values.var(-1, ddof=1) / n if n >= 2 else np.full(values.shape[:-1], np.nan)
    return values.mean(-1), seed, shared * (image_se**2).mean(-1), n


def fitted_mean(values, image_se, level: float = LEVEL, image_df: float = np.inf,
                shared: float = 1.0) -> FittedEstimate:
    """The mean of a fitted metric's per-seed estimates with a ``level`` interval over seeds and images (module
    docstring): ``se^2 = s^2 / S + shared * mean(image_se^2)``, t on Satterthwaite's df.

    Args:
        values: ``(..., S)`` per-seed estimates of one model on one condition (the same test images in every run).
        image_se: ``(..., S)`` each run's se over images (:func:`image_se_from_interval`).
        level: the interval's level.
        image_df: degrees of freedom of the image term (:func:`bootstrap_se_df`; ``inf``: taken as known).
        shared: the share of a run's image variance that its seeds share (1: the conservative bound).

    With one seed the interval covers the images only (``se = sqrt(shared) image_se``, ``df = image_df``).
    """
    v, s = _check(values, image_se, "fitted_mean")
    value, seed, image, n = _parts(v, s, shared)
    if n < 2:
        df = np.full(value.shape, float(image_df))
        return FittedEstimate(value, np.sqrt(image), df, seed, image, np.full(value.shape, np.nan), df, level)
    df = _satterthwaite([(seed, n - 1), (image, image_df)])
    tail_df = _satterthwaite([(_upper(seed, n - 1), n - 1), (image, image_df)])
    tail_df = np.where(np.isfinite(tail_df), tail_df, float(n - 1))
    return FittedEstimate(value, np.sqrt(seed + image), df, seed, image, np.full(value.shape, float(n - 1)),
                          tail_df, level)


def fitted_difference(values_a, image_se_a, values_b, image_se_b, level: float = LEVEL, image_df: float = np.inf,
                      shared: float = 1.0, correlation: float = 0.0) -> FittedEstimate:
    """``mean(A) - mean(B)`` of two models' per-seed estimates, seeds independent between the models, with its
    standard error over seeds and images (module docstring).

    ``se^2 = s_A^2 / S_A + s_B^2 / S_B + i_A + i_B - 2 correlation sqrt(i_A i_B)``, ``i = shared * mean(image_se^2)``;
    t on the Satterthwaite df of the four terms (the image terms on ``image_df`` each). ``seed_var`` (``se_seeds^2``)
    is Welch's variance, ``seed_df`` Welch's df: with no image se this is Welch's (1947) test over seeds.

    Args:
        values_a, values_b: ``(..., S_A)``, ``(..., S_B)`` per-seed estimates (at least 2 seeds each).
        image_se_a, image_se_b: their runs' image se, shaped like the values.
        level, image_df, shared: as :func:`fitted_mean`.
        correlation: the correlation of the two models' image errors (0: taken as independent, conservative when it
            is positive; -1: the Cauchy-Schwarz bound, conservative always).
    """
    va, sa = _check(values_a, image_se_a, "fitted_difference (a)")
    vb, sb = _check(values_b, image_se_b, "fitted_difference (b)")
    if min(va.shape[-1], vb.shape[-1]) < 2:
        raise ValueError("fitted_difference needs at least 2 seeds per model (one seed has no seed variance)")
    mean_a, seed_a, image_a, na = _parts(va, sa, shared)
    mean_b, seed_b, image_b, nb = _parts(vb, sb, shared)
    seed = seed_a + seed_b
    image = np.maximum(image_a + image_b - 2 * correlation * np.sqrt(image_a * image_b), 0.0)
    df = _satterthwaite([(seed_a, na - 1), (seed_b, nb - 1), (image, image_df)])
    seed_df = _satterthwaite([(seed_a, na - 1), (seed_b, nb - 1)])
    seed_df = np.where(np.isfinite(seed_df), seed_df, float(na + nb - 2))  # no seed spread at all: the pooled df
    tail_df = _satterthwaite([(_upper(seed, seed_df), seed_df), (image, image_df)])
    tail_df = np.where(np.isfinite(tail_df), tail_df, seed_df)
    return FittedEstimate(mean_a - mean_b, np.sqrt(seed + image), df, seed, image, seed_df, tail_df, level)


# --- from the runs' bootstrap replicates: the shared image variance measured, not bounded ---------------------------


def _replicate_cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Covariances over the replicate axis of every row of ``x (..., S, K)`` with every row of ``y (..., T, K)``:
    ``(..., S, T)``."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    return np.einsum("...sk,...tk->...st", xc, yc) / (x.shape[-1] - 1)


def _off_diagonal_mean(c: np.ndarray) -> np.ndarray:
    s = c.shape[-1]
    return (c.sum((-2, -1)) - np.trace(c, axis1=-2, axis2=-1)) / (s * (s - 1))


def _check_replicates(values, replicates, name: str) -> tuple[np.ndarray, np.ndarray]:
    v, r = np.asarray(values, dtype=float), np.asarray(replicates, dtype=float)
    if r.shape[:-1] != v.shape or r.shape[-1] < 2:
        raise ValueError(f"{name}: replicates must be (..., S, K) for values (..., S) = {v.shape} and K >= 2 "
                         f"resamples, got {r.shape}")
    if v.shape[-1] < 2:
        raise ValueError(f"{name}: needs at least 2 seeds (the shared image variance is a covariance between runs)")
    return v, r


def _replicate_df(k: int, n_images: int | None) -> float:
    return float(1 / (1 / (k - 1) + (0.0 if n_images is None else 1 / max(n_images - 1, 1))))


def fitted_mean_replicates(values, replicates, level: float = LEVEL, n_images: int | None = None) -> FittedEstimate:
    """:func:`fitted_mean` with the image term measured: the mean covariance, over the bootstrap replicates, of two
    different runs' estimates (``sigma_b^2``, module docstring) instead of a run's own image variance (which also
    holds ``sigma_e^2``).

    The runs' replicates must come from the *same* image resamples (replicate ``k`` of every run on the same drawn
    images, as the probe's one seed gives): then ``Cov_k(Y*_s, Y*_t) = sigma_b^2`` for ``s != t`` and ``sigma_b^2 +
    sigma_e^2`` for ``s = t`` (Efron & Tibshirani 1993, ch. 6 and 21: the bootstrap covariance of two statistics on
    the same resamples). The seeds x images decomposition of Searle et al. (1992) with bootstrap replicates in the
    place of images.

    Args:
        values: ``(..., S)`` per-seed estimates (at least 2 seeds).
        replicates: ``(..., S, K)`` each run's bootstrap replicates of its estimate, on common resamples.
        level: the interval's level.
        n_images: the images resampled (for the image term's df, with the ``K - 1`` of the replicates).
    """
    v, r = _check_replicates(values, replicates, "fitted_mean_replicates")
    n = v.shape[-1]
    seed = v.var(-1, ddof=1) / n
    image = np.maximum(_off_diagonal_mean(_replicate_cov(r, r)), 0.0)
    image_df = _replicate_df(r.shape[-1], n_images)
    df = _satterthwaite([(seed, n - 1), (image, image_df)])
    tail_df = _satterthwaite([(_upper(seed, n - 1), n - 1), (image, image_df)])
    tail_df = np.where(np.isfinite(tail_df), tail_df, float(n - 1))
    return FittedEstimate(v.mean(-1), np.sqrt(seed + image), df, seed, image, np.full(seed.shape, float(n - 1)),
                          tail_df, level)


def fitted_difference_replicates(values_a, replicates_a, values_b, replicates_b, level: float = LEVEL,
                                 n_images: int | None = None) -> FittedEstimate:
    """:func:`fitted_difference` with the image term measured from the runs' bootstrap replicates on common resamples
    (:func:`fitted_mean_replicates`), the two models' shared image errors and their covariance included::

        image = off(A, A) + off(B, B) - 2 mean Cov_k(Y*_A,s, Y*_B,t)  =  Var(b_A - b_B)

    (``off``: the mean covariance of two different runs of one model), truncated at 0. No assumption about the
    cross-model correlation: where both models get the same images wrong the difference's image term shrinks, as
    the paired per-image test's does (:func:`capsprobe.metrics.stats.seed_image_difference`).
    """
    va, ra = _check_replicates(values_a, replicates_a, "fitted_difference_replicates (a)")
    vb, rb = _check_replicates(values_b, replicates_b, "fitted_difference_replicates (b)")
    if ra.shape[-1] != rb.shape[-1]:
        raise ValueError(f"both models need the same resamples, got {ra.shape[-1]} and {rb.shape[-1]} replicates")
    na, nb = va.shape[-1], vb.shape[-1]
    seed_a, seed_b = va.var(-1, ddof=1) / na, vb.var(-1, ddof=1) / nb
    seed = seed_a + seed_b
    cross = _replicate_cov(ra, rb).mean((-2, -1))
    image = np.maximum(_off_diagonal_mean(_replicate_cov(ra, ra)) + _off_diagonal_mean(_replicate_cov(rb, rb))
                       - 2 * cross, 0.0)
    image_df = _replicate_df(ra.shape[-1], n_images)
    df = _satterthwaite([(seed_a, na - 1), (seed_b, nb - 1), (image, image_df)])
    seed_df = _satterthwaite([(seed_a, na - 1), (seed_b, nb - 1)])
    seed_df = np.where(np.isfinite(seed_df), seed_df, float(na + nb - 2))
    tail_df = _satterthwaite([(_upper(seed, seed_df), seed_df), (image, image_df)])
    tail_df = np.where(np.isfinite(tail_df), tail_df, seed_df)
    return FittedEstimate(va.mean(-1) - vb.mean(-1), np.sqrt(seed + image), df, seed, image, seed_df, tail_df, level)


# --- calibration by simulation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FittedRegime:
    """One simulated setting, in units of the between-seed sd (``sigma_a^2 + sigma_e^2 = 1``).

    Attributes:
        name: the table's ``regime``.
        image_ratio: a run's image se over the seed sd (``sqrt(sigma_b^2 + sigma_e^2)``).
        interaction: ``sigma_e^2`` as a share of the smaller of the two variances (0: the seeds' image errors are the
            same; 1: as much of them the seeds' own as can be).
        correlation: the correlation of the two models' shared image terms ``b_A``, ``b_B`` (same test images).
    """

    name: str
    image_ratio: float
    interaction: float = 0.5
    correlation: float = 0.5

    def components(self) -> tuple[float, float, float]:
        """``(sigma_a^2, sigma_b^2, sigma_e^2)``."""
        e = self.interaction * min(1.0, self.image_ratio**2)
        return 1.0 - e, self.image_ratio**2 - e, e


FITTED_REGIMES = {r.name: r for r in (
    # the end the new test's variance is exact at: the seeds' image errors the same, the two models' independent
    FittedRegime("image_dominant", 3.0, 0.0, 0.0), FittedRegime("comparable", 1.0, 0.0, 0.0),
    FittedRegime("seed_dominant", 0.3, 0.0, 0.0),
    # what the same test images more likely give: half the smaller variance seed x image, the models' shared image
    # terms correlated 0.5 (the new test is conservative there, by design)
    FittedRegime("image_dominant_correlated", 3.0), FittedRegime("comparable_correlated", 1.0),
    FittedRegime("seed_dominant_correlated", 0.3),
    # the far end of what the summaries cannot tell apart: all of the image variance the seeds' own
    FittedRegime("seed_dominant_interaction", 0.3, interaction=1.0, correlation=0.0),
)}

FITTED_METHODS = ("welch", "fitted", "fitted_boot200", "fitted_boot1000", "fitted_replicates200")


def _percentile_width(rng: np.random.Generator, shape: tuple[int, ...], n_boot: int,
                      level: float = LEVEL) -> np.ndarray:
    """``q_hi - q_lo``, the ``level`` percentile interval's width of ``n_boot`` standard normal draws, sampled from the
    order statistics nearest numpy's interpolated quantiles
    (``U_(k) ~ Beta(k, n - k + 1)``, the upper one given the lower by the Markov property of uniform order statistics;
    David & Nagaraja 2003, section 2.2) instead of drawing the resamples."""
    p = 0.5 - level / 2
    k_lo = max(int(round(p * (n_boot - 1))) + 1, 1)
    k_hi = min(int(round((1 - p) * (n_boot - 1))) + 1, n_boot)
    u_lo = rng.beta(k_lo, n_boot - k_lo + 1, shape)
    u_hi = u_lo + (1 - u_lo) * rng.beta(k_hi - k_lo, n_boot - k_hi + 1, shape)
    return ndtri(u_hi) - ndtri(u_lo)


def _simulate(regime: FittedRegime, seeds: int, reps: int, rng: np.random.Generator, n_boot: int | None,
              images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two models' per-seed estimates under the null (``mu = 0``) and each run's image se, ``(reps, seeds)`` each.

    ``n_boot`` None: the image se known (``sqrt(sigma_b^2 + sigma_e^2)``). Otherwise estimated as the probe does: the
    run's image variance realised on ``images`` images (its shared part once per model, its own part per run: chi^2
    on ``images - 1`` df) and read from a percentile interval of ``n_boot`` resamples, the resamples the same for
    every run (the probe's one seed), so the Monte-Carlo error of the width is common to all runs of both models;
    the se read from it by :func:`image_se_from_interval` with ``n_boot``.
    """
    va, vb, ve = regime.components()
    r = regime.correlation
    z = rng.standard_normal((2, reps, 1))
    b = np.sqrt(vb) * np.stack([z[0], r * z[0] + np.sqrt(1 - r**2) * z[1]])  # (2, reps, 1)
    y = b + np.sqrt(va) * rng.standard_normal((2, reps, seeds)) + np.sqrt(ve) * rng.standard_normal((2, reps, seeds))
    if n_boot is None:
        se = np.full(y.shape, np.sqrt(vb + ve))
    else:
        dof = images - 1
        shared = vb * rng.chisquare(dof, (2, reps, 1)) / dof
        own = ve * rng.chisquare(dof, (2, reps, seeds)) / dof
        width = _percentile_width(rng, (1, reps, 1), n_boot)
        se = np.sqrt(shared + own) * image_se_from_interval(np.zeros_like(width), width, n_boot=n_boot)
    return y[0], se[0], y[1], se[1]


def _simulate_replicates(regime: FittedRegime, seeds: int, reps: int, rng: np.random.Generator, n_boot: int,
                         images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two models' per-seed estimates under the null and every run's ``n_boot`` bootstrap replicates on common
    resamples, ``(reps, seeds)`` and ``(reps, seeds, n_boot)``: replicate ``k`` moves every run by the same shared
    draw (correlated between the models as ``b`` is) plus its own, at the image variances realised on ``images``."""
    va, vb, ve = regime.components()
    r, dof = regime.correlation, images - 1
    z = rng.standard_normal((2, reps, 1))
    b = np.sqrt(vb) * np.stack([z[0], r * z[0] + np.sqrt(1 - r**2) * z[1]])
    y = b + np.sqrt(va) * rng.standard_normal((2, reps, seeds)) + np.sqrt(ve) * rng.standard_normal((2, reps, seeds))
    shared = np.sqrt(vb * rng.chisquare(dof, (2, reps, 1, 1)) / dof)
    own = np.sqrt(ve * rng.chisquare(dof, (2, reps, seeds, 1)) / dof)
    zk = rng.standard_normal((2, reps, 1, n_boot))
    zk = np.stack([zk[0], r * zk[0] + np.sqrt(1 - r**2) * zk[1]])
    out = y[..., None] + shared * zk + own * rng.standard_normal((2, reps, seeds, n_boot))
    return y[0], out[0], y[1], out[1]


def _welch_over_seeds(ya, sa, yb, sb) -> FittedEstimate:
    return fitted_difference(ya, np.zeros_like(sa), yb, np.zeros_like(sb))


def _joined(parts: list[FittedEstimate]) -> FittedEstimate:
    """One estimate of the concatenated batches of ``parts``."""
    fields = ("value", "se", "df", "seed_var", "image_var", "seed_df", "tail_df")
    joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
    return FittedEstimate(**joined, level=parts[0].level)


def _estimates(method: str, regime: FittedRegime, s: int, reps: int, rng: np.random.Generator, images: int,
               alpha: float) -> tuple[FittedEstimate, FittedEstimate]:
    """The difference and model A's mean, ``reps`` simulated replicates, by ``method``."""
    if method == "fitted_replicates200":
        diffs, means = [], []
        for start in range(0, reps, 1000):  # (2, 1000, S, 200) replicates at a time
            ya, ra, yb, rb = _simulate_replicates(regime, s, min(1000, reps - start), rng, 200, images)
            diffs.append(fitted_difference_replicates(ya, ra, yb, rb, n_images=images))
            means.append(fitted_mean_replicates(ya, ra, 1 - alpha, n_images=images))
        return _joined(diffs), _joined(means)
    n_boot = {"fitted_boot200": 200, "fitted_boot1000": 1000}.get(method)
    ya, sa, yb, sb = _simulate(regime, s, reps, rng, n_boot, images)
    if method == "welch":
        return _welch_over_seeds(ya, sa, yb, sb), fitted_mean(ya, np.zeros_like(sa), 1 - alpha)
    df_img = np.inf if n_boot is None else bootstrap_se_df(images, n_boot)
    return (fitted_difference(ya, sa, yb, sb, image_df=df_img),
            fitted_mean(ya, sa, 1 - alpha, image_df=df_img))


def fitted_calibration_table(seeds: Sequence[int] = (2, 3, 5, 10), regimes: Sequence[str] = tuple(FITTED_REGIMES),
                             reps: int = 20000, seed: int = 0, methods: Sequence[str] = FITTED_METHODS,
                             images: int = 500, alpha: float = 0.05, tail: float = 0.001) -> pd.DataFrame:
    """False positives, coverage and the far tail of the current test (``welch``: t interval / Welch over seeds) and
    the seeds x images one (``fitted``: image se known; ``fitted_boot200`` / ``fitted_boot1000``: estimated from a
    percentile interval of 200 / 1,000 resamples of ``images`` images, ``image_df`` from :func:`bootstrap_se_df`;
    ``fitted_replicates200``: :func:`fitted_difference_replicates` on 200 replicates per run), two models with equal
    means.

    One row per method x regime x seed count: ``fpr`` (the difference, p < ``alpha``), ``coverage`` (model A's
    ``1 - alpha`` interval covers its mean), ``tail_fpr`` (:attr:`FittedEstimate.tail_p` < ``tail``: Holm's
    reference), ``plugin_tail_fpr`` (:attr:`FittedEstimate.p` < ``tail``: the Satterthwaite df),
    ``seed_df_tail_fpr`` (t on the seed df alone, as :mod:`capsprobe.metrics.stats` does for the paired per-image
    test; for the Welch rows all three are Welch's), ``se_ratio`` (the difference's mean se over its true
    sd) and the Monte-Carlo se of ``fpr`` and ``tail_fpr``. Deterministic given ``seed``; the same data for every
    method of a regime and seed count.
    """
    rows = []
    for name in regimes:
        regime = FITTED_REGIMES[name]
        va, vb, ve = regime.components()
        for s in seeds:
            true_sd = np.sqrt(2 * (va / s + vb + ve / s) - 2 * regime.correlation * vb)
            for method in methods:
                rng = np.random.default_rng([seed, s, list(FITTED_REGIMES).index(name)])
                diff, mean = _estimates(method, regime, s, reps, rng, images, alpha)
                lo, hi = mean.interval
                rows.append({"method": method, "regime": name, "seeds": s, "image_ratio": regime.image_ratio,
                             "reps": reps, "fpr": float(np.mean(diff.p < alpha)),
                             "coverage": float(np.mean((lo <= 0) & (0 <= hi))),
                             "tail_fpr": float(np.mean(diff.tail_p < tail)),
                             "plugin_tail_fpr": float(np.mean(diff.p < tail)),
                             "seed_df_tail_fpr": float(np.mean(t_p_value(diff.value, diff.se, diff.seed_df) < tail)),
                             "se_ratio": float(np.mean(diff.se) / true_sd),
                             "fpr_mc_se": float(np.sqrt(alpha * (1 - alpha) / reps)),
                             "tail_mc_se": float(np.sqrt(tail * (1 - tail) / reps))})
    return pd.DataFrame(rows)
