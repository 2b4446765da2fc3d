"""Intervals for shares (accuracy, consistency) that stay inside [0, 1], with every seed's value shown beside them.

The per-model interval of a per-image share is the mean of the per-seed means with the seeds x images standard error
of :func:`capsprobe.metrics.stats.seed_image_mean` and a Student t reference on Satterthwaite degrees of freedom. On
the share's own scale that interval is symmetric, so near 0 or 1, or with a seed far from the others, it leaves the
range ("80.8% [44.5, 117.0]"). Here the same estimate and standard error are carried to the logit scale by the delta
method (``se_logit = se / (p (1 - p))``), the t interval on the same degrees of freedom is taken there and mapped back
with the logistic function: the logit interval for a proportion (Agresti 2013, "Categorical Data Analysis", 3rd ed.,
sections 1.4 and 16.1), with a design-based standard error as survey statistics uses it for clustered samples (Korn &
Graubard 1998). The interval is inside (0, 1) by construction, asymmetric where it should be (longer towards 0.5)
and, at shares near 0.5, the untransformed interval (the logit is linear there).

Why the logit and not the arcsine square root (``asin(sqrt(p))``, the variance-stabilising scale of a binomial share,
Anscombe 1948), from :func:`bounded_coverage_table` (10,000 replicates, 300 images, regimes ``comparable`` and
``seed_dominant``, true shares 0.5 to 0.999, 3 to 10 seeds): the logit interval covers 92.2-98.5% (on average 1.2
points from 95%), the arcsine one 92.1-99.1% (1.5 points), the untransformed t interval 56.9-95.7% (4.9 points; it
leaves [0, 1] in up to 85% of replicates near 1 and collapses to a point when every run is right). The arcsine
interval undercovers at 0.995 with 5 seeds (92.2% and 92.5%, the logit 97.0% and 97.6%), and overcovers more at 0.999
(98.4-99.0%, the logit 96.8-98.5%) because its back-transform is clipped at ``pi / 2``. The logit interval pays with a longer lower arm at
2-3 seeds near 1 (0.99 with 3 seeds: 3.8 points wide against 2.4; with 2 seeds 39 against 10): where the seeds
spread as much as the distance to 1, the data do not place the share more closely. At 2 seeds neither covers near
0.99 (82-88%): that is the seed level's 1-2 degrees of freedom, not the scale. The seed effects of the generator
(and of a training recipe: a seed shifts every image's log-odds) are additive on the logit scale.

Shares of exactly 0 or 1 (every run right on every image) have no standard error and no logit. There the interval is
Clopper & Pearson's (1934) exact binomial interval for ``k`` of ``n`` with ``n`` the number of *images* (``k = 0`` or
``n``): the one-sided bound ``(alpha / 2)^(1/n)``. The images, not seeds x images: the seeds score the same images,
so when every run agrees the seeds add little information about the image population; the pooled ``S N`` counts
each image ``S`` times and undercovers (0.995 with 3 seeds: 92.2% and 92.5% against 93.6% and 94.6% on the images).
Without the image count the seeds are the trials (``n = S``): very wide, never too narrow.

What it assumes: the per-seed means are close to normal on the logit scale (exact for the t reference only then; with
hundreds of images and shares away from the boundary they are); one standard error for both directions on the logit
scale, so one failed seed widens both arms there (on the share scale the arm towards 0.5 stays the longer); and the
delta method's linearisation, poor only when ``t se`` is comparable to ``p (1 - p)`` (then the interval is wide,
inside [0, 1], and the untransformed one would have left the range).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq
from scipy.special import expit, logit

from .stats import seed_image_mean, t_interval

__all__ = ["REGIME_SEED_SDS", "bounded_coverage_table", "bounded_interval", "clopper_pearson", "per_seed_text",
           "population_share", "share_mu", "simulate_correctness"]

IMAGE_SD = 1.5  # calibration.Regime's defaults: the difficulty both models share ...
MODEL_IMAGE_SD = 0.5  # ... and each model's own take on an image
REGIME_SEED_SDS = {"no_seed": 0.0, "comparable": 0.12, "seed_dominant": 0.5}  # calibration.REGIMES' seed sds


def clopper_pearson(k, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper & Pearson's (1934) exact interval for a binomial share ``k / n`` (arrays broadcast).

    The lower end is the ``(1 - level) / 2`` quantile of Beta(k, n - k + 1) (0 at ``k = 0``), the upper end the
    ``(1 + level) / 2`` quantile of Beta(k + 1, n - k) (1 at ``k = n``).
    """
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if np.any((k < 0) | (k > n) | (n < 1)):
        raise ValueError(f"clopper_pearson: expected 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = 1 - level
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(alpha / 2, np.maximum(k, 1), n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1)), 1.0)
    return lo, hi


def bounded_interval(seed_means, se_total=None, df=None, level: float = 0.95, *, images: int | None = None,
                     transform: str = "logit") -> tuple[np.ndarray, np.ndarray]:
    """A ``level`` interval for a share from its per-seed means, inside [0, 1] (module docstring).

    Args:
        seed_means: per-seed shares ``(..., S)`` in [0, 1] (the row means of a seeds x images 0/1 matrix).
        se_total: the standard error of their mean on the share scale ``(...)``, with the image sampling in it (what
            :func:`capsprobe.metrics.stats.seed_image_mean` gives); None: ``sd(seed_means) / sqrt(S)`` (seeds only).
        df: degrees of freedom of the t reference ``(...)`` (Satterthwaite's from ``seed_image_mean``); None:
            ``S - 1``.
        level: the confidence level.
        images: the number of images each seed was scored on: the trials of the Clopper-Pearson interval at a share of
            exactly 0 or 1 (None: the seeds are the trials).
        transform: ``"logit"`` (the method) or ``"arcsine"`` (``asin(sqrt(p))``, kept for the calibration table).

    Returns:
        ``(low, high)``, each ``(...)``: inside [0, 1], ``low <= mean <= high``; NaN where no standard error can be had
        (one seed and no ``se_total``).
    """
    x = np.asarray(seed_means, dtype=float)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"bounded_interval: expected per-seed means of shape (..., S) with S >= 1, got {x.shape}")
    if np.any((x < 0) | (x > 1)):
        raise ValueError("bounded_interval: per-seed means must be shares in [0, 1]")
    if transform not in ("logit", "arcsine"):
        raise ValueError(f"bounded_interval: transform is 'logit' or 'arcsine', got {transform!r}")
    s = x.shape[-1]
    p = x.mean(-1)  # (...)
    if se_total is None:
        se = x.std(-1, ddof=1) / np.sqrt(s) if s > 1 else np.full(p.shape, np.nan)
    else:
        se = np.broadcast_to(np.asarray(se_total, dtype=float), p.shape)
    dof = np.broadcast_to(np.asarray(float(s - 1) if df is None else df, dtype=float), p.shape)
    q = stats.t.ppf(0.5 + level / 2, np.where(dof > 0, dof, np.nan))
    inside = (p > 0) & (p < 1)
    pin = np.where(inside, p, 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        if transform == "logit":
            centre, half = logit(pin), q * se / (pin * (1 - pin))
            lo, hi = expit(centre - half), expit(centre + half)
        else:
            centre, half = np.arcsin(np.sqrt(pin)), q * se / (2 * np.sqrt(pin * (1 - pin)))
            lo = np.sin(np.clip(centre - half, 0, np.pi / 2)) ** 2
            hi = np.sin(np.clip(centre + half, 0, np.pi / 2)) ** 2
    zero = inside & (se == 0)  # every seed and image alike: the point, as the t interval gives it
    lo, hi = np.where(zero, p, lo), np.where(zero, p, hi)
    # exactly 0 or 1: Clopper-Pearson on the images (all right, or all wrong)
    n = float(images) if images is not None else float(s)
    cp_lo, cp_hi = clopper_pearson(np.round(p * n), np.full(p.shape, n), level)
    lo, hi = np.where(inside, lo, cp_lo), np.where(inside, hi, cp_hi)
    return np.minimum(lo, p)[()], np.maximum(hi, p)[()]


def per_seed_text(values: Sequence[float | None], spec: str = ".3f", scale: float = 1.0) -> str:
    """Every seed's value in order, ``"/"``-joined: ``"0.981/0.979/0.983"`` (``"-"`` for a missing one).

    Args:
        values: per-seed values (a NaN or None prints ``-``).
        spec: the format of each value.
        scale: a factor applied first (100: percentages).
    """
    return "/".join("-" if v is None or not np.isfinite(v) else format(scale * float(v), spec) for v in values)


def simulate_correctness(mu: float, seed_sd: float, seeds: int, images: int, reps: int, rng: np.random.Generator,
                         image_sd: float = IMAGE_SD, model_image_sd: float = MODEL_IMAGE_SD,
                         difficulty: np.ndarray | None = None, seed_effects: np.ndarray | None = None) -> np.ndarray:
    """One model's 0/1 correctness ``(reps, seeds, images)`` from :mod:`capsprobe.metrics.calibration`'s generator.

    The run is right on image ``i`` with probability ``sigmoid(mu + c_i + delta_i + a_s)``: ``c ~ N(0, image_sd^2)``
    the difficulty (pass ``difficulty (reps, 1, images)`` to share it between models), ``delta ~ N(0,
    model_image_sd^2)`` the model's own take on the image and ``a ~ N(0, seed_sd^2)`` the seed (pass ``seed_effects
    (reps, seeds, 1)`` to choose them, e.g. to select seeds on them).
    """
    c = rng.normal(0, image_sd, (reps, 1, images)) if difficulty is None else difficulty
    delta = rng.normal(0, model_image_sd, (reps, 1, images))
    a = rng.normal(0, seed_sd, (reps, seeds, 1)) if seed_effects is None else seed_effects
    p = expit(mu + c + delta + a)  # (reps, seeds, images)
    return (rng.random(p.shape) < p).astype(np.float32)


def population_share(mu: float, seed_sd: float, image_sd: float = IMAGE_SD,
                     model_image_sd: float = MODEL_IMAGE_SD) -> float:
    """The population share of :func:`simulate_correctness`: ``E sigmoid(mu + z)``, ``z ~ N(0, image_sd^2 +
    model_image_sd^2 + seed_sd^2)``, by 80-point Gauss-Hermite quadrature (as ``calibration.true_difference``)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    sd = np.sqrt(image_sd**2 + model_image_sd**2 + seed_sd**2)
    return float((w / w.sum() * expit(mu + sd * x)).sum())


def share_mu(share: float, seed_sd: float, image_sd: float = IMAGE_SD, model_image_sd: float = MODEL_IMAGE_SD) -> float:
    """The ``mu`` whose population share is ``share``."""
    return brentq(lambda m: population_share(m, seed_sd, image_sd, model_image_sd) - share, -30, 30, xtol=1e-12)


def bounded_coverage_table(seeds: Sequence[int] = (2, 3, 5, 10), true_shares: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
                           regimes: Sequence[str] = ("comparable", "seed_dominant"), reps: int = 2000,
                           images: int = 300, level: float = 0.95, seed: int = 0, chunk: int = 1000) -> pd.DataFrame:
    """Coverage of the population share by the bounded intervals and by the untransformed t interval.

    For each regime (seed sd of :data:`REGIME_SEED_SDS`) x seed count x true share, ``reps`` replicates of one model
    scored on ``images`` images; every interval uses :func:`capsprobe.metrics.stats.seed_image_mean`'s estimate,
    standard error and Satterthwaite df. Columns: ``coverage_t`` (the untransformed interval, as ``comparison.csv``
    gives it), ``coverage_logit`` (the method), ``coverage_arcsine``, ``coverage_logit_pooled`` (the logit interval
    with the boundary fallback on the pooled seeds x images counts instead of the images), ``outside_t`` (the share of
    t intervals that leave [0, 1]), ``boundary`` (the share of replicates whose mean is exactly 0 or 1), the mean
    widths in points, and ``mc_se`` (the Monte-Carlo standard error of a coverage at ``level``). Deterministic given
    ``seed``.
    """
    rows = []
    for r, name in enumerate(regimes):
        seed_sd = REGIME_SEED_SDS[name]
        for share in true_shares:
            mu = share_mu(share, seed_sd)
            truth = population_share(mu, seed_sd)
            for s in seeds:
                rng = np.random.default_rng([seed, s, r, int(round(share * 1e6))])
                hits: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "logit", "arcsine", "logit_pooled")}
                width: dict[str, list[np.ndarray]] = {"t": [], "logit": [], "arcsine": []}
                outside, boundary = [], []
                for start in range(0, reps, chunk):
                    x = simulate_correctness(mu, seed_sd, s, images, min(chunk, reps - start), rng)
                    est = seed_image_mean(x)
                    means = x.mean(-1)  # (reps, S)
                    bounds = {
                        "t": t_interval(est.value, est.se, est.df, level),
                        "logit": bounded_interval(means, est.se, est.df, level, images=images),
                        "arcsine": bounded_interval(means, est.se, est.df, level, images=images, transform="arcsine"),
                        "logit_pooled": bounded_interval(means, est.se, est.df, level, images=s * images),
                    }
                    for key, (lo, hi) in bounds.items():
                        hits[key].append((lo <= truth) & (truth <= hi))
                        if key in width:
                            width[key].append(hi - lo)
                    lo, hi = bounds["t"]
                    outside.append((lo < 0) | (hi > 1))
                    boundary.append((est.value == 0) | (est.value == 1))
                row = {"regime": name, "seeds": s, "images": images, "true_share": truth, "reps": reps}
                row.update({f"coverage_{k}": float(np.concatenate(v).mean()) for k, v in hits.items()})
                row.update(outside_t=float(np.concatenate(outside).mean()),
                           boundary=float(np.concatenate(boundary).mean()),
                           width_t_points=float(100 * np.concatenate(width["t"]).mean()),
                           width_logit_points=float(100 * np.concatenate(width["logit"]).mean()),
                           width_arcsine_points=float(100 * np.concatenate(width["arcsine"]).mean()),
                           mc_se=float(np.sqrt(level * (1 - level) / reps)))
                rows.append(row)
    return pd.DataFrame(rows)
