"""Metrics on synthetic encoders with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from capsprobe import metrics as M
from capsprobe.data import load_dataset
from capsprobe.transforms import get_transform


@pytest.fixture(scope="module")
def digits():
    split = load_dataset("mnist-sample", limit=600).test
    return split.float_images(), split.labels.numpy()


def _histogram_encoder(x: torch.Tensor) -> np.ndarray:
    """Pixel-intensity histogram: blind to where pixels are, so invariant to any permutation of them."""
    bins = torch.linspace(0, 1, 17)
    flat = x.flatten(1)
    return np.stack([np.histogram(v.numpy(), bins=bins.numpy())[0] for v in flat]).astype(float)


def _pooled_pixels(x: torch.Tensor) -> np.ndarray:
    """4x4 average-pooled pixels (49-D): a mirror of the image mirrors this, a permutation of coordinates."""
    return F.avg_pool2d(x, 4).flatten(1).numpy().astype(float)


def test_invariant_encoder(digits):
    x, _ = digits
    flipped = get_transform("flip")(x, "horizontal").images
    phi, phi_t = _histogram_encoder(x), _histogram_encoder(flipped)
    w = np.random.default_rng(0).normal(size=(phi.shape[1], 10))
    pred, pred_t = (phi @ w).argmax(1), (phi_t @ w).argmax(1)
    assert M.consistency(pred_t, pred) == 1.0
    assert M.invariance_error(phi, phi_t) == 0.0
    assert M.equivariance_error(phi, phi_t) < 1e-3


def test_linearly_equivariant_encoder(digits):
    x, _ = digits
    flipped = get_transform("flip")(x, "horizontal").images
    phi, phi_t = _pooled_pixels(x), _pooled_pixels(flipped)
    assert M.equivariance_error(phi, phi_t) < 1e-3
    assert M.invariance_error(phi, phi_t) > 0.5


def test_unrelated_encoder_is_not_equivariant(digits):
    x, _ = digits
    phi = _pooled_pixels(x)
    noise = np.random.default_rng(1).normal(size=phi.shape)
    assert M.equivariance_error(phi, noise) > 0.9
    assert M.invariance_error(phi, noise) > 1.0


def test_pca_projection_keeps_a_linear_relation(digits):
    x, _ = digits
    phi, phi_t = _pooled_pixels(x), _pooled_pixels(get_transform("flip")(x, "vertical").images)
    a, b = M.pca_project(phi, phi_t, 16)
    assert a.shape == b.shape == (len(phi), 16)
    same = M.pca_project(a, b, 16)  # already 16-D: unchanged
    assert np.array_equal(same[0], a) and np.array_equal(same[1], b)
    # the axes are the clean features' principal axes: the clean projection is centred and decorrelated
    cov = np.cov(a.T)
    assert abs(a.mean(0)).max() < 1e-9 and abs(cov - np.diag(np.diag(cov))).max() < 1e-9


def test_accuracy_consistency_confidence_and_true_score():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 0])
    pred = scores.argmax(1)
    assert M.accuracy(pred, labels) == pytest.approx(2 / 3)
    assert M.consistency(pred, np.array([0, 2, 1])) == pytest.approx(2 / 3)
    assert M.confidence_drop(np.array([0.9, 0.8]), np.array([0.5, 0.8])) == pytest.approx(0.2)
    assert M.true_class_score(scores, labels) == pytest.approx((0.7 + 0.3 + 0.5) / 3)


@pytest.mark.parametrize(
    "clean, scrambled, expected",
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0),  # always less sure of the scramble
        ([0.5, 0.5], [0.5, 0.5], 0.5),  # blind
        ([0.1, 0.2], [0.9, 0.8], 0.0),
        ([0.9, 0.3], [0.5, 0.1], 0.75),  # 3 of the 4 (clean, scrambled) pairs are ordered
        ([0.9, 0.3], [0.3, 0.1], 0.875),  # a tie counts one half
    ],
)
def test_scramble_auroc_hand_computed(clean, scrambled, expected):
    assert M.scramble_auroc(clean, scrambled) == pytest.approx(expected)


def test_bootstrap_intervals_contain_the_point_estimate(digits):
    x, labels = digits
    rng = np.random.default_rng(0)
    correct = rng.random(len(labels)) < 0.8
    lo, hi = M.bootstrap_mean_ci(correct)
    assert lo <= correct.mean() <= hi and hi - lo < 0.15

    phi, phi_t = _pooled_pixels(x), _pooled_pixels(get_transform("rotate")(x, 30).images)
    num, den = M.invariance_terms(phi, phi_t)
    lo, hi = M.bootstrap_ratio_ci(num, den)
    assert lo <= M.invariance_error(phi, phi_t) <= hi

    residual, total = M.equivariance_terms(phi, phi_t)
    lo, hi = M.bootstrap_ratio_ci(residual, total)
    assert lo <= M.equivariance_error(phi, phi_t) <= hi

    conf, conf_t = rng.random(300), rng.random(300) * 0.9
    lo, hi = M.bootstrap_auroc_ci(conf, conf_t)
    assert lo <= M.scramble_auroc(conf, conf_t) <= hi
    lo, hi = M.bootstrap_ci(M.scramble_auroc, conf, conf_t, n_boot=200)
    assert lo <= M.scramble_auroc(conf, conf_t) <= hi


def test_vectorised_auroc_matches_sklearn():
    rng = np.random.default_rng(2)
    pos, neg = rng.random((5, 50)).round(1), rng.random((5, 40)).round(1)  # with ties
    expected = [roc_auc_score(np.r_[np.ones(50), np.zeros(40)], np.r_[p, q]) for p, q in zip(pos, neg)]
    np.testing.assert_allclose(M.auroc_rows(pos, neg), expected)


def test_reconstruction_terms():
    recon_t = np.zeros((2, 1, 2, 2))
    target = np.ones((2, 1, 2, 2))
    num, den = M.reconstruction_terms(recon_t, target)
    assert num.tolist() == [4.0, 4.0] and den.tolist() == [4.0, 4.0]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="one N and one D"):
        M.invariance_error(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 4"):
        M.equivariance_error(np.zeros((3, 2)), np.zeros((3, 2)))


def _condition(semantic: bool = False) -> M.Condition:
    """Clean images predicted right and sure; transformed ones less sure, some decisions changed, features x3."""
    rng = np.random.default_rng(0)
    n, k = 40, 5
    labels = np.arange(n) % k
    clean = np.full((n, k), 0.05)
    clean[np.arange(n), labels] = 0.8
    moved = np.full((n, k), 0.1)
    moved_pred = np.where(np.arange(n) < 10, (labels + 1) % k, labels)  # the first 10 change their decision
    moved[np.arange(n), moved_pred] = 0.6
    rep = rng.normal(size=(n, 6))
    pose = rng.normal(size=(n, 2))  # 2-D: 4 fitting images per class determine a per-class map
    return M.Condition(labels=labels, clean_scores=clean, scores=moved, clean_rep=rep, rep=3 * rep,
                       clean_pose=pose, pose=-2 * pose, recon_terms=(np.full(n, 1.0), np.full(n, 4.0)),
                       fidelity_terms=(np.full(n, 1.0), np.full(n, 2.0)),
                       semantic=semantic, clean_distance=np.arange(n, dtype=float),
                       distance=np.arange(n, dtype=float) + n, worst_case=True)  # every moved image farther


def test_registered_metrics_use_the_right_side_of_each_pair():
    c = _condition(semantic=True)
    got = M.condition_metrics(c, seed=0, n_boot=50)
    assert list(got) == [m.name for m in M.METRICS.values() if m.fn is not None]  # all it can feed, in table order
    assert got["accuracy"].value == pytest.approx(30 / 40)  # of the transformed predictions against the labels
    assert got["consistency"].value == pytest.approx(30 / 40)  # transformed against clean decisions
    assert got["confidence_drop"].value == pytest.approx(0.8 - 0.6)  # clean minus transformed: positive
    assert got["detection_auroc"].value == 1.0  # the transformed images, reconstructed worse, are the positives
    assert got["true_class_score"].value == pytest.approx((30 * 0.6 + 10 * 0.1) / 40)  # scores of Tx, not x
    # invariance in the whitened clean basis: phi(Tx) = 3 phi(x) moves by 2 phi(x), about 4 clean spreads
    assert 3 < got["invariance_error"].value < 5.5
    assert 6 < got["invariance_error_pose"].value < 16  # -2 pose: moved by 3 pose, about 9 (4 fitting images per class)
    assert got["equivariance_error"].value < 1e-3 and got["equivariance_error_pose"].value < 1e-3  # linear maps
    assert got["equivariance_gain"].value > 0.999 and got["equivariance_gain_pose"].value > 0.999
    assert got["recon_equivariance_error"].value == pytest.approx(0.25)  # sum(num) / sum(den)
    assert got["recon_fidelity_error"].value == pytest.approx(0.5)
    assert got["scramble_auroc"].value == 1.0  # every clean confidence above every transformed one
    for name, est in got.items():
        assert est.ci[0] - 1e-9 <= est.value <= est.ci[1] + 1e-9
        fitted = name.startswith(("equivariance", "invariance")) or name == "label_r2"
        assert est.n == (20 if fitted else 40), name  # fitted metrics: the held-out half


def test_metrics_are_computed_only_when_the_condition_feeds_them():
    c = _condition()
    plain = M.Condition(labels=c.labels, clean_scores=c.clean_scores, scores=c.scores, clean_rep=c.clean_rep,
                        rep=c.rep)
    assert set(M.condition_metrics(plain, n_boot=10)) == {
        "accuracy", "consistency", "confidence_drop", "true_class_score", "ece", "ece_scaled", "invariance_error",
        "equivariance_error", "equivariance_error_pca16", "equivariance_gain", "label_r2"}
    assert "scramble_auroc" not in M.condition_metrics(c, n_boot=10)
    assert {m.better for m in M.METRICS.values()} == {"lower", "higher", "neither"}
    assert M.METRICS["scramble_auroc"].better == "higher" and M.METRICS["invariance_error"].better == "lower"


@pytest.mark.parametrize("k", [1, 3])
def test_resampled_auroc_is_the_rank_form_on_every_resample_ties_included(k):
    """The counting form (negatives sorted once, cumulative counts per resample) equals the Mann-Whitney rank sum of
    every resample exactly, with ties (scores rounded to one decimal) and k negatives per image; the intervals the
    tables report go through it."""
    from capsprobe.metrics.functional import auroc_rows, resample_index, resampled_auroc, scramble_auroc

    rng = np.random.default_rng(k)
    n = 120
    pos = np.round(rng.random(n), 1)
    neg = np.round(rng.random((n, k)) * 0.9, 1).squeeze()
    idx = resample_index(n, 300, seed=2)
    fast = resampled_auroc(pos, neg, idx, block=7)  # blocks that do not divide the rows
    ref = auroc_rows(pos[idx], neg[idx].reshape(len(idx), -1))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    whole = np.arange(n)[None, :]  # the identity resample is the plain AUROC
    assert resampled_auroc(pos, neg, whole)[0] == pytest.approx(scramble_auroc(pos, neg.ravel() if k == 1 else
                                                                               np.ravel(neg)), abs=1e-12)
    assert resampled_auroc(neg.reshape(n, -1)[:, 0], pos, whole)[0] == pytest.approx(
        1 - scramble_auroc(pos, neg.reshape(n, -1)[:, 0]), abs=1e-12)  # swapped roles: 1 - AUROC
