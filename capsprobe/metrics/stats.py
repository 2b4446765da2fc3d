"""Means and paired differences of per-image metrics over training seeds x test images, calibrated for few seeds.

The design: a model is trained with ``S`` seeds and every run is scored on the same ``N`` test images, giving a
matrix ``X (S, N)`` (1 where the run is right on the image, a confidence drop, ...). Two models compared are scored on
the *same* images (and the same transformation draws), so their matrices share the image axis but not the seed axis
(seed k of two architectures shares nothing).

The inference is about the population of training seeds and of test images, with the crossed random-effects model
(seeds x images) of the two-way ANOVA with one observation per cell::

    X[s, i] = mu + a_s + b_i + e_si      a: seed effect (sigma_a^2), b: image effect (sigma_b^2), e: the rest

The ANOVA decomposition holds for any distribution of ``X`` (a 0/1 correctness too): the components are uncorrelated
by construction, so the moment identities below need no normality (Searle, Casella & McCulloch 1992, "Variance
Components", sections 4.4 and 4.7). With ``r`` the per-seed means, ``c`` the per-image means and ``MS_e`` the residual
mean square on ``(S - 1)(N - 1)`` degrees of freedom:

- ``E[var(r) / S] = sigma_a^2 / S + sigma_e^2 / (S N)``: the seed term, exactly the variance of the mean given the
  images (the per-seed means are independent draws given the images);
- ``E[var(c) / N - MS_e / (S N)] = sigma_b^2 / N``: the image-sampling term, without the residual the seed term
  already holds.

Their sum estimates ``Var(mean) = sigma_a^2 / S + sigma_b^2 / N + sigma_e^2 / (S N)`` without bias. For a *paired*
difference ``A - B`` the image term is taken on the per-image differences ``d_i = c_A,i - c_B,i``, so the image effects
both models share cancel (``Var(b_A - b_B)`` instead of ``sigma_b^2``), and each model adds its own seed term. The
image term is truncated at 0 (a negative moment estimate), which biases it up by a hair when the two models' image
effects agree (an A/A test); the seed terms are never truncated (they are sample variances).

Two t references, for two kinds of level:

- 95% intervals and raw p-values: Student t on Satterthwaite's (1946) degrees of freedom for the sum of the seed
  term (``S - 1`` per model, pooled: ``S_a + S_b - 2``) and the image term (``N - 1``), the seed term taken for this
  at least at the residual's share (a variance component is not negative). With no image term it is the pooled t
  test on the per-seed means. The simulation (:mod:`capsprobe.metrics.calibration`) finds it rejecting a true null at
  4.3-5.3% at the 5% level from 3 seeds on (3.2-6.8% at 2 seeds);
- the levels of a multiplicity-corrected family (Holm, Bonferroni-level intervals: 0.1% for a family of 50): t on the
  seed level's own ``S_a + S_b - 2`` degrees of freedom (:meth:`SeedImageEstimate.tail_p_value`). The Satterthwaite
  df is estimated from the same seed variance that makes a statistic large when it comes out small, so in the far
  tail it is liberal (about 2x the nominal 0.1% where the seed variance dominates); the statistic's distribution is a
  scale mixture between normal (no seed variance) and t on the seed df (all seed variance), and the t on the seed
  df bounds its tail for every mixture, so this reference holds at any level (conservative where the image term is
  large).

Why not the old two-stage bootstrap: resampling 3 seeds with replacement shrinks the seed variance by ``(S - 1) / S``
and has 10 distinct resamples, and a normal quantile ignores that the seed level has only ``S - 1`` degrees of
freedom: it rejected a true null 10.8% of the time at 3 seeds where the seed variance dominates, and 0.65% where there
was none.

What it assumes and where it breaks:

- seeds are independent draws of the training randomness, images an independent sample of the test distribution, and
  the two models are scored on the same images (pairing); a metric whose per-image values are not exchangeable
  across images (a few images dominating a mean) needs more images before the image term is normal;
- the t reference is exact only for normal per-seed means: with hundreds of images the per-seed means of a 0/1
  correctness are close to normal, with a few dozen images near 0% or 100% accuracy they are not;
- one seed variance for both models (a mixed model with one seed-variance component): where one model's seeds
  spread twice as much (sd) as the other's the 5% test rejects 5.7-6.5% and the 0.1% one up to 0.2% (10 seeds);
- at 2 seeds per model the seed level has 2 degrees of freedom: the 5% test is within 3.2-6.8% but its intervals
  are wide (t on 2 df: 4.30 at 95%, 31.6 at 99.9%), so a difference is almost never established at 2 seeds.
  With 1 seed the seed variance cannot be estimated at all: intervals cover images only and nothing is established;
- a model whose runs all agree exactly (a deterministic recipe) has a zero seed term; that is right for the recipe,
  not evidence of an architecture's stability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["SeedImageEstimate", "seed_image_difference", "seed_image_mean", "t_interval", "t_p_value"]


@dataclass(frozen=True)
class SeedImageEstimate:
    """A mean (or paired difference) with its standard error and degrees of freedom (arrays for batched input).

    Attributes:
        value: the estimate, ``(...)``.
        se: its standard error, ``(...)``.
        df: Satterthwaite degrees of freedom of ``se``, ``(...)`` (``inf`` when no term is estimated from seeds).
        seed_var: the seed term of ``se^2``, ``(...)``.
        image_var: the image-sampling term of ``se^2``, ``(...)``.
        seed_df: degrees of freedom of the seed level alone (``S_a + S_b - 2``; ``S - 1`` for a mean), the reference
            for far tails (:meth:`tail_interval`).
    """

    value: np.ndarray
    se: np.ndarray
    df: np.ndarray
    seed_var: np.ndarray
    image_var: np.ndarray
    seed_df: np.ndarray

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``value -/+ t_{df}(1/2 + level/2) se``."""
        return t_interval(self.value, self.se, self.df, level)

    def p_value(self) -> np.ndarray:
        """Two-sided p-value of ``value = 0`` against t on ``df``."""
        return t_p_value(self.value, self.se, self.df)

    def tail_p_value(self) -> np.ndarray:
        """Two-sided p-value against t on ``seed_df``: valid at every level, for the multiplicity-corrected ones."""
        return t_p_value(self.value, self.se, self.seed_df)

    def tail_interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """``value -/+ t_{seed_df}(1/2 + level/2) se``: the interval for Bonferroni-type levels (module docstring)."""
        return t_interval(self.value, self.se, self.seed_df, level)


def _parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed means, their variance, per-image means and the residual mean square of ``x (..., S, N)``."""
    s, n = x.shape[-2:]
    rows = x.mean(-1)  # (..., S)
    cols = x.mean(-2)  # (..., N)
    grand = rows.mean(-1)
    if s < 2:
        nan = np.full(rows.shape[:-1], np.nan)
        return rows, nan, cols, nan
    var_rows = rows.var(-1, ddof=1)
    resid = x - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    ms_e = (resid**2).sum((-2, -1)) / ((s - 1) * (n - 1)) if n > 1 else np.zeros_like(grand)
    return rows, var_rows, cols, ms_e


def _satterthwaite(terms: list) -> np.ndarray:
    """Degrees of freedom of ``sum(v)`` for independent variance terms ``(v, df)`` (Satterthwaite 1946)."""
    total = sum(v for v, _ in terms)
    denom = sum(np.where(v > 0, v**2 / np.asarray(d, dtype=float), 0.0) for v, d in terms)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, total**2 / np.where(denom > 0, denom, 1.0), np.inf)


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim < 2 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{name}: expected values of shape (..., S, N) with S, N >= 1, got {x.shape}")
    return x


def seed_image_mean(x: np.ndarray) -> SeedImageEstimate:
    """The mean of ``x (..., S, N)`` (seeds x images) with a standard error that includes both (module docstring).

    With one seed the interval covers the images only (``df = N - 1``).
    """
    x = _check(x, "x")
    s, n = x.shape[-2:]
    rows, var_rows, cols, ms_e = _parts(x)
    var_cols = cols.var(-1, ddof=1) if n > 1 else np.zeros(cols.shape[:-1])
    if s < 2:
        image = var_cols / n
        df = np.full(image.shape, float(max(n - 1, 1)))
        return SeedImageEstimate(rows.mean(-1), np.sqrt(image), df, np.full(image.shape, np.nan), image, df)
    seed = var_rows / s
    image = np.maximum(var_cols / n - ms_e / (s * n), 0.0)
    df = _satterthwaite([(np.maximum(seed, ms_e / (s * n)), s - 1), (image, max(n - 1, 1))])
    return SeedImageEstimate(rows.mean(-1), np.sqrt(seed + image), df, seed, image, np.full(seed.shape, float(s - 1)))


def seed_image_difference(a: np.ndarray, b: np.ndarray) -> SeedImageEstimate:
    """The difference of means ``A - B`` of ``a (..., S_a, N)`` and ``b (..., S_b, N)``, paired over the images.

    Column ``i`` of both must be the same image under the same transformation draw. Seeds are independent between
    the models and share one seed variance (pooled on ``S_a + S_b - 2`` degrees of freedom, as a linear mixed model
    with one seed-variance component does). A model with one seed borrows the other's seed variance (and its residual
    stays in the image term: a hair conservative); with one seed in each, the interval covers the images only.
    """
    a, b = _check(a, "a"), _check(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"paired difference: both models need the same images, got {a.shape[-1]} and {b.shape[-1]}")
    n = a.shape[-1]
    sum_sq, seed_df, resid, cols = 0.0, 0, 0.0, []
    for x in (a, b):
        s = x.shape[-2]
        _, var_rows, c, ms_e = _parts(x)
        cols.append(c)
        if s >= 2:
            sum_sq = sum_sq + (s - 1) * var_rows
            seed_df += s - 1
            resid = resid + ms_e / (s * n)
    d = cols[0] - cols[1]  # (..., N): per-image difference of the seed means; shared image effects cancel
    value = d.mean(-1)
    var_d = d.var(-1, ddof=1) if n > 1 else np.zeros(value.shape)
    image = np.maximum(var_d / n - resid, 0.0)
    if not seed_df:
        return SeedImageEstimate(value, np.sqrt(image), np.full(value.shape, float(max(n - 1, 1))),
                                 np.full(value.shape, np.nan), image, np.full(value.shape, float(max(n - 1, 1))))
    seed = np.broadcast_to(sum_sq / seed_df * (1 / a.shape[-2] + 1 / b.shape[-2]), value.shape)
    # for the degrees of freedom the seed term is taken at least at what the residual alone gives it (a variance
    # component is not negative, and the residual is known on (S - 1)(N - 1) degrees of freedom)
    floor = np.broadcast_to(resid, value.shape)
    df = _satterthwaite([(image, max(n - 1, 1)), (np.maximum(seed, floor), seed_df)])
    return SeedImageEstimate(value, np.sqrt(seed + image), df, seed, image, np.full(value.shape, float(seed_df)))


def t_interval(value, se, df, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``value -/+ t_{df}(1/2 + level/2) se`` (a zero ``se`` gives the point)."""
    half = stats.t.ppf(0.5 + level / 2, df) * np.asarray(se, dtype=float)
    half = np.where(np.asarray(se) > 0, half, 0.0)
    return value - half, value + half


def t_p_value(value, se, df) -> np.ndarray:
    """Two-sided p-value of ``value = 0``: ``2 t_{df}.sf(|value| / se)``; 1 or 0 when ``se`` is 0."""
    value, se = np.asarray(value, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(value) / np.where(se > 0, se, 1.0), df)
    return np.where(se > 0, p, np.where(value == 0, 1.0, 0.0))
