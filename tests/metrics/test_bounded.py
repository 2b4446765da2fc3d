"""Bounded intervals for shares: inside [0, 1] at 0, 1 and near 1, the untransformed t interval at 0.5, the delta
method on the logit scale, the boundary fallback on the images, and a tiny run of the calibration simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import logit

from capsprobe.metrics.bounded import (
    REGIME_SEED_SDS,
    bounded_coverage_table,
    bounded_interval,
    per_seed_text,
    population_share,
    share_mu,
    simulate_correctness,
)
from capsprobe.metrics.calibration import REGIMES, Regime, true_difference
from capsprobe.metrics.stats import seed_image_mean, t_interval


@pytest.mark.parametrize("means, images", [([1.0, 1.0, 1.0], 200), ([0.0, 0.0, 0.0], 200),
                                           ([0.999, 0.998, 1.0], 1000), ([0.99, 0.99, 0.11], 1000)])
def test_inside_the_range_where_the_t_interval_is_not(means, images):
    """3 seeds at 1, at 0, near 1 and with one failed seed: inside [0, 1] and around the mean."""
    p = np.mean(means)
    se = np.std(means, ddof=1) / np.sqrt(3)
    lo, hi = bounded_interval(means, se, 2.0, images=images)
    assert 0 <= lo <= p <= hi <= 1
    if 0 < p < 1:
        t_lo, t_hi = t_interval(p, se, 2.0)
        assert t_lo < 0 or t_hi > 1  # the cases the issue found: the symmetric interval leaves the range
        assert 0 < lo < p < hi < 1  # strictly inside: the logit never reaches the ends


def test_every_run_right_is_clopper_pearson_on_the_images():
    """All seeds right on all 200 images: the exact one-sided bound on the 200 images, not on the 600 pooled (the
    seeds score the same images); without the image count, the 3 seeds are the trials."""
    lo, hi = bounded_interval([1.0, 1.0, 1.0], 0.0, 2.0, images=200)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 200))
    lo0, hi0 = bounded_interval([0.0, 0.0, 0.0], 0.0, 2.0, images=200)
    assert lo0 == 0.0 and hi0 == pytest.approx(1 - 0.025 ** (1 / 200))
    lo_s, _ = bounded_interval([1.0, 1.0, 1.0], 0.0, 2.0)
    assert lo_s == pytest.approx(0.025 ** (1 / 3))


def test_at_one_half_with_many_images_it_is_the_t_interval():
    """The logit is linear at 0.5: with a small standard error the bounded interval is the t interval."""
    rng = np.random.default_rng(0)
    x = (rng.random((10, 20000)) < 0.5).astype(float)
    est = seed_image_mean(x)
    lo, hi = bounded_interval(x.mean(1), est.se, est.df)
    t_lo, t_hi = est.interval()
    assert lo == pytest.approx(float(t_lo), abs=1e-3 * (t_hi - t_lo))
    assert hi == pytest.approx(float(t_hi), abs=1e-3 * (t_hi - t_lo))


def test_the_delta_method_on_the_logit_scale():
    """At 0.9 the interval is symmetric on the logit scale, with half-width t_df se / (p (1 - p)): the derivative and
    the degrees of freedom given (not S - 1), and the lower arm longer on the share scale."""
    means, se, df = np.array([0.88, 0.90, 0.92]), 0.015, 7.5
    lo, hi = bounded_interval(means, se, df)
    p = 0.9
    assert (logit(lo) + logit(hi)) / 2 == pytest.approx(logit(p))
    assert (logit(hi) - logit(lo)) / 2 == pytest.approx(stats.t.ppf(0.975, df) * se / (p * (1 - p)))
    assert p - lo > hi - p
    wider = bounded_interval(means, se, df, level=0.99)
    assert wider[0] < lo and wider[1] > hi


def test_without_a_standard_error_it_takes_the_seeds():
    means = np.array([0.95, 0.97, 0.96, 0.99])
    lo, hi = bounded_interval(means)
    assert (lo, hi) == pytest.approx(bounded_interval(means, np.std(means, ddof=1) / 2, 3.0))
    assert np.isnan(bounded_interval([0.9])[0])  # one seed, no image term: no interval


def test_batched_like_scalar():
    rng = np.random.default_rng(1)
    means = rng.uniform(0.8, 1.0, (4, 3))
    se, df = rng.uniform(0.005, 0.05, 4), rng.uniform(2, 50, 4)
    lo, hi = bounded_interval(means, se, df, images=100)
    for i in range(4):
        assert (lo[i], hi[i]) == pytest.approx(bounded_interval(means[i], se[i], df[i], images=100))


def test_arcsine_stays_inside_too():
    lo, hi = bounded_interval([0.999, 0.998, 1.0], 0.0006, 2.0, transform="arcsine")
    assert 0 < lo < 0.999 <= hi <= 1


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shares"):
        bounded_interval([0.5, 1.2])
    with pytest.raises(ValueError, match="transform"):
        bounded_interval([0.5, 0.6], transform="probit")


def test_per_seed_text():
    assert per_seed_text([0.9812, 0.979, 0.983]) == "0.981/0.979/0.983"
    assert per_seed_text([0.9812, None, np.nan], ".1f", scale=100) == "98.1/-/-"


def test_the_generator_is_calibrations():
    """Same seed sds as calibration's regimes, and the same population shares as its true_difference."""
    for name, sd in REGIME_SEED_SDS.items():
        assert REGIMES[name].seed_sd == sd
    regime = Regime("x", 0.3, mu=1.2)
    assert population_share(1.2, 0.3) - population_share(1.7, 0.3) == pytest.approx(true_difference(regime, 0.5))
    mu = share_mu(0.99, 0.3)
    assert population_share(mu, 0.3) == pytest.approx(0.99)
    x = simulate_correctness(share_mu(0.8, 0.5), 0.5, 4, 200, 200, np.random.default_rng(2))
    assert x.shape == (200, 4, 200) and x.mean() == pytest.approx(0.8, abs=0.01)


def test_tiny_calibration_run():
    """Near 1 with 3 seeds the t interval leaves [0, 1] or collapses on the boundary and covers badly; the bounded one
    covers about 95% (200 replicates: +/- 3 points of Monte-Carlo error)."""
    table = bounded_coverage_table(seeds=(3,), true_shares=(0.5, 0.999), regimes=("seed_dominant",), reps=200,
                                   images=100)
    half, near = table.iloc[0], table.iloc[1]
    assert half["true_share"] == pytest.approx(0.5) and near["true_share"] == pytest.approx(0.999)
    assert 0.85 <= half["coverage_logit"] <= 0.99 and abs(half["coverage_logit"] - half["coverage_t"]) <= 0.02
    assert 0.9 <= near["coverage_logit"] <= 1.0
    assert near["coverage_t"] < 0.8 and near["outside_t"] + near["boundary"] > 0.5
