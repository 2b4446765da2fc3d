"""Does a comparison reject at its nominal rate and cover at its nominal level? A simulation of seeds x images.

The synthetic data follow the issue's simulation of per-image correctness: for model ``m``, seed ``s`` and image ``i``
the run is right with probability ``sigmoid(mu_m + c_i + delta_mi + a_ms)``, where ``c_i ~ N(0, image_sd^2)`` is the
difficulty both models share (what pairing removes), ``delta_mi ~ N(0, model_image_sd^2)`` each model's own take on
the image (what pairing cannot remove: the two models fail on partly different digits) and ``a_ms ~ N(0, seed_sd^2)``
the luck of the training seed. Under the null both models have the same ``mu``: their population accuracies are equal
though on any one test set they differ, by ``delta`` and by the seeds. The true population difference of a known
effect is computed by Gauss-Hermite quadrature, so coverage is measured against the exact value.

Three regimes (at ``N = 300`` images, about 85% accuracy) set the seed variance against the image sampling:
``no_seed`` (``seed_sd = 0``), ``comparable`` (the seed term of the difference's variance about equals the image
term) and ``seed_dominant`` (the seed term about 20 times the image term).

``tail_table`` checks the far tail (0.1%, where Holm and the Bonferroni-level intervals decide), and
``calibration_table`` compares the calibrated test (:func:`capsprobe.metrics.stats.seed_image_difference`, t on
Satterthwaite degrees of freedom) with the old one (two-stage bootstrap over seeds then images, normal reference), and
``power_table`` gives the calibrated test's power for effects of a few accuracy points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq
from scipy.special import expit, roots_genlaguerre

from .stats import seed_image_difference

__all__ = ["REGIMES", "Regime", "calibration_table", "old_two_stage_test", "power_table", "projected_power", "simulate",
           "tail_table", "true_difference"]


@dataclass(frozen=True)
class Regime:
    """Standard deviations on the logit scale (see the module docstring)."""

    name: str
    seed_sd: float
    image_sd: float = 1.5
    model_image_sd: float = 0.5
    mu: float = 2.0
    seed_sd_ratio: float = 1.0  # model A's seed sd over model B's (1: the same recipe's spread)


REGIMES = {r.name: r for r in (Regime("no_seed", 0.0), Regime("comparable", 0.12), Regime("seed_dominant", 0.5),
                                Regime("unequal_seed_sd", 0.35, seed_sd_ratio=2.0))}


def simulate(regime: Regime, seeds: int, images: int, reps: int, rng: np.random.Generator,
             effect_logit: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``reps`` replicates of two models' correctness, ``(reps, seeds, images)`` each; B has ``mu + effect_logit``."""
    c = rng.normal(0, regime.image_sd, (reps, 1, images))  # the difficulty both models share
    out = []
    for shift, seed_sd in ((0.0, regime.seed_sd * regime.seed_sd_ratio), (effect_logit, regime.seed_sd)):
        delta = rng.normal(0, regime.model_image_sd, (reps, 1, images))
        a = rng.normal(0, 1, (reps, seeds, 1)) * seed_sd
        p = expit(regime.mu + shift + c + delta + a)  # (reps, seeds, images)
        out.append((rng.random(p.shape) < p).astype(np.float32))
    return out[0], out[1]


def true_difference(regime: Regime, effect_logit: float) -> float:
    """Population accuracy of A minus B (B shifted by ``effect_logit``): ``E sigmoid(mu + z_A) - E sigmoid(mu + e +
    z_B)`` with ``z ~ N(0, image_sd^2 + model_image_sd^2 + seed_sd^2)`` (A's seed sd times the ratio), by 80-point
    Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()

    def mean(shift: float, seed_sd: float) -> float:
        sd = np.sqrt(regime.image_sd**2 + regime.model_image_sd**2 + seed_sd**2)
        return float((w * expit(regime.mu + shift + sd * x)).sum())

    return mean(0.0, regime.seed_sd * regime.seed_sd_ratio) - mean(effect_logit, regime.seed_sd)


def _effect_for(regime: Regime, points: float) -> float:
    """The logit shift of B that makes A - B equal ``points`` accuracy points (B worse for points > 0)."""

    return brentq(lambda e: 100 * true_difference(regime, e) - points, -5, 5)


def old_two_stage_test(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = 200,
                       level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The method capsprobe used before: seeds resampled with replacement, then images (shared by both models), the
    p-value and interval from the bootstrap standard error with normal quantiles. Kept to show that the simulation
    tests catch it. Returns ``(difference, p, (low, high))`` per replicate."""
    reps, sa, n = a.shape
    sb = b.shape[1]
    diff = a.mean((1, 2)) - b.mean((1, 2))
    boots = np.empty((reps, n_boot))
    for k in range(n_boot):
        idx = rng.integers(0, n, n)
        ma = a[:, :, idx].mean(2)  # (reps, Sa)
        mb = b[:, :, idx].mean(2)
        ia, ib = rng.integers(0, sa, (reps, sa)), rng.integers(0, sb, (reps, sb))
        boots[:, k] = np.take_along_axis(ma, ia, 1).mean(1) - np.take_along_axis(mb, ib, 1).mean(1)
    se = boots.std(1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * stats.norm.sf(np.abs(diff) / np.where(se > 0, se, 1)), (diff == 0).astype(float))
    half = stats.norm.ppf(0.5 + level / 2) * se
    return diff, p, np.stack([diff - half, diff + half])


def _new_test(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, level: float = 0.95):
    est = seed_image_difference(a, b)
    return est.value, est.p_value(), np.stack(est.interval(level))


METHODS: dict[str, Callable] = {"calibrated": _new_test, "old two-stage": old_two_stage_test}


def calibration_table(seeds: Sequence[int] = (2, 3, 5, 10), regimes: Sequence[str] = tuple(REGIMES),
                      reps: int = 2000, images: int = 300, effect_points: float = 3.0, seed: int = 0,
                      methods: Sequence[str] = ("calibrated",), alpha: float = 0.05) -> pd.DataFrame:
    """False-positive rate at ``alpha`` under the null and coverage of the ``1 - alpha`` interval of a known effect.

    One row per method x regime x seed count: ``fpr``, ``fpr_mc_se`` (its Monte-Carlo standard error at 5%),
    ``coverage``, and the mean interval width in points. Deterministic given ``seed``.
    """
    rows = []
    for name in regimes:
        regime = REGIMES[name]
        null, effect = _effect_for(regime, 0.0), _effect_for(regime, effect_points)
        truth = true_difference(regime, effect)
        for s in seeds:
            for method in methods:
                rng = np.random.default_rng([seed, s, list(REGIMES).index(name)])
                test = METHODS[method]
                a, b = simulate(regime, s, images, reps, rng, null)
                _, p, _ = test(a, b, rng, level=1 - alpha)
                a, b = simulate(regime, s, images, reps, rng, effect)
                _, _, (lo, hi) = test(a, b, rng, level=1 - alpha)
                rows.append({"method": method, "regime": name, "seeds": s, "images": images, "reps": reps,
                             "fpr": float(np.mean(p < alpha)), "fpr_mc_se": float(np.sqrt(alpha * (1 - alpha) / reps)),
                             "coverage": float(np.mean((lo <= truth) & (truth <= hi))),
                             "width_points": float(100 * np.mean(hi - lo))})
    return pd.DataFrame(rows)


def tail_table(seeds: Sequence[int] = (2, 3, 5, 10), regimes: Sequence[str] = tuple(REGIMES), reps: int = 10000,
               images: int = 200, level: float = 0.001, seed: int = 1) -> pd.DataFrame:
    """False-positive rate at a far-tail ``level`` (0.1%: Bonferroni's for a family of 50) of the two references:
    ``tail_fpr`` on the seed level's degrees of freedom (what Holm and the adjusted intervals use) and
    ``plugin_fpr`` on the Satterthwaite df (what the 95% intervals use), with ``mc_se`` at ``level``."""
    rows = []
    for name in regimes:
        regime = REGIMES[name]
        null = _effect_for(regime, 0.0)
        for s in seeds:
            rng = np.random.default_rng([seed, s, list(REGIMES).index(name)])
            tail, plug = [], []
            for chunk in range(0, reps, 2000):
                a, b = simulate(regime, s, images, min(2000, reps - chunk), rng, null)
                est = seed_image_difference(a, b)
                tail.append(est.tail_p_value() < level)
                plug.append(est.p_value() < level)
            rows.append({"regime": name, "seeds": s, "images": images, "reps": reps, "level": level,
                         "tail_fpr": float(np.concatenate(tail).mean()), "plugin_fpr": float(np.concatenate(plug).mean()),
                         "mc_se": float(np.sqrt(level * (1 - level) / reps))})
    return pd.DataFrame(rows)


def power_table(effects: Sequence[float] = (1.0, 2.0, 5.0), seeds: Sequence[int] = (3, 5, 10),
                regimes: Sequence[str] = tuple(REGIMES), reps: int = 1000, images: int = 1000, seed: int = 0,
                alpha: float = 0.05, family: int = 1) -> pd.DataFrame:
    """Power of the calibrated test for accuracy differences of ``effects`` points, at level ``alpha / family``
    (Bonferroni: the level a difference needs to be established in a family of ``family`` conditions; with
    ``family > 1`` on the seed level's df, as the corrected levels are tested)."""
    rows = []
    for name in regimes:
        regime = REGIMES[name]
        for points in effects:
            effect = _effect_for(regime, points)
            for s in seeds:
                rng = np.random.default_rng([seed, s, int(10 * points), list(REGIMES).index(name)])
                a, b = simulate(regime, s, images, reps, rng, effect)
                est = seed_image_difference(a, b)
                p = est.p_value() if family == 1 else est.tail_p_value()
                rows.append({"regime": name, "effect_points": points, "seeds": s, "images": images, "family": family,
                             "power": float(np.mean(p < alpha / family))})
    return pd.DataFrame(rows)


def projected_power(difference: float, se: float, se_seeds: float, seeds: int, new_seeds: int, images: int,
                    family: int = 1, alpha: float = 0.05) -> float:
    """Power of the calibrated test to establish ``difference`` (taken as the true effect) with ``new_seeds`` per
    model, from a measurement at ``seeds`` per model whose standard error ``se`` holds ``se_seeds`` from the seeds.

    The seed term scales as ``seeds / new_seeds``, the image term stays; the level is Bonferroni's ``alpha /
    family`` (Holm's step-down is at least as powerful), the reference t on the degrees of freedom the new design
    would have (``family == 1``: Satterthwaite's, the seed term on ``2 (new_seeds - 1)``; a corrected level: the seed
    level's own ``2 (new_seeds - 1)``, as :mod:`capsprobe.metrics.compare` tests it), the power from the noncentral t.
    """
    seed_var = se_seeds**2 * seeds / new_seeds
    image_var = max(se**2 - se_seeds**2, 0.0)
    se_new = np.sqrt(seed_var + image_var)
    terms = [(seed_var, 2 * (new_seeds - 1)), (image_var, max(images - 1, 1))]
    if family == 1:
        df = (seed_var + image_var) ** 2 / sum(v**2 / d for v, d in terms if v > 0)
    else:
        df = 2 * (new_seeds - 1)
    crit = stats.t.ppf(1 - alpha / (2 * family), df)
    nc = abs(difference) / se_new
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    if np.isfinite(power):
        return float(np.clip(power, 0.0, 1.0))
    # scipy's noncentral t gives NaN at large noncentralities: P(|Z + nc| > crit sqrt(W / df)), W ~ chi2(df), by
    # generalised Gauss-Laguerre quadrature over W (there the power is near 1 and the quadrature exact enough)
    u, w = roots_genlaguerre(96, df / 2 - 1)
    w = w / w.sum()
    scale = crit * np.sqrt(2 * u / df)
    return float(np.clip((w * (stats.norm.sf(scale - nc) + stats.norm.cdf(-scale - nc))).sum(), 0.0, 1.0))
