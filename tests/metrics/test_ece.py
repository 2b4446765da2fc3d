"""Calibration: the expected calibration error, temperature scaling, the registered metrics and the reliability figure.

Each test names the wrong definition it catches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from capsprobe import metrics as M
from capsprobe.metrics import confidence as C


def _sampled_labels(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from ``softmax(logits)`` (the Gumbel-max trick)."""
    return (logits + rng.gumbel(size=logits.shape)).argmax(1)


def test_a_calibrated_model_has_an_ece_near_zero():
    """Right with probability p at confidence p: the ECE (and the low end of its interval) is the estimator's small
    upward bias only; per-image |correct - conf| (not per bin) would give about 0.3."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 1.0, 20000)
    correct = (rng.random(p.shape) < p).astype(float)
    ece = C.expected_calibration_error(p, correct)
    lo, hi = C.bootstrap_ece_ci(p, correct, n_boot=200, seed=0)
    assert ece < 0.015 and lo < 0.015 and lo <= ece <= hi
    assert np.mean(np.abs(correct - p)) > 0.25


def test_an_overconfident_model_has_its_gap_as_ece():
    """Sure at 0.9, right 60% of the time: ECE 0.3; two bins weighted by their share of images (not averaged over
    bins); gaps of opposite sign within one bin cancel (the bin's accuracy against its mean confidence)."""
    conf = np.full(1000, 0.9)
    correct = (np.arange(1000) < 600).astype(float)
    assert C.expected_calibration_error(conf, correct) == pytest.approx(0.3)
    lo, hi = C.bootstrap_ece_ci(conf, correct, n_boot=300, seed=1)
    assert lo < 0.3 < hi and hi - lo < 0.07
    # 300 images at 0.95, 75% right (gap 0.2); 100 at 0.55, 55% right (gap 0): 300/400 * 0.2 (not (0.2 + 0) / 2)
    conf = np.r_[np.full(300, 0.95), np.full(100, 0.55)]
    correct = np.r_[np.arange(300) < 225, np.arange(100) < 55].astype(float)
    assert C.expected_calibration_error(conf, correct) == pytest.approx(0.15)
    # one bin (0.8, 0.8667]: 0.81 right and 0.86 wrong: accuracy 0.5 against confidence 0.835
    assert C.expected_calibration_error([0.81, 0.86], [1, 0]) == pytest.approx(0.335)


def test_bins_are_right_closed_with_zero_and_one_inside():
    """``B_m = ((m-1)/M, m/M]``: a confidence of exactly 1.0 (a saturated softmax) falls in the last bin, not past it;
    0 in the first; an edge m/M in the bin it closes."""
    got = C.confidence_bins([0.0, 1 / 15, 0.5, 14 / 15, 1.0, 1.0 + 1e-7])
    assert got.tolist() == [0, 0, 7, 13, 14, 14]
    assert C.expected_calibration_error(np.ones(10), np.ones(10)) == 0.0  # sure and always right
    assert C.expected_calibration_error(np.ones(10), np.zeros(10)) == 1.0  # sure and always wrong
    assert C.confidence_bins([0.5], bins=2).tolist() == [0] and C.confidence_bins([0.51], bins=2).tolist() == [1]
    table = C.reliability_bins([1.0, 1.0, 0.02], [1, 0, 0])
    assert table["bin"].tolist() == [0, 14] and table["count"].tolist() == [1, 2]
    assert table["accuracy"].tolist() == [0.0, 0.5] and table["upper"].iloc[-1] == 1.0


def test_the_bootstrap_interval_is_the_loop_over_resamples():
    """The vectorised interval equals the ECE of every resample computed one at a time (same resamples)."""
    rng = np.random.default_rng(3)
    conf, correct = rng.uniform(0.3, 1, 50), (rng.random(50) < 0.7).astype(float)
    idx = M.resample_index(50, 40, seed=5)
    loop = [C.expected_calibration_error(conf[i], correct[i]) for i in idx]
    assert C.bootstrap_ece_ci(conf, correct, n_boot=40, seed=5, block=7) == pytest.approx(M.percentile_interval(loop))


def test_temperature_scaling_recovers_a_known_temperature():
    """Labels drawn from softmax(z); the model reports 2.5 z (overconfident): the fitted T is 2.5, and scaling by it
    gives back softmax(z). A fit of 1/T, or of the NLL of the top class, would miss."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, (4000, 10))
    labels = _sampled_labels(z, rng)
    t = C.fit_temperature(2.5 * z, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    assert np.abs(C.tempered(2.5 * z, t) - softmax(z, axis=1)).max() < 0.05
    assert C.fit_temperature(0.5 * z, labels) == pytest.approx(0.5, rel=0.05)  # underconfident: T < 1
    # separable and always right: the NLL falls as T -> 0; the fit sharpens until the NLL is nil, within the bounds
    t = C.fit_temperature(np.eye(4) * 5, [0, 1, 2, 3])
    assert C.TEMPERATURE_BOUNDS[0] <= t < 0.25 and C.tempered(np.eye(4) * 5, t).max(1).min() > 1 - 1e-6


def test_scaled_ece_does_not_depend_on_the_scale_of_the_logits():
    """Logits times c: the raw ECE changes, the temperature-scaled ECE does not (the fitted T scales by c); through
    the probe's path too (scores = softmax(c z), their logs as logits)."""
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1.5, (2000, 10))
    labels = _sampled_labels(z, rng)
    eces, raws = [], []
    for c in (0.5, 1.0, 3.0):
        p = C.tempered(c * z, C.fit_temperature(c * z, labels))
        eces.append(C.expected_calibration_error(p.max(1), p.argmax(1) == labels))
        probe, _ = C.cross_fitted_probabilities(softmax(c * z, axis=1), softmax(c * z, axis=1), labels, seed=0)
        eces.append(C.expected_calibration_error(probe.max(1), probe.argmax(1) == labels))
        raw = softmax(c * z, axis=1)
        raws.append(C.expected_calibration_error(raw.max(1), raw.argmax(1) == labels))
    assert np.ptp(eces[0::2]) < 1e-5 and np.ptp(eces[1::2]) < 1e-5
    assert min(raws[0], raws[2]) > 4 * raws[1]  # unscaled, both the shrunk and the stretched logits miscalibrate


def test_scores_become_probabilities_one_way_for_every_model():
    """A softmax's log-scores at T = 1 give the softmax back (temperature scaling of its logits); capsule lengths
    at T = 1 give the normalised lengths; no temperature changes a decision."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, (20, 10))
    assert np.allclose(C.tempered(C.score_logits(softmax(z, axis=1)), 1.0), softmax(z, axis=1))
    assert np.allclose(C.tempered(C.score_logits(softmax(z, axis=1)), 0.7), softmax(z / 0.7, axis=1))
    lengths = rng.uniform(0.01, 0.99, (20, 10))
    assert np.allclose(C.tempered(C.score_logits(lengths), 1.0), lengths / lengths.sum(1, keepdims=True))
    assert (C.tempered(C.score_logits(lengths), 0.2).argmax(1) == lengths.argmax(1)).all()
    assert np.isfinite(C.score_logits(np.zeros((2, 3)))).all()  # an underflowed softmax entry: floored, not -inf


def _capsule_condition(n: int = 400) -> tuple[M.Condition, np.ndarray]:
    """Capsule-like scores: the predicted class's length 0.9 (not a probability: the others are 0.3), right on 60%
    of each seed-0 half."""
    rng = np.random.default_rng(6)
    labels = np.arange(n) % 10
    right = np.zeros(n, dtype=bool)
    for half in M.split_halves(n, 0):
        right[half[: int(0.6 * len(half))]] = True
    pred = np.where(right, labels, (labels + 1) % 10)
    scores = np.full((n, 10), 0.3)
    scores[np.arange(n), pred] = 0.9
    rep = rng.normal(size=(n, 4))
    return M.Condition(labels=labels, clean_scores=scores, scores=scores, clean_rep=rep, rep=rep), pred


def test_the_registered_ece_reads_raw_and_cross_fitted_scores():
    """``ece``: the raw top score (0.9) against the accuracy; ``ece_scaled``: T fitted on the *other* half's clean
    scores, over all N images; a model whose scores are not in [0, 1] (logits as scores) gets neither."""
    c, pred = _capsule_condition()
    got = M.condition_metrics(c, seed=0, n_boot=50)
    acc = float(np.mean(pred == c.labels))
    assert got["ece"].value == pytest.approx(0.9 - acc) and got["ece"].n == 400
    probs, (t1, t2) = C.cross_fitted_probabilities(c.clean_scores, c.scores, c.labels, seed=0)
    conf = probs.max(1)
    assert got["ece_scaled"].value == pytest.approx(C.expected_calibration_error(conf, pred == c.labels))
    # every image has one score profile: each half's T makes its top probability the other half's accuracy, 0.6
    assert np.allclose(conf, 0.6, atol=1e-4) and got["ece_scaled"].value < 1e-4 and got["ece_scaled"].n == 400
    # normalised lengths alone (T = 1) put the top class at 0.9 / 3.6 = 0.25: underconfident, T < 1 sharpens them
    assert t1 < 1 and t2 < 1
    for est in (got["ece"], got["ece_scaled"]):
        assert est.ci[0] <= est.value <= est.ci[1]
    assert M.METRICS["ece"].better == "lower" and "Guo" in M.METRICS["ece_scaled"].source
    logits = M.Condition(labels=c.labels, clean_scores=np.log(c.scores), scores=np.log(c.scores),
                         clean_rep=c.clean_rep, rep=c.rep)
    assert not {"ece", "ece_scaled"} & set(M.condition_metrics(logits, n_boot=10))


def test_the_temperature_is_fitted_on_clean_scores_and_shared_by_conditions():
    """Corrupted scores are scaled by the clean fit (a temperature fitted under the corruption would hide it):
    under a corruption that makes the model sure and wrong, the scaled ECE stays large."""
    c, pred = _capsule_condition()
    wrong = np.full_like(c.scores, 0.01)
    wrong[np.arange(len(pred)), (c.labels + 3) % 10] = 0.99  # every image confidently wrong
    moved = M.Condition(labels=c.labels, clean_scores=c.clean_scores, scores=wrong, clean_rep=c.clean_rep, rep=c.rep)
    got = M.condition_metrics(moved, seed=0, n_boot=20)
    assert got["ece_scaled"].value > 0.9 and got["ece"].value == pytest.approx(0.99)


def _probe_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)
    images, metrics = [], []
    conditions = {("rotate", "0"): 0.02, ("rotate", "45"): 0.10, ("rotate", "180"): 0.40, ("flip", "none"): 0.02}
    for model in ("caps", "conv"):
        for seed in (0, 1):
            run = f"{model}-seed{seed}"
            for (transform, magnitude), ece in conditions.items():
                labels = rng.integers(0, 10, 60)
                images.append(pd.DataFrame({"model": model, "run": run, "transform": transform,
                                            "magnitude": magnitude, "label": labels,
                                            "prediction": np.where(rng.random(60) < 0.7, labels, 0),
                                            "confidence": rng.uniform(0.1, 1.0, 60)}))
                for metric, v in (("ece", ece + 0.01 * seed), ("ece_scaled", ece / 2)):
                    metrics.append({"model": model, "run": run, "transform": transform, "magnitude": magnitude,
                                    "metric": metric, "value": v, "ci_low": v - 0.01, "ci_high": v + 0.01})
    return pd.concat(images, ignore_index=True), pd.DataFrame(metrics)


def test_the_reliability_table_takes_clean_and_the_worst_condition():
    """Per model: the first identity condition and the non-identity one with the highest mean ECE over its runs,
    the runs' images pooled (120 per condition)."""
    images, metrics = _probe_frames()
    table = C.reliability_table(images, metrics, {"rotate": "0", "flip": "none"})
    assert list(table.columns) == C.RELIABILITY_COLUMNS
    roles = table.drop_duplicates(["model", "role"]).set_index(["model", "role"])
    assert roles.loc[("caps", "clean"), "condition"] == "rotate 0"
    assert roles.loc[("caps", "worst"), "condition"] == "rotate 180"
    assert roles.loc[("conv", "worst"), "ece"] == pytest.approx(0.405)  # mean of the two seeds
    assert roles.loc[("conv", "worst"), "ece_scaled"] == pytest.approx(0.2)
    assert table.groupby(["model", "role"])["count"].sum().eq(120).all()
    assert C.reliability_table(images, metrics[metrics["metric"] != "ece"], {"rotate": "0"}).empty


def test_the_reliability_diagram_draws_a_panel_per_model():
    from matplotlib.figure import Figure

    from capsprobe.report import plots

    images, metrics = _probe_frames()
    fig = plots.plot_reliability(C.reliability_table(images, metrics, {"rotate": "0", "flip": "none"}))
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["caps", "conv"]
    assert "rotate 180" in " ".join(t.get_text() for t in axes[0].get_legend().get_texts())
    with pytest.raises(ValueError, match="plot_reliability needs columns .*missing: condition"):
        plots.plot_reliability(pd.DataFrame({"model": ["a"]}))


def test_each_half_is_scored_by_the_temperature_of_the_other():
    """Cross-fitting: the images of one seeded half get the temperature fitted on the other half's clean scores, never
    their own. The halves are made to want different temperatures (one half's logits 4x sharper), so scoring a half
    by its own fit gives other probabilities."""
    from capsprobe.metrics.functional import split_halves

    rng = np.random.default_rng(3)
    n, k = 400, 5
    labels = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels]
    first, second = split_halves(n, 0)
    z[first] *= 4.0
    scores = softmax(z, axis=1)
    probs, (t_first, t_second) = C.cross_fitted_probabilities(scores, scores, labels, seed=0)
    assert t_first == pytest.approx(C.fit_temperature(np.log(scores[first]), labels[first]))
    assert t_second == pytest.approx(C.fit_temperature(np.log(scores[second]), labels[second]))
    assert t_first > 2 * t_second  # the sharper half wants the higher temperature
    np.testing.assert_allclose(probs[second], C.tempered(np.log(scores[second]), t_first), rtol=1e-6)
    np.testing.assert_allclose(probs[first], C.tempered(np.log(scores[first]), t_second), rtol=1e-6)


def test_a_validation_temperature_replaces_the_cross_fit():
    """Given the temperature fitted on the run's validation split, ``ece_scaled`` scales every image by it alone:
    the value is the ECE of ``softmax(log s / T)``, the clean scores play no part (changing them changes nothing),
    and a wrong temperature gives another value (so the cross-fit is not used in its place)."""
    c, pred = _capsule_condition()
    for t in (0.25, 2.0):
        given = M.Condition(labels=c.labels, clean_scores=c.clean_scores, scores=c.scores, clean_rep=c.clean_rep,
                            rep=c.rep, temperature=t)
        probs = C.tempered(C.score_logits(c.scores), t)
        want = C.expected_calibration_error(probs.max(1), probs.argmax(1) == c.labels)
        got = M.condition_metrics(given, seed=0, n_boot=20)["ece_scaled"]
        assert got.value == pytest.approx(want) and got.n == len(c.labels) and got.ci[0] <= got.value <= got.ci[1]
        other_clean = M.Condition(labels=c.labels, clean_scores=np.full_like(c.scores, 0.1), scores=c.scores,
                                  clean_rep=c.clean_rep, rep=c.rep, temperature=t)
        assert M.condition_metrics(other_clean, seed=0, n_boot=20)["ece_scaled"].value == pytest.approx(want)
    cross = M.condition_metrics(c, seed=0, n_boot=20)["ece_scaled"].value
    assert cross < 1e-4 and want > 0.05  # T = 2 flattens the 0.9 / 0.3 profile: underconfident, unlike the fit
