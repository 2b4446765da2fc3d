"""Fitted metrics over seeds and images: the per-run image se joins the between-seed spread (issue 47, item 4).

The specification: with no image se the interval is the t interval over seeds (Welch for a difference); with no seed
spread it is the image se; it widens with the image se; a difference is ``a - b``; and in a small simulation where
the image sampling dominates, Welch over seeds rejects a true null far above 5% while the seeds x images test does not.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from capsprobe.metrics.compare import welch_t_test
from capsprobe.metrics.fitted import (
    FITTED_REGIMES,
    bootstrap_se_df,
    fitted_calibration_table,
    fitted_difference,
    fitted_difference_replicates,
    fitted_mean,
    fitted_mean_replicates,
    image_se_from_interval,
)

A = np.array([0.61, 0.66, 0.58, 0.70])
B = np.array([0.52, 0.55, 0.49])


def test_no_image_se_is_the_t_interval_over_seeds():
    est = fitted_mean(A, np.zeros(4), level=0.9)
    half = stats.t.ppf(0.95, 3) * A.std(ddof=1) / 2
    assert float(est.value) == pytest.approx(A.mean())
    assert float(est.se) == pytest.approx(A.std(ddof=1) / 2) and float(est.df) == pytest.approx(3)
    assert np.allclose(est.interval, (A.mean() - half, A.mean() + half))
    assert float(est.seed_df) == 3 and float(est.image_var) == 0


def test_no_image_se_is_welch_over_seeds():
    est = fitted_difference(A, np.zeros(4), B, np.zeros(3))
    diff, (lo, hi), p = welch_t_test(A, B)
    va, vb = A.var(ddof=1) / 4, B.var(ddof=1) / 3
    welch_df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert float(est.value) == pytest.approx(diff) and float(est.p) == pytest.approx(p)
    assert np.allclose(est.interval, (lo, hi))
    assert float(est.df) == pytest.approx(welch_df) and float(est.seed_df) == pytest.approx(welch_df)
    assert float(est.se_seeds) == pytest.approx(float(est.se))
    assert float(est.tail_df) == pytest.approx(welch_df) and float(est.tail_p) == pytest.approx(p)
    assert np.allclose(est.tail_interval(0.999), welch_t_test(A, B, level=0.999)[1])


def test_no_seed_spread_is_the_image_se():
    """Identical seeds: what is left is the image sampling, the root mean square of the runs' image se (not their
    mean, not divided by the number of seeds: the seeds share the images)."""
    se = np.array([0.02, 0.03, 0.04])
    est = fitted_mean(np.full(3, 0.8), se, image_df=200)
    assert float(est.se) == pytest.approx(np.sqrt(np.mean(se**2)))
    assert float(est.df) == pytest.approx(200) and float(est.seed_var) == pytest.approx(0, abs=1e-20)
    d = fitted_difference(np.full(3, 0.8), se, np.full(2, 0.7), np.array([0.01, 0.01]))
    assert float(d.se) == pytest.approx(np.sqrt(np.mean(se**2) + 0.01**2)) and float(d.se_seeds) < 1e-9


def test_seed_and_image_terms_add():
    se = np.array([0.05, 0.05, 0.05, 0.05])
    est = fitted_mean(A, se)
    assert float(est.se) ** 2 == pytest.approx(A.var(ddof=1) / 4 + 0.05**2)
    # half of the image variance shared by the seeds: only that half is added
    half = fitted_mean(A, se, shared=0.5)
    assert float(half.se) ** 2 == pytest.approx(A.var(ddof=1) / 4 + 0.5 * 0.05**2)


def test_interval_widens_with_the_image_se_and_never_undercuts_the_seeds():
    """The se grows with the image se; the interval never narrows (Satterthwaite's df alone would let a small image
    term narrow it: 4 seeds, image se 0.01) and is the seeds-only t interval at the start."""
    ests = [fitted_mean(A, np.full(4, s), image_df=1000) for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    widths = [float(e.interval[1] - e.interval[0]) for e in ests]
    assert np.all(np.diff([float(e.se) for e in ests]) > 0)
    assert np.all(np.diff(widths) >= 0) and widths[-1] > 3 * widths[0]
    seeds_only = 2 * stats.t.ppf(0.975, 3) * A.std(ddof=1) / 2
    assert widths[0] == pytest.approx(seeds_only) and widths[1] == pytest.approx(seeds_only)  # the floor binds
    plain = 2 * stats.t.ppf(0.975, float(ests[1].df)) * float(ests[1].se)
    assert plain < seeds_only  # ... where Satterthwaite alone would have narrowed it
    assert float(ests[1].df) > 3 and float(ests[-1].df) > float(ests[1].df)  # more of the variance on many df
    # the p-value goes with the interval: the larger of the two
    d = fitted_difference(A, np.full(4, 0.01), B, np.full(3, 0.01), image_df=1000)
    assert float(d.p) >= welch_t_test(A, B)[2] - 1e-12


def test_the_far_tail_reference_sits_between_the_seed_df_and_satterthwaite():
    """The far-tail df: Satterthwaite's with the seed term at its upper 95% limit. Near the seed df where the seeds
    could dominate, large where the image se dwarfs them, never above the 95% interval's df."""
    small = fitted_difference(A, np.full(4, 0.01), B, np.full(3, 0.01))
    large = fitted_difference(A, np.full(4, 0.5), B, np.full(3, 0.5))
    for est in (small, large):
        assert float(est.seed_df) <= float(est.tail_df) <= float(est.df)
    assert float(small.tail_df) < float(small.seed_df) + 1 < float(small.df)
    assert float(large.tail_df) > 100
    # the far-tail p is the larger, and the adjusted interval the wider, of the two references
    assert float(large.tail_p) >= float(large.p)
    lo, hi = large.tail_interval(0.999)
    assert hi - lo >= float(np.diff(large.interval_at(0.999))[0]) and hi - lo > 2 * stats.norm.ppf(0.9995) * float(large.se)


def test_difference_is_a_minus_b_and_flips():
    ab = fitted_difference(A, np.full(4, 0.02), B, np.full(3, 0.03))
    ba = fitted_difference(B, np.full(3, 0.03), A, np.full(4, 0.02))
    assert float(ab.value) == pytest.approx(A.mean() - B.mean()) and float(ab.value) > 0
    assert float(ba.value) == pytest.approx(-float(ab.value)) and float(ba.se) == pytest.approx(float(ab.se))
    assert float(ab.interval[0]) > 0 and float(ba.interval[1]) < 0
    assert float(ab.p) == pytest.approx(float(ba.p))
    # image terms independent between the models (the conservative default), or positively correlated
    assert float(ab.image_var) == pytest.approx(0.02**2 + 0.03**2)
    corr = fitted_difference(A, np.full(4, 0.02), B, np.full(3, 0.03), correlation=0.5)
    assert float(corr.image_var) == pytest.approx(0.02**2 + 0.03**2 - 0.02 * 0.03)


def test_image_se_from_a_percentile_interval():
    assert image_se_from_interval(0.4, 0.6) == pytest.approx(0.2 / (2 * stats.norm.ppf(0.975)))
    assert image_se_from_interval(0.4, 0.6, level=0.9) == pytest.approx(0.2 / (2 * stats.norm.ppf(0.95)))
    assert np.allclose(image_se_from_interval(np.array([0.0, 1.0]), np.array([0.1, 1.0])), [0.1 / 3.919928, 0])
    # the probe's interpolated 2.5% / 97.5% quantiles of 200 resamples sit inwards, at about -/+1.884
    assert image_se_from_interval(0.0, 2 * 1.8842, n_boot=200) == pytest.approx(1.0, abs=1e-3)
    assert image_se_from_interval(0.0, 1.0, n_boot=10**7) == pytest.approx(image_se_from_interval(0.0, 1.0), rel=1e-5)
    with pytest.raises(ValueError, match="ci_high"):
        image_se_from_interval(0.6, 0.4)


def test_bootstrap_se_df_is_limited_by_images_and_by_resamples():
    assert bootstrap_se_df(500, 10**9) == pytest.approx(499, rel=0.01)
    few = bootstrap_se_df(10**9, 200)
    assert 60 < few < 200 and bootstrap_se_df(10**9, 1000) > 4 * few
    assert bootstrap_se_df(500, 1000) < min(499, bootstrap_se_df(10**9, 1000))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="image_se"):
        fitted_mean(A, np.zeros(3))
    with pytest.raises(ValueError, match="negative"):
        fitted_mean(A, -np.ones(4))
    with pytest.raises(ValueError, match="2 seeds"):
        fitted_difference(A[:1], np.zeros(1), B, np.zeros(3))


def test_one_seed_covers_the_images_only():
    est = fitted_mean(A[:1], np.array([0.04]), image_df=300)
    assert float(est.se) == pytest.approx(0.04) and float(est.df) == 300 and np.isnan(est.seed_var)


def test_replicates_measure_the_shared_image_variance():
    """Replicates on common resamples: a shift every run takes on resample k is the shared image term (its variance
    counts in full, not divided by the seeds); noise of each run's own is seed x image and already in the seeds'
    spread (it is left out); the run's own image se would count both."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 0.05, 400)
    own = rng.normal(0, 0.05, (4, 400))
    shared = fitted_mean_replicates(A, A[:, None] + z)
    assert float(shared.image_var) == pytest.approx(np.var(z, ddof=1))
    assert float(shared.se) ** 2 == pytest.approx(A.var(ddof=1) / 4 + np.var(z, ddof=1))
    alone = fitted_mean_replicates(A, A[:, None] + own)
    assert float(alone.image_var) < 0.1 * 0.05**2
    both = fitted_mean_replicates(A, A[:, None] + z + own)
    assert float(both.image_var) == pytest.approx(0.05**2, rel=0.2)
    assert float(fitted_mean(A, (A[:, None] + z + own).std(-1, ddof=1)).image_var) == pytest.approx(2 * 0.05**2,
                                                                                                      rel=0.2)


def test_replicates_cancel_the_image_errors_two_models_share():
    """Two models moved alike by every resample: their difference has no image term (the per-run se, taken as
    independent, would add both); moved oppositely, it doubles. The difference is a - b either way."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 0.05, 400)
    same = fitted_difference_replicates(A, A[:, None] + z, B, B[:, None] + z)
    assert float(same.value) == pytest.approx(A.mean() - B.mean()) and float(same.image_var) < 1e-12
    welch = welch_t_test(A, B)
    assert np.allclose(same.interval, welch[1]) and float(same.p) == pytest.approx(welch[2])
    opposite = fitted_difference_replicates(A, A[:, None] + z, B, B[:, None] - z)
    assert float(opposite.image_var) == pytest.approx(4 * np.var(z, ddof=1))
    flipped = fitted_difference_replicates(B, B[:, None] - z, A, A[:, None] + z)
    assert float(flipped.value) == pytest.approx(-float(opposite.value)) and float(flipped.se) == pytest.approx(
        float(opposite.se))
    with pytest.raises(ValueError, match="same resamples"):
        fitted_difference_replicates(A, A[:, None] + z, B, B[:, None] + z[:300])
    with pytest.raises(ValueError, match="replicates must be"):
        fitted_mean_replicates(A, A[:3, None] + z)


def test_welch_over_seeds_overrejects_where_images_dominate_and_the_new_test_does_not():
    """3 seeds, image se 3x the seed se: Welch over seeds sees a third of the variance of the difference; the seeds x
    images test, with the image se known or estimated by a 200-resample bootstrap, stays near 5% and covers."""
    table = fitted_calibration_table(seeds=(3,), regimes=("image_dominant",), reps=3000, seed=7,
                                     methods=("welch", "fitted", "fitted_boot200"))
    row = table.set_index("method")
    assert row.loc["welch", "fpr"] > 0.25 and row.loc["welch", "coverage"] < 0.75
    for method in ("fitted", "fitted_boot200"):
        assert 0.025 < row.loc[method, "fpr"] < 0.075 and row.loc[method, "coverage"] > 0.93


def test_correlated_models_cost_the_summaries_power_and_not_the_replicates():
    """Where the two models' image errors are correlated (0.5) the per-run se, taken as independent, over-states the
    difference's se (by design, about 1.4x here); the replicates measure the covariance and stay near 5%."""
    table = fitted_calibration_table(seeds=(3,), regimes=("image_dominant_correlated",), reps=1000, seed=8,
                                     methods=("fitted", "fitted_replicates200"))
    row = table.set_index("method")
    assert row.loc["fitted", "se_ratio"] > 1.3 and row.loc["fitted", "fpr"] < 0.02
    assert 0.9 < row.loc["fitted_replicates200", "se_ratio"] < 1.1
    assert 0.025 < row.loc["fitted_replicates200", "fpr"] < 0.08
    assert set(FITTED_REGIMES) >= {"image_dominant", "comparable", "seed_dominant"}
