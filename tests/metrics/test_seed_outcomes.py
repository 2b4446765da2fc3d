"""Failed seeds as an outcome: k of n with Clopper-Pearson, the gap test of bimodality, and the failing-seed
simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from capsprobe.metrics.bounded import clopper_pearson
from capsprobe.metrics.seeds import _alive, bimodality, failing_seed_simulation, reached, seed_outcomes


def _entry(model, seed, target, ok, acc):
    return {"name": f"{model}-seed{seed}", "model": model, "seed": seed, "target_accuracy": target,
            "reached_target": ok, "val_accuracy": acc, "test_accuracy": acc, "epochs": 5}


@pytest.mark.parametrize("k, n", [(0, 3), (1, 3), (2, 3), (3, 3), (7, 10), (0, 1)])
def test_clopper_pearson_is_scipys_exact_interval(k, n):
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_k_of_n_with_and_without_a_target():
    entries = [_entry("attention", 0, 0.97, True, 0.9705), _entry("attention", 1, 0.97, False, 0.0975),
               _entry("attention", 2, 0.97, False, 0.1147),
               _entry("free", 0, None, None, 0.91), _entry("free", 1, None, None, 0.92),
               _entry("shared", 0, 0.95, False, 0.93), _entry("shared", 1, 0.95, False, 0.931)]
    table = seed_outcomes(entries).set_index("model")
    assert list(table.index) == ["attention", "free", "shared"]
    att, free, shared = table.loc["attention"], table.loc["free"], table.loc["shared"]
    assert (att["reached"], att["seeds"], att["flag"]) == (1, 3, True)
    assert att["failed_runs"] == "attention-seed1,attention-seed2" and "rest on the survivor" in att["note"]
    ci = stats.binomtest(1, 3).proportion_ci(0.95, method="exact")
    assert (att["ci_low"], att["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert att["test_accuracies"] == "0.9705/0.0975/0.1147" and att["bimodal"]
    assert (free["reached"], free["seeds"], free["flag"], free["ci_high"]) == (2, 2, False, 1.0)
    assert pd.isna(free["target_accuracy"]) and free["note"] == ""
    assert (shared["reached"], shared["rate"], shared["ci_low"]) == (0, 0.0, 0.0)
    assert "no comparison" in shared["note"] and not shared["bimodal"]


def test_reached_follows_the_exclusion_rule():
    """Only reached_target False with a target is a failure (what comparison_tables leaves out)."""
    assert reached({"target_accuracy": None, "reached_target": False})
    assert reached({"target_accuracy": 0.9, "reached_target": None})
    assert not reached({"target_accuracy": 0.9, "reached_target": False})


def test_bimodality_flags_a_failed_seed_and_not_seed_noise():
    split = bimodality([0.99, 0.99, 0.11])
    assert split["bimodal"] and split["p_value"] < 0.001 and (split["low"], split["high"]) == (1, 2)
    assert split["split"] == pytest.approx(0.55)
    assert not bimodality([0.98, 0.985, 0.99])["bimodal"]
    assert not bimodality([0.99, 0.11])["bimodal"]  # 2 values: no test
    assert not bimodality([0.9, 0.9, 0.9])["bimodal"]


def test_the_gap_test_is_dixons_q_at_three():
    """For 3 normal values the 95% critical value of Q is 0.970 (Dixon; Rorabacher 1991)."""
    assert bimodality([0.0, 0.025, 1.0])["p_value"] < 0.05  # Q = 0.975
    assert bimodality([0.0, 0.04, 1.0])["p_value"] > 0.05  # Q = 0.96
    assert bimodality([0.0, 0.025, 1.0])["statistic"] == pytest.approx(0.975)


def test_the_gap_test_finds_two_clusters_from_four_seeds():
    """From 4 values the largest gap may be inside; its null distribution counts inner gaps too (P(Q >= 0.84) is
    0.058 for 4 normal values, 0.044 if only the end gaps counted, as in Dixon's r10)."""
    assert bimodality([0.10, 0.11, 0.95, 0.96])["bimodal"]  # the largest gap is inside, not at an end
    assert bimodality([0.0, 0.08, 0.92, 1.0])["p_value"] == pytest.approx(0.058, abs=0.003)
    assert not bimodality([0.10, 0.40, 0.65, 0.96])["bimodal"]


def test_a_minimum_gap_keeps_tied_accuracies_from_splitting():
    """Accuracies are counts over the images: two seeds can tie and Q reaches 1 for a fraction of a point."""
    assert bimodality([0.9728, 0.9728, 0.9756])["p_value"] < 0.05
    assert not bimodality([0.9728, 0.9728, 0.9756], min_gap=0.05)["bimodal"]
    assert bimodality([0.9728, 0.9728, 0.1147], min_gap=0.05)["bimodal"]


def test_low_selection_drops_the_low_seeds():
    rng = np.random.default_rng(0)
    effects = rng.normal(0, 0.5, (2000, 3, 1))
    alive = _alive(effects, 0.33, 0.5, "low", rng)
    assert alive.mean() == pytest.approx(0.67, abs=0.02)
    assert effects[..., 0][alive].min() >= effects[..., 0][~alive].max()  # every survivor above every failure
    random = _alive(effects, 0.33, 0.5, "random", rng)
    assert random.mean() == pytest.approx(0.67, abs=0.02)
    assert effects[..., 0][random].mean() == pytest.approx(effects[..., 0][~random].mean(), abs=0.05)


def test_tiny_failing_seed_simulation():
    """Half of A's 3 seeds fail: testable when a seed survives (1 - 0.5^3), one survivor 3 / 8 of the time; the
    all-seeds test keeps about its 5%."""
    table = failing_seed_simulation(seeds=(3,), fail_probs=(0.5,), regimes=("seed_dominant",), reps=600, images=40,
                                    chunk=600)
    assert len(table) == 2 and set(table["selection"]) == {"low", "random"}
    for row in table.itertuples():
        assert row.testable == pytest.approx(0.875, abs=0.04)
        assert row.one_survivor == pytest.approx(0.375, abs=0.06)
        assert row.mean_survivors == pytest.approx(1.5, abs=0.1)
        assert 0.02 <= row.fpr_all <= 0.09 and 0 <= row.fpr_survivors <= 0.2
