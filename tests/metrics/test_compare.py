"""Comparisons across seeds: seeds x images intervals, paired differences, Holm, runs left out for missing their target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capsprobe.metrics.compare import FITTED_TEST, PAIRED_TEST, _family_members, comparison_tables, holm
from capsprobe.probe import IMAGE_COLUMNS, METRIC_COLUMNS

IDENTITY = {"rotate": "0"}
N = 400


def _tables(cuts: dict[str, list[float]], fitted: dict[str, list[float]], n: int = N):
    """Runs of each model; image i is right when its difficulty is below the run's cut (nested across runs, as
    when models fail on the same hard digits). ``fitted``: a per-seed value of a non-per-image metric."""
    difficulty = np.random.default_rng(0).uniform(size=n)
    labels = np.zeros(n, int)
    images, metrics, entries = [], [], []
    for model, seeds in cuts.items():
        for s, cut in enumerate(seeds):
            run = f"{model}-seed{s}"
            entries.append({"name": run, "model": model, "seed": s, "test_accuracy": 0.99, "epochs": 3 + s,
                            "target_accuracy": None, "reached_target": None})
            for magnitude, shift in (("0", 0.0), ("45", 0.3)):
                right = difficulty < cut - shift if magnitude == "45" else difficulty < 1.1
                pred = np.where(right, 0, 1)
                images.append(pd.DataFrame({"model": model, "run": run, "seed": s, "transform": "rotate",
                                            "kind": "nuisance", "magnitude": magnitude, "image_id": np.arange(n),
                                            "label": labels, "prediction": pred, "true_score": right * 0.9,
                                            "confidence": 0.9, "pixel_change": 1.0}))
                base = dict(model=model, run=run, seed=s, transform="rotate", kind="nuisance", magnitude=magnitude,
                            magnitude_value=float(magnitude), n_images=n, penalty=np.nan, at_edge=False)
                acc = float(right.mean())
                metrics.append({**base, "metric": "accuracy", "value": acc, "ci_low": acc - 0.02, "ci_high": acc + 0.02})
                v = fitted[model][s]
                metrics.append({**base, "metric": "equivariance_gain", "value": v, "ci_low": v - 0.01,
                                "ci_high": v + 0.01})
    return (pd.DataFrame(metrics, columns=METRIC_COLUMNS), pd.concat(images, ignore_index=True)[IMAGE_COLUMNS],
            entries)


def _row(frame: pd.DataFrame, **where) -> pd.Series:
    sel = frame
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, where
    return sel.iloc[0]


def test_holm_adjusts_step_down():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])


def test_intervals_include_training_variation():
    """Three seeds of one model that disagree (0.4, 0.6, 0.8 at 45 degrees): the seeds x images interval spans the
    seeds, far wider than any one seed's interval over images."""
    m, im, entries = _tables({"a": [0.7, 0.9, 1.1], "b": [0.9, 0.9, 0.9]}, {"a": [0.5, 0.6, 0.7], "b": [0.2, 0.2, 0.3]})
    tables = comparison_tables(m, im, entries, IDENTITY)
    comp = tables["comparison"]
    a = _row(comp, model="a", magnitude="45", metric="accuracy")
    assert a["interval"].startswith("seeds+images") and a["seeds"] == 3
    assert a["ci_high"] - a["ci_low"] > 0.25  # one seed's interval over 400 images is about 0.09 wide
    b = _row(comp, model="b", magnitude="45", metric="accuracy")
    assert b["ci_high"] - b["ci_low"] < 0.12  # identical seeds: only the images vary
    assert a["stop_epochs"] == "3/4/5" and a["clean_accuracies"] == "0.9900/0.9900/0.9900"
    gain = _row(comp, model="a", magnitude="45", metric="equivariance_gain")
    assert gain["interval"].startswith("seeds+images") and gain["value"] == pytest.approx(0.6)
    # never narrower than the t interval over seeds (t(2) quantile 4.303)
    assert gain["ci_low"] <= 0.6 - 4.30265 * 0.1 / np.sqrt(3) + 1e-6


def test_fitted_metrics_count_the_image_sampling_every_seed_shares():
    """Three seeds with the same gain: the spread over seeds is 0, but every seed was scored on the same 400 images
    (each run's interval over images is +-0.01): the interval is that image se, not a point."""
    m, im, entries = _tables({"a": [0.8, 0.8, 0.8], "b": [0.8, 0.8, 0.8]}, {"a": [0.5, 0.5, 0.5], "b": [0.5, 0.6, 0.7]})
    comp = comparison_tables(m, im, entries, IDENTITY, n_boot=1000)["comparison"]
    gain = _row(comp, model="a", magnitude="45", metric="equivariance_gain")
    image_se = 0.02 / (2 * 1.945)  # a 1,000-resample percentile interval's half-width over its quantile
    assert gain["ci_high"] - gain["ci_low"] == pytest.approx(2 * 1.96 * image_se, rel=0.02)
    d = comparison_tables(m, im, entries, IDENTITY, n_boot=1000)["differences"]
    row = _row(d, magnitude="45", metric="equivariance_gain")
    assert row["test"] == FITTED_TEST and row["se"] > row["se_seeds"]  # b's seeds, and both models' images
    assert row["se"] ** 2 == pytest.approx(row["se_seeds"] ** 2 + 2 * image_se**2, rel=0.02)


def test_differences_are_paired_over_images_and_corrected():
    """Model a is right on every digit b gets right, and on 5% more: paired over images the difference is tight and
    established; the same numbers treated as unpaired would not be."""
    m, im, entries = _tables({"a": [0.85, 0.85, 0.85], "b": [0.8, 0.8, 0.8]}, {"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7]})
    d = comparison_tables(m, im, entries, IDENTITY)["differences"]
    acc = _row(d, magnitude="45", metric="accuracy")
    assert acc["test"] == PAIRED_TEST and acc["difference"] == pytest.approx(0.05, abs=0.02)
    assert acc["ci_low_adjusted"] > 0 and acc["established"] and acc["family_size"] == 2
    assert acc["ci_high"] - acc["ci_low"] < 0.05  # unpaired, two accuracies near 0.5 on 400 images: about 0.14
    same = _row(d, magnitude="45", metric="equivariance_gain")
    assert same["test"] == FITTED_TEST and same["p_value"] == pytest.approx(1.0) and not same["established"]
    clean = _row(d, magnitude="0", metric="accuracy")
    assert clean["difference"] == 0 and not clean["established"]


def test_families_hold_no_duplicates_and_no_differences_null_by_definition():
    """The clean digits are every transformation's identity: the clean accuracy joins once; a change from the clean
    condition (consistency, a fitted metric of (phi(x), phi(Tx))) is 0 there by definition and joins none."""
    rows = [{"model_a": "a", "model_b": "b", "transform": t, "magnitude": mag, "metric": metric}
            for t, ident in (("rotate", "0"), ("flip", "none")) for mag in (ident, "x")
            for metric in ("accuracy", "consistency", "equivariance_gain")]
    members = _family_members(rows, {"rotate": "0", "flip": "none"})
    joined = {(r["transform"], r["magnitude"], r["metric"]) for r, m in zip(rows, members) if m}
    assert joined == {("rotate", "0", "accuracy"), *((t, "x", m) for t in ("rotate", "flip")
                                                    for m in ("accuracy", "consistency", "equivariance_gain"))}
    m, im, entries = _tables({"a": [0.85, 0.85, 0.85], "b": [0.8, 0.8, 0.8]}, {"a": [0.5, 0.6, 0.7], "b": [0.1, 0.2, 0.3]})
    d = comparison_tables(m, im, entries, IDENTITY)["differences"]
    ident = _row(d, magnitude="0", metric="equivariance_gain")
    assert np.isnan(ident["p_holm"]) and not ident["established"] and np.isfinite(ident["p_value"])
    moved = _row(d, magnitude="45", metric="equivariance_gain")
    assert moved["family_size"] == 1 and 0 < moved["p_holm"] < 1


def test_established_is_exactly_the_printed_holm_p():
    """Holm rejects the smallest p at 0.05/m like Bonferroni, the next at 0.05/(m-1): a row with Holm p < 0.05
    whose Bonferroni-level interval touches 0 is established (as its printed p says)."""
    from capsprobe.metrics.compare import _adjust
    base = {"model_a": "a", "model_b": "b", "transform": "rotate", "kind": "nuisance", "magnitude_value": 0.0,
            "metric": "accuracy", "ci_low": 0.0, "ci_high": 0.0, "se_seeds": 0.01, "df": 100.0, "df_adjusted": 100.0,
            "test": PAIRED_TEST, "seeds_a": 3, "seeds_b": 3}
    from scipy import stats
    z1, z2 = stats.t.isf(0.001 / 2, 100), stats.t.isf(0.04 / 2, 100)  # raw p 0.001 and 0.04 in a family of 2
    frame = _adjust(pd.DataFrame([{**base, "magnitude": "1", "difference": z1 * 0.01, "se": 0.01, "p_value": 0.001},
                                  {**base, "magnitude": "2", "difference": z2 * 0.01, "se": 0.01, "p_value": 0.04}]))
    second = frame.iloc[1]
    assert second["p_holm"] == pytest.approx(0.04) and second["ci_low_adjusted"] < 0  # Bonferroni: 0.025 level
    assert bool(second["established"])


def test_share_intervals_stay_inside_zero_one_with_every_seed_shown():
    """Two seeds right on every digit at 45 degrees and one at 60%: the symmetric t interval over seeds would run past
    100%; the logit interval stays inside, longer towards 0.5. The untransformed digits (every run right): [lo, 1]."""
    m, im, entries = _tables({"a": [1.3, 1.3, 0.9], "b": [0.9, 0.9, 0.9]}, {"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7]})
    comp = comparison_tables(m, im, entries, IDENTITY)["comparison"]
    a = _row(comp, model="a", magnitude="45", metric="accuracy")
    assert a["per_seed"].startswith("1/1/0.5")  # the third seed's share of the 400 digits (about 0.6)
    third = float(a["per_seed"].split("/")[2])
    mean, half_t = a["value"], 4.303 * np.std([1, 1, third], ddof=1) / np.sqrt(3)
    assert mean + half_t > 1 and 0 <= a["ci_low"] < mean < a["ci_high"] <= 1
    assert mean - a["ci_low"] > a["ci_high"] - mean  # the arm towards 0.5 is the longer
    clean = _row(comp, model="a", magnitude="0", metric="accuracy")
    assert clean["value"] == 1 and clean["ci_high"] == 1 and 0.99 < clean["ci_low"] < 1


def test_capsule_lengths_and_softmax_probabilities_are_not_compared():
    m, im, entries = _tables({"a": [0.85, 0.85, 0.85], "b": [0.8, 0.8, 0.8]}, {"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7]})
    tcs = m[m["metric"] == "accuracy"].assign(metric="true_class_score")
    m = pd.concat([m, tcs], ignore_index=True)
    d = comparison_tables(m, im, entries, IDENTITY)["differences"]
    assert "true_class_score" in set(d["metric"])  # one kind of model: one scale
    for e in entries:
        e["poses"] = e["model"] == "a"  # a capsule model against a convnet
    d = comparison_tables(m, im, entries, IDENTITY)["differences"]
    assert "true_class_score" not in set(d["metric"]) and "accuracy" in set(d["metric"])


def test_failed_seeds_are_an_outcome_with_an_all_seeds_analysis_beside():
    m, im, entries = _tables({"a": [0.85, 0.85, 0.5], "b": [0.8, 0.8, 0.8]}, {"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7]})
    for e in entries:
        e["target_accuracy"], e["reached_target"] = 0.99, e["name"] != "a-seed2"
    tables = comparison_tables(m, im, entries, IDENTITY)
    seeds = tables["seeds"].set_index("model")
    assert (seeds.loc["a", "reached"], seeds.loc["a", "seeds"], bool(seeds.loc["a", "flag"])) == (2, 3, True)
    assert seeds.loc["a", "failed_runs"] == "a-seed2" and not seeds.loc["b", "flag"]
    matched = _row(tables["differences"], magnitude="45", metric="accuracy")
    every = _row(tables["differences_all_seeds"], magnitude="45", metric="accuracy")
    assert (matched["seeds_a"], every["seeds_a"]) == (2, 3)
    assert every["difference"] < matched["difference"]  # the survivors overstate a
    assert "differences_all_seeds" not in comparison_tables(m, im, [dict(e, reached_target=True) for e in entries],
                                                            IDENTITY)


def test_one_seed_says_so_and_a_run_that_missed_its_target_is_left_out():
    m, im, entries = _tables({"a": [0.85], "b": [0.8, 0.8]}, {"a": [0.5], "b": [0.5, 0.6]})
    entries[1]["target_accuracy"], entries[1]["reached_target"] = 0.99, False  # b-seed0 never reached it
    tables = comparison_tables(m, im, entries, IDENTITY)
    assert list(tables["excluded"]["run"]) == ["b-seed0"]
    comp, d = tables["comparison"], tables["differences"]
    assert _row(comp, model="b", magnitude="45", metric="accuracy")["seeds"] == 1
    gain = _row(d, magnitude="45", metric="equivariance_gain")
    assert gain["test"] == "not testable with 1 seed" and np.isnan(gain["p_value"]) and not gain["established"]
    assert _row(comp, model="a", magnitude="45", metric="equivariance_gain")["interval"] == "images only (1 seed)"
    acc = _row(d, magnitude="45", metric="accuracy")  # paired over images, a clear gap, but one seed of a
    assert acc["ci_low_adjusted"] > 0 and not acc["established"]


def test_ablation_sets_every_variant_against_the_reference_in_one_family_per_metric():
    """Reference ``ref`` listed first (so ``differences`` holds ref - variant): the ablation table flips each row to
    variant - reference, keeps the untransformed accuracy once and no identity row of a fitted metric, and corrects
    over all variants and conditions of a metric together (a family of 4 accuracy rows, not 2 per pair)."""
    m, im, entries = _tables({"ref": [0.8, 0.8, 0.8], "better": [0.9, 0.9, 0.9], "worse": [0.7, 0.7, 0.7]},
                             {"ref": [0.5, 0.6, 0.7], "better": [0.8, 0.9, 1.0], "worse": [0.5, 0.6, 0.7]})
    tables = comparison_tables(m, im, entries, IDENTITY, reference="ref")
    ab, d = tables["ablation"], tables["differences"]
    assert set(ab["variant"]) == {"better", "worse"} and set(ab["reference"]) == {"ref"}
    better = _row(ab, variant="better", magnitude="45", metric="accuracy")
    assert better["difference"] == pytest.approx(0.1, abs=0.02) and better["ci_low_adjusted"] > 0 and better["established"]
    assert better["difference"] == pytest.approx(-_row(d, model_a="ref", model_b="better", magnitude="45",
                                                       metric="accuracy")["difference"])
    worse = _row(ab, variant="worse", magnitude="45", metric="accuracy")
    assert worse["difference"] == pytest.approx(-0.1, abs=0.02) and worse["ci_high_adjusted"] < 0
    assert set(ab.loc[ab["metric"] == "accuracy", "family_size"]) == {4}  # 2 variants x (clean, rotate 45)
    gain = ab[ab["metric"] == "equivariance_gain"]
    assert set(gain["magnitude"]) == {"45"} and set(gain["family_size"]) == {2}  # no identity row to explain
    g = _row(gain, variant="better")
    assert g["test"] == FITTED_TEST and g["difference"] == pytest.approx(0.3)
    # wider than the pair's own Holm family in differences.csv, which corrects over fewer conditions
    pair = _row(d, model_a="ref", model_b="better", magnitude="45", metric="accuracy")
    assert better["ci_high_adjusted"] - better["ci_low_adjusted"] > pair["ci_high_adjusted"] - pair["ci_low_adjusted"]
    assert "ablation" not in comparison_tables(m, im, entries, IDENTITY)  # no reference, no table


def test_the_mean_corruption_error_is_one_condition_with_its_ratio_to_the_cnn():
    """15 MNIST-C corruptions: per image the accuracy averaged over them is one per-image condition (mnist-c mean),
    tested like any share; the corruption table gives each model's mean error and its ratio to the CNN's."""
    n, rng = 300, np.random.default_rng(1)
    hard = rng.uniform(size=(15, n))  # per corruption and image, how hard
    images, metrics, entries = [], [], []
    for model, cut, poses in (("caps", 0.8, True), ("cnn", 0.9, False)):
        for s in range(3):
            run = f"{model}-seed{s}"
            entries.append({"name": run, "model": model, "seed": s, "poses": poses, "target_accuracy": None})
            for c in range(15):
                right = hard[c] < cut + 0.01 * s
                images.append(pd.DataFrame({"model": model, "run": run, "seed": s, "transform": f"mnistc-c{c}",
                                            "kind": "nuisance", "magnitude": "mnist-c", "image_id": np.arange(n),
                                            "label": 0, "prediction": np.where(right, 0, 1), "true_score": 0.9,
                                            "confidence": 0.9, "pixel_change": 1.0}))
                metrics.append(dict(model=model, run=run, seed=s, transform=f"mnistc-c{c}", kind="nuisance",
                                    magnitude="mnist-c", magnitude_value=np.nan, n_images=n, penalty=np.nan,
                                    at_edge=False, metric="accuracy", value=float(right.mean()), ci_low=0.0,
                                    ci_high=1.0))
    m = pd.DataFrame(metrics, columns=METRIC_COLUMNS)
    im = pd.concat(images, ignore_index=True)[IMAGE_COLUMNS]
    tables = comparison_tables(m, im, entries, {})
    comp = _row(tables["comparison"], model="caps", transform="mnist-c", magnitude="mean", metric="accuracy")
    expected = np.mean([(hard < 0.8 + 0.01 * s).mean() for s in range(3)])
    assert comp["value"] == pytest.approx(expected) and comp["seeds"] == 3
    d = _row(tables["differences"], transform="mnist-c", magnitude="mean", metric="accuracy")
    assert d["test"] == PAIRED_TEST and d["difference"] == pytest.approx(-0.1, abs=0.02)
    table = tables["corruption"].set_index("model")
    assert table.loc["caps", "error"] == pytest.approx(1 - expected)
    assert table.loc["cnn", "ratio"] == 1.0 and table.loc["caps", "reference"] == "cnn"
    ratio = table.loc["caps", "error"] / table.loc["cnn", "error"]
    assert table.loc["caps", "ratio"] == pytest.approx(ratio)
    assert table.loc["caps", "ratio_low"] < ratio < table.loc["caps", "ratio_high"] and table.loc["caps", "ratio_low"] > 1
    # 14 of 15 corruptions make no mean
    fewer = comparison_tables(m[m["transform"] != "mnistc-c0"], im[im["transform"] != "mnistc-c0"], entries, {})
    assert "corruption" not in fewer and "mnist-c" not in set(fewer["comparison"]["transform"])
