"""Each metric definition pinned by a case that fails when an axis, a half, a normaliser or a direction is wrong.

Every test names, in its docstring, the wrong definition it catches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from capsprobe import metrics as M
from capsprobe.data import load_dataset
from capsprobe.probe import transform_like
from capsprobe.transforms import apply_matrix, get_transform


@pytest.fixture(scope="module")
def digits():
    split = load_dataset("mnist-sample", limit=400).test
    return split.float_images(), split.labels.numpy()


def _pooled(x: torch.Tensor) -> np.ndarray:
    return F.avg_pool2d(x, 4).flatten(1).numpy().astype(float)


def _rotations(angle_deg: float, planes: int) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    block = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.kron(np.eye(planes), block)


# --- transformations: a lit pixel goes where the convention says ---------------------------------------------------


def _lit(h: int = 28, w: int = 32, r: int = 3, c: int = 5) -> torch.Tensor:
    x = torch.zeros(1, 1, h, w)
    x[0, 0, r, c] = 1.0
    return x


def _where(x: torch.Tensor) -> tuple[int, int]:
    r, c = divmod(int(x.flatten().argmax()), x.shape[-1])
    return r, c


@pytest.mark.parametrize("direction, expected", [("horizontal", (3, 32 - 1 - 5)), ("vertical", (28 - 1 - 3, 5))])
def test_flip_moves_a_lit_pixel_across_the_right_axis(direction, expected):
    """Catches horizontal and vertical flip swapped: horizontal moves column c to W-1-c in the same row."""
    out = get_transform("flip")(_lit(), direction)
    assert _where(out.images) == expected and out.images.sum() == 1
    assert _where(apply_matrix(_lit(), out.matrix)) == expected  # the matrix says the same


@pytest.mark.parametrize("halves, expected", [("top-bottom", (3 + 14, 5)), ("left-right", (3, 5 + 16))])
def test_swap_moves_a_lit_pixel_by_half_the_right_side(halves, expected):
    """Catches the swap halves exchanged: top-bottom moves a row by H/2 in the same column."""
    assert _where(get_transform("swap")(_lit(), halves).images) == expected


def test_shear_is_horizontal_and_proportional_to_the_row():
    """Catches shear on the other axis: x' = x + k (y - cy), y unchanged."""
    x = _lit(29, 29, r=14 + 4, c=14)  # 4 rows below the centre (14, 14)
    out = get_transform("shear")(x, 0.5).images
    assert _where(out) == (18, 16)


def _decompose(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angle (degrees, counter-clockwise on screen), the lower-left entry left after undoing it, and the shear."""
    lin = matrix[:, :2, :2].double().numpy()
    angle = np.degrees(np.arctan2(-lin[:, 1, 0], lin[:, 0, 0]))  # lin = R(angle) Sh(k) diag(sx, sy)
    t = np.deg2rad(angle)
    rot_t = np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)  # R^T
    rest = rot_t @ lin  # Sh(k) diag(sx, sy) = [[sx, k sy], [0, sy]]
    return angle, rest[:, 1, 0], rest[:, 0, 1] / rest[:, 1, 1]


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_affine_draws_its_rotation_and_shear_in_the_documented_ranges(strength):
    """Catches the affine rotation range x10 and the shear on the other axis."""
    m = get_transform("affine")(torch.zeros(300, 1, 28, 28), strength, torch.arange(300)).matrix
    angle, lower_left, shear = _decompose(m)
    assert np.abs(lower_left).max() < 1e-5  # horizontal shear: nothing left below the diagonal
    assert 0.9 * 20 * strength < np.abs(angle).max() <= 20 * strength + 1e-4
    assert 0.9 * 0.2 * strength < np.abs(shear).max() <= 0.2 * strength + 1e-4


def test_reconstruction_target_reuses_the_inputs_warp():
    """Catches the affnist warp re-drawn on the reconstruction (its shift follows the ink box)."""
    x = torch.zeros(6, 1, 40, 40)
    x[:, :, 5:12, 5:12] = 1.0  # ink in the top-left corner
    recon = torch.zeros_like(x)
    recon[:, :, 25:35, 20:30] = 1.0  # ink elsewhere: a new draw would shift it differently
    seeds = torch.arange(6)
    t = get_transform("affnist")
    done = t(x, "warp", seeds)
    got = transform_like(recon, done, t, "warp", seeds)
    torch.testing.assert_close(got, apply_matrix(recon, done.matrix))
    assert not torch.allclose(got, t(recon, "warp", seeds).images)


# --- invariance: basis-free, normalised by the clean spread -------------------------------------------------------


def test_invariance_denominator_is_the_clean_spread():
    """Catches the denominator taken from phi(Tx): phi(Tx) = 3 phi(x) moves by 2 phi(x), so about 4 (not 4/9)."""
    x = np.random.default_rng(0).normal(size=(800, 5))
    assert 3.5 < M.invariance_error(x, 3 * x) < 4.6


def test_invariance_is_unchanged_by_an_invertible_linear_map():
    """Catches a basis-dependent invariance (Euclidean, or whitened by a covariance that moves with the map)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 6)) * np.array([3, 2, 1, 1, 0.5, 0.3])
    y = x + rng.normal(size=x.shape) * 0.4
    a = rng.normal(size=(6, 6)) + 3 * np.eye(6)
    base = M.invariance_error(x, y, shrinkage=0)
    assert M.invariance_error(x @ a.T, y @ a.T, shrinkage=0) == pytest.approx(base, rel=1e-9)
    assert M.invariance_error(x @ a.T, y @ a.T) == pytest.approx(M.invariance_error(x, y), rel=2e-2)
    euclid = lambda p, q: ((q - p) ** 2).sum(1).mean() / ((p - p.mean(0)) ** 2).sum(1).mean()  # noqa: E731
    assert abs(euclid(x @ a.T, y @ a.T) / euclid(x, y) - 1) > 0.1  # the map does change a Euclidean measure


def test_invariance_is_scored_on_held_out_images_with_the_fitting_halfs_covariance():
    """Catches the whitening refitted on the held-out images (it would make the denominator exactly D)."""
    x = np.random.default_rng(2).normal(size=(40, 12))
    num, den = M.invariance_terms(x, x + 0.1, seed=0)
    assert len(num) == 20 and den.mean() > 12 * 1.05  # held-out spread in the fitting half's units exceeds D


# --- equivariance: scale-free, held out, normalised by phi(Tx) ------------------------------------------------------


@pytest.mark.parametrize("which, factor", [("clean", 1e-3), ("clean", 1e3), ("moved", 1e-3), ("moved", 1e3),
                                           ("both", 1e-3)])
def test_equivariance_is_unchanged_by_rescaling_either_representation(digits, which, factor):
    """Catches absolute ridge penalties on unstandardised features (1e-3 x features moved 0.003 to 0.926)."""
    x, labels = digits
    phi, phi_t = _pooled(x), _pooled(get_transform("rotate")(x, 30).images)
    a, b = (phi * factor if which in ("clean", "both") else phi), (phi_t * factor if which in ("moved", "both") else phi_t)
    for groups in (None, labels):
        base = M.equivariance_error(phi, phi_t, groups=groups)
        assert M.equivariance_error(a, b, groups=groups) == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert 0.01 < M.equivariance_error(phi, phi_t) < 0.9  # a value that could move


def test_the_chosen_penalty_is_recorded_and_flagged_at_the_grid_edge():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8))
    exact = M.linear_fit(x, x @ rng.normal(size=(8, 4)))
    assert exact.at_edge and exact.penalty == pytest.approx(np.log10(M.PENALTIES[0]))  # noiseless: the smallest
    noisy = M.linear_fit(x, x[:, :4] + rng.normal(size=(300, 4)) * 2)
    assert not noisy.at_edge and np.log10(M.PENALTIES[0]) < noisy.penalty < np.log10(M.PENALTIES[-1])


def test_equivariance_is_scored_on_the_held_out_half():
    """Catches the error scored on the fitting half or on all images: the fitting half follows one map, the
    held-out half another, so only a held-out score sees the difference."""
    rng = np.random.default_rng(4)
    n, d = 400, 5
    x = rng.normal(size=(n, d))
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    fit, held = M.split_halves(n, seed=0)
    y = np.empty_like(x)
    y[fit], y[held] = x[fit] @ a, x[held] @ b
    yh = y[held]
    expected = ((x[held] @ (b - a)) ** 2).sum() / ((yh - yh.mean(0)) ** 2).sum()
    assert M.equivariance_error(x, y, seed=0) == pytest.approx(expected, rel=0.02)
    assert expected > 1


def test_random_targets_score_about_one_held_out():
    """Catches in-sample scoring: 60-D features fit 10 random targets well on the images they were fitted on."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 60)), rng.normal(size=(200, 10))
    assert 0.95 < M.equivariance_error(x, y) < 1.2
    fit, _ = M.split_halves(200)
    in_sample = Ridge(alpha=1e-3).fit(x[fit], y[fit])
    resid = ((y[fit] - in_sample.predict(x[fit])) ** 2).sum() / ((y[fit] - y[fit].mean(0)) ** 2).sum()
    assert resid < 0.8  # what scoring on the fitting half would report


def test_equivariance_is_normalised_by_the_variance_of_the_transformed_features():
    """Catches 1 - R^2 normalised by the clean variance: phi(Tx) = 3 phi(x) + noise explains 9 / 10 of phi(Tx)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 4))
    y = 3 * x + rng.normal(size=x.shape)
    assert 0.08 < M.equivariance_error(x, y) < 0.12  # clean-normalised would be about 1.0


def test_pca_is_fitted_on_the_clean_features_of_the_fitting_half(digits):
    """Catches the PCA refitted on transformed features, or fitted on both halves."""
    x, _ = digits
    phi, phi_t = _pooled(x), _pooled(get_transform("rotate")(x, 45).images)
    fit, held = M.split_halves(len(phi), seed=0)
    a, b = M.pca_project(phi, phi_t, 16, fit=fit)
    pca = PCA(n_components=16, random_state=0).fit(phi[fit])
    np.testing.assert_allclose(a, pca.transform(phi), atol=1e-10)
    np.testing.assert_allclose(b, pca.transform(phi_t), atol=1e-10)
    c = M.Condition(labels=np.zeros(len(phi), int), clean_scores=np.ones((len(phi), 2)), scores=np.ones((len(phi), 2)),
                    clean_rep=phi, rep=phi_t)
    f = M.linear_fit(a, b, split=(fit, held))
    assert M.condition_metrics(c, 0, 10)["equivariance_error_pca16"].value == pytest.approx(
        M.equivariance_ratio(f.residual, f.total))


# --- equivariance told from invariance --------------------------------------------------------------------------


def test_gain_over_identity_separates_equivariance_from_invariance(digits):
    x, _ = digits
    flipped = get_transform("flip")(x, "horizontal").images
    phi, phi_t = _pooled(x), _pooled(flipped)
    assert M.equivariance_gain(phi, phi_t) > 0.99  # mirrored pixels: a permutation explains the whole change
    assert M.equivariance_gain(phi, phi.copy()) == 0.0  # an invariant representation has nothing to explain
    noise = phi + np.random.default_rng(7).normal(size=phi.shape) * phi.std()
    assert M.equivariance_gain(phi, noise) < 0.1  # a change no map predicts


def test_a_class_template_does_not_pass_for_equivariance():
    """A representation that is its class's template plus noise is 'linearly predictable' (error well below 1),
    but the label alone predicts as much, its gain is about 0 and nothing about the magnitude can be decoded."""
    rng = np.random.default_rng(8)
    n, d = 600, 12
    labels = np.arange(n) % 6
    templates = rng.normal(size=(6, d)) * 5
    clean = templates[labels] + rng.normal(size=(n, d)) * 0.3
    moved = [templates[labels] + rng.normal(size=(n, d)) * 0.3 for _ in range(5)]
    c = M.Condition(labels=labels, clean_scores=np.eye(6)[labels], scores=np.eye(6)[labels], clean_rep=clean,
                    rep=moved[-1])
    got = M.condition_metrics(c, 0, 20)
    assert got["equivariance_error"].value < 0.1
    assert got["label_r2"].value > 0.9 and got["label_r2"].value >= 1 - got["equivariance_error"].value - 0.01
    assert abs(got["equivariance_gain"].value) < 0.6
    assert abs(M.decodability(clean, moved, [0, 10, 20, 30, 40])) < 0.05


def test_decodability_is_about_zero_when_invariant_and_about_one_when_equivariant():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(400, 16)) * np.linspace(2, 0.5, 16)
    angles = [-45, -30, -15, 0, 15, 30, 45]
    rotated = [x @ _rotations(a, 8).T for a in angles]
    assert M.decodability(x, rotated, angles) > 0.95
    assert abs(M.decodability(x, [x.copy() for _ in angles], angles)) < 0.02
    unrelated = [rng.normal(size=x.shape) for _ in angles]
    assert M.decodability(x, unrelated, angles) < 0.05
    scaled = M.decodability(x * 1e3, [r * 1e3 for r in rotated], angles)
    assert scaled == pytest.approx(M.decodability(x, rotated, angles), rel=1e-6)
    est = M.decodability_estimate(x, rotated, angles, n_boot=50)
    assert est.ci[0] <= est.value <= est.ci[1] and est.n == 200


# --- capsule poses: one normaliser and one map per class ---------------------------------------------------------


def test_pose_metrics_are_per_class_not_pooled():
    """Catches ten capsules' coordinate systems pooled into one variance and one map."""
    rng = np.random.default_rng(10)
    k, n, d = 5, 1000, 4
    labels = np.arange(n) % k
    means = rng.normal(size=(k, d)) * 100  # classes far apart: pooled whitening sees only between-class spread
    maps = np.stack([np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(k)])  # one rotation per class
    z = rng.normal(size=(n, d))
    clean = means[labels] + z
    moved = means[labels] + np.einsum("nij,nj->ni", maps[labels], z)
    scores = np.eye(k)[labels]
    c = M.Condition(labels=labels, clean_scores=scores, scores=scores, clean_rep=clean, rep=moved, clean_pose=clean,
                    pose=moved)
    got = M.condition_metrics(c, 0, 20)
    assert got["equivariance_error_pose"].value < 1e-3  # one map per class is exact
    assert got["equivariance_error"].value > 0.3 * d / (d + 1e4)  # pooled map: off by the maps' disagreement
    assert got["equivariance_gain_pose"].value > 0.99
    # within a class, a rotation of z moves the pose by |Rz - z|^2 ~ 2 D (vs a spread of D): about 2 per class
    assert 1.5 < got["invariance_error_pose"].value < 2.6
    assert got["invariance_error"].value < 0.05  # pooled: the between-class spread swamps it


# --- scramble selectivity ------------------------------------------------------------------------------------------


def _images_table() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 300
    clean = rng.uniform(0.6, 1.0, n)
    rows = []

    def add(transform, kind, magnitude, conf, change):
        rows.append(pd.DataFrame({"model": "m", "run": "r", "seed": 0, "transform": transform, "kind": kind,
                                  "magnitude": magnitude, "image_id": np.arange(n), "label": 0, "prediction": 0,
                                  "true_score": conf, "confidence": conf, "pixel_change": change}))

    add("translate", "nuisance", "0", clean, np.zeros(n))
    add("translate", "nuisance", "4", clean - 0.2 + rng.normal(0, 0.05, n), np.full(n, 10.0))
    add("rotate", "nuisance", "45", clean + rng.normal(0, 0.01, n), np.full(n, 30.0))
    add("jigsaw", "semantic", "1", clean, np.zeros(n))
    add("jigsaw", "semantic", "4", clean - 0.3 + rng.normal(0, 0.05, n), np.full(n, 11.0))
    return pd.concat(rows, ignore_index=True)


def test_scramble_selectivity_subtracts_the_nuisance_with_the_closest_pixel_change():
    table = _images_table()
    sel = M.selectivity_table(table, {"translate": "0", "rotate": "0", "jigsaw": "1"}, n_boot=200)
    row = sel.iloc[0]
    assert len(sel) == 1 and (row["matched_transform"], row["matched_magnitude"]) == ("translate", "4")
    conf = lambda t, m: table[(table["transform"] == t) & (table["magnitude"] == m)]["confidence"].to_numpy()  # noqa: E731
    clean = conf("translate", "0")
    auc = lambda neg: roc_auc_score(np.r_[np.ones(300), np.zeros(300)], np.r_[clean, neg])  # noqa: E731
    assert row["selectivity"] == pytest.approx(auc(conf("jigsaw", "4")) - auc(conf("translate", "4")))
    assert row["selectivity_low"] <= row["selectivity"] <= row["selectivity_high"]
    assert row["selectivity_high"] - row["selectivity_low"] < 0.1  # paired: the shared clean images cancel


# --- one floor, intervals contain their estimate ---------------------------------------------------------------


def test_intervals_contain_their_estimate_and_ratios_share_one_floor():
    est = M.Estimate(0.5, (0.55, 0.7), 10)
    assert est.ci == (0.5, 0.7)
    num, den = np.array([1e-3, 0.0]), np.zeros(2)
    assert M.ratio(num, den) == pytest.approx(1e-3 / M.FLOOR)
    lo, hi = M.bootstrap_ratio_ci(num, den, n_boot=20)
    assert lo <= M.ratio(num, den) <= hi or lo == hi == pytest.approx(M.ratio(num, den))
