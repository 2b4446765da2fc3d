"""Pose against the object's true pose (issue 49, item 2): every metric of :mod:`capsprobe.metrics.posetruth` read on
synthetic representations whose answer is known.

The synthetic set is a small smallNORB-like grid: 2 classes x 4 instances x 18 azimuths (0-340 by 20 degrees) x 4
elevations (30-60 by 10), 576 rows. Instances are numbered 0-3 *within* each class, as smallNORB numbers them, so an
instance is a (class, instance) pair. The representations are built from the factors by hand:

- ``posed``: ``(cos az, sin az, elevation)`` (elevation scaled to unit spread) and a class offset, embedded in 16
  dimensions by a random orthogonal map, plus noise of 0.02 per dimension;
- ``blind``: the class offset and noise only (no pose).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capsprobe.metrics.posetruth import (
    angle_targets,
    control_factors,
    dci,
    pose_r2,
    pose_r2_novel,
    pose_split,
    step_map,
)

AZIMUTHS = np.arange(0, 360, 20.0)
ELEVATIONS = np.array([30.0, 40.0, 50.0, 60.0])
D = 16


def _grid(classes: int = 2, instances: int = 4) -> dict[str, np.ndarray]:
    c, i, a, e = np.meshgrid(np.arange(classes), np.arange(instances), AZIMUTHS, ELEVATIONS, indexing="ij")
    return {"category": c.ravel(), "instance": i.ravel(), "azimuth": a.ravel(), "elevation": e.ravel()}


def _signal(g: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, 3)``: cos az, sin az and the elevation standardised."""
    rad = np.deg2rad(g["azimuth"])
    return np.stack([np.cos(rad), np.sin(rad), (g["elevation"] - 45.0) / 11.18], 1)


def _embed(s: np.ndarray, g: dict[str, np.ndarray], seed: int = 0, noise: float = 0.02,
           rotate: bool = True) -> np.ndarray:
    """``s`` in the first columns of a D-wide representation (rotated by a random orthogonal map when ``rotate``),
    a class offset in the next column, and noise everywhere."""
    rng = np.random.default_rng(seed)
    z = np.zeros((len(s), D))
    z[:, :s.shape[1]] = s
    z[:, s.shape[1]] = 2.0 * g["category"]
    if rotate:
        q, _ = np.linalg.qr(rng.normal(size=(D, D)))
        z = z @ q.T
    return z + noise * rng.normal(size=z.shape)


def _factors(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"azimuth": g["azimuth"], "elevation": g["elevation"]}


# --- pose_r2 and the control task --------------------------------------------------------------------------------


def test_pose_r2_reads_a_posed_representation():
    g = _grid()
    res = pose_r2(_embed(_signal(g), g), _factors(g), groups=g["category"], instance=g["instance"], seed=0,
                  n_boot=200)
    az, el = res.real["azimuth"], res.real["elevation"]
    assert az.r2 >= 0.95 and el.r2 >= 0.95
    assert az.angle_error < 3.0  # degrees: atan2(sin, cos), not atan2(cos, sin) (that reads 90 - a)
    assert np.isnan(el.angle_error)
    assert res.selectivity["azimuth"] >= 0.8 and res.selectivity["elevation"] >= 0.8
    assert abs(res.control["azimuth"].r2) < 0.1 and abs(res.control["elevation"].r2) < 0.1
    assert az.ci_low <= az.r2 <= az.ci_high
    lo, hi = res.selectivity_ci["azimuth"]
    assert lo <= res.selectivity["azimuth"] <= hi
    assert res.n_fit + res.n_held == len(g["azimuth"]) and res.dim == D
    row = res.row()
    assert row["azimuth_r2"] == az.r2 and row["elevation_selectivity"] == res.selectivity["elevation"]


def test_pose_r2_blind_representation_reads_nothing():
    g = _grid()
    res = pose_r2(_embed(np.zeros((len(g["azimuth"]), 0)), g), _factors(g), groups=g["category"],
                  instance=g["instance"], seed=1, n_boot=50)
    for name in ("azimuth", "elevation"):
        assert res.real[name].r2 <= 0.05
        assert abs(res.selectivity[name]) <= 0.1
    assert res.real["azimuth"].angle_error > 45.0  # a guess: about 90 degrees off on average


def test_pose_r2_parts_name_the_right_column():
    """A representation that carries cos az but not sin az: the cosine part is read, the sine part is not (a swap
    of the two target columns fails here)."""
    g = _grid()
    s = _signal(g)
    res = pose_r2(_embed(s[:, [0, 2]], g), _factors(g), groups=g["category"], instance=g["instance"], n_boot=20)
    r2_cos, r2_sin = res.real["azimuth"].r2_parts
    assert r2_cos >= 0.95 and r2_sin <= 0.05
    assert res.real["azimuth"].r2 == pytest.approx((r2_cos + r2_sin) / 2)


def test_pose_r2_of_a_mirrored_code_reads_the_true_angle():
    """A representation of -az: the linear probe reads cos and sin (R^2 high, a sign is linear), and the decoded angle
    is the truth's, not its mirror, only because the probe was fitted on the truth (angle error small)."""
    g = _grid()
    s = _signal(g) * np.array([1.0, -1.0, 1.0])
    res = pose_r2(_embed(s, g), _factors(g), groups=g["category"], instance=g["instance"], n_boot=20)
    assert res.real["azimuth"].r2 >= 0.95 and res.real["azimuth"].angle_error < 3.0
    assert angle_targets(np.array([90.0]))[0] == pytest.approx([0.0, 1.0])  # (cos, sin), in degrees


def test_pose_r2_mlp_probe():
    g = _grid()
    posed = pose_r2(_embed(_signal(g), g), _factors(g), groups=g["category"], instance=g["instance"], probe="mlp",
                    n_boot=20)
    blind = pose_r2(_embed(np.zeros((len(g["azimuth"]), 0)), g), _factors(g), groups=g["category"],
                    instance=g["instance"], probe="mlp", n_boot=20)
    assert posed.real["azimuth"].r2 >= 0.9 and posed.real["elevation"].r2 >= 0.9
    assert posed.selectivity["azimuth"] >= 0.8
    assert blind.real["azimuth"].r2 <= 0.05 and blind.real["elevation"].r2 <= 0.05
    assert np.isnan(posed.real["azimuth"].penalty) and posed.probe == "mlp"


def test_control_keeps_each_class_marginal_and_breaks_the_tie():
    g = _grid()
    f = _factors(g)
    ctl = control_factors(f, groups=g["category"], instance=g["instance"], seed=3)
    for c in (0, 1):
        for i in range(4):
            rows = (g["category"] == c) & (g["instance"] == i)
            for name in f:
                assert sorted(ctl[name][rows]) == sorted(f[name][rows])  # the multiset per class and instance
    assert np.mean(ctl["azimuth"] == f["azimuth"]) < 0.2  # the tie to the image is broken
    assert abs(np.corrcoef(ctl["elevation"], f["elevation"])[0, 1]) < 0.2
    pairs = set(zip(f["azimuth"], f["elevation"]))
    assert set(zip(ctl["azimuth"], ctl["elevation"])) <= pairs  # rows move whole: the joint marginal is kept
    # within class only (no instance): the class marginal is kept, instances mix
    ctl2 = control_factors(f, groups=g["category"], seed=3)
    for c in (0, 1):
        rows = g["category"] == c
        assert sorted(ctl2["azimuth"][rows]) == sorted(f["azimuth"][rows])


def test_split_by_instance_keeps_instances_on_one_side():
    g = _grid()
    res = pose_r2(_embed(_signal(g), g), _factors(g), groups=g["category"], instance=g["instance"], n_boot=10)
    key = set(zip(g["category"][res.fit], g["instance"][res.fit]))
    assert key.isdisjoint(zip(g["category"][res.held], g["instance"][res.held]))
    assert len(key) == 4  # 2 of the 4 instances of each class
    assert set(g["category"][res.fit]) == set(g["category"][res.held]) == {0, 1}  # stratified by class
    assert res.n_instances == (4, 4)
    # instance numbers repeat across classes (smallNORB's 0-9 per category): (class, instance) is the unit
    fit, held = pose_split(len(g["azimuth"]), seed=5, groups=g["category"], instance=g["instance"])
    assert set(zip(g["category"][fit], g["instance"][fit])).isdisjoint(zip(g["category"][held], g["instance"][held]))


def test_split_by_instance_stops_an_instance_code_from_leaking():
    """Each instance sits at one elevation and the representation is a random code per instance: split by instance,
    nothing is decodable; split by image, a ridge learns each code's elevation (the leak the instance split stops)."""
    rng = np.random.default_rng(0)
    n_inst, per = 12, 20  # 12 codes in 16 dimensions: any 12 elevations are a linear function of them
    inst = np.repeat(np.arange(n_inst), per)
    codes = rng.normal(size=(n_inst, D))
    rep = codes[inst] + 0.05 * rng.normal(size=(len(inst), D))
    f = {"elevation": rng.uniform(30, 70, n_inst)[inst]}
    by_instance = pose_r2(rep, f, instance=inst, n_boot=10)
    by_image = pose_r2(rep, f, n_boot=10)
    assert by_instance.real["elevation"].r2 <= 0.2
    assert by_image.real["elevation"].r2 >= 0.4


# --- extrapolation ------------------------------------------------------------------------------------------------


def _familiar(az: np.ndarray) -> np.ndarray:
    return (az >= 300) | (az <= 40)  # smallNORB's training azimuths


def test_novel_azimuths_extrapolate_for_a_linear_code():
    g = _grid()
    fam = _familiar(g["azimuth"])
    res = pose_r2_novel(_embed(_signal(g), g), _factors(g), fam, groups=g["category"], instance=g["instance"],
                        n_boot=20)
    assert res.novel.real["azimuth"].r2 >= 0.9 and res.novel.real["azimuth"].angle_error < 5.0
    assert res.familiar.real["azimuth"].r2 >= 0.9
    assert fam[res.fit].all()  # fitted on familiar rows only
    assert (~fam[res.novel.held]).all() and fam[res.familiar.held].all()
    assert set(g["instance"][res.novel.held] + 10 * g["category"][res.novel.held]).isdisjoint(
        g["instance"][res.fit] + 10 * g["category"][res.fit])


def test_novel_azimuths_do_not_extrapolate_for_a_saturating_code():
    g = _grid()
    fam = _familiar(g["azimuth"])
    wrapped = (g["azimuth"] + 180) % 360 - 180  # -180..180, familiar within -60..40
    clipped = np.deg2rad(np.clip(wrapped, -60, 40))  # constant outside the familiar range
    s = _signal(g)
    s[:, 0], s[:, 1] = np.cos(clipped), np.sin(clipped)
    res = pose_r2_novel(_embed(s, g), _factors(g), fam, groups=g["category"], instance=g["instance"], n_boot=20)
    assert res.familiar.real["azimuth"].r2 >= 0.9
    assert res.novel.real["azimuth"].r2 <= res.familiar.real["azimuth"].r2 - 0.5
    assert res.novel.real["azimuth"].angle_error > 30.0
    assert res.novel.real["elevation"].r2 >= 0.9  # the elevation is untouched


# --- DCI -----------------------------------------------------------------------------------------------------------


def test_dci_axis_aligned_code_is_disentangled_and_complete():
    g = _grid()
    res = dci(_embed(_signal(g), g, noise=0.01, rotate=False), _factors(g), groups=g["category"],
              instance=g["instance"])
    assert res.factors == ("azimuth_cos", "azimuth_sin", "elevation")
    assert res.importance.shape == (D, 3)
    assert np.argmax(res.importance, 0).tolist() == [0, 1, 2]  # each factor on its own axis
    assert min(res.completeness.values()) >= 0.9 and res.disentanglement >= 0.9
    assert min(res.informativeness.values()) >= 0.95
    assert res.overall_completeness == pytest.approx(np.mean(list(res.completeness.values())))


def test_dci_rotated_code_is_informative_but_not_complete():
    g = _grid()
    res = dci(_embed(_signal(g), g, noise=0.01, rotate=True), _factors(g), groups=g["category"],
              instance=g["instance"])
    assert min(res.informativeness.values()) >= 0.95
    assert max(res.completeness.values()) <= 0.5 and res.disentanglement <= 0.5


def test_dci_duplicated_factor_halves_completeness_not_disentanglement():
    """Elevation on two axes (equal weights), cos and sin on one each: C(elevation) = 1 - ln 2 / ln 16 = 0.75 (the
    entropy is over the D dimensions, base D) and every used axis holds one factor. D_i of the two copies is not 1:
    their difference is pure noise of small variance, on which the ridge puts small opposite weights for cos and sin
    (about 0.01 against 0.5; measured D_i = 0.83); an entropy over the factors in base D, not K = 3, would read 0.93."""
    g = _grid()
    s = _signal(g)
    res = dci(_embed(np.c_[s, s[:, 2]], g, noise=0.01, rotate=False), _factors(g), groups=g["category"],
              instance=g["instance"])
    assert res.completeness["elevation"] == pytest.approx(1 - np.log(2) / np.log(D), abs=0.05)
    assert res.completeness["azimuth_cos"] >= 0.9
    assert 0.75 <= res.per_dimension[2] <= 0.9 and 0.75 <= res.per_dimension[3] <= 0.9
    assert res.per_dimension[0] >= 0.95 and res.per_dimension[1] >= 0.95
    assert res.disentanglement >= 0.9


# --- the step map and its composition ------------------------------------------------------------------------------


def _pairs(g: dict[str, np.ndarray], step: float) -> tuple[np.ndarray, np.ndarray]:
    """Row of (class, instance, a, e) -> row of (class, instance, a + step, e)."""
    key = {(c, i, a, e): r for r, (c, i, a, e) in enumerate(zip(g["category"], g["instance"], g["azimuth"],
                                                                 g["elevation"]))}
    src = np.arange(len(g["azimuth"]))
    dst = np.array([key[(c, i, (a + step) % 360, e)] for c, i, a, e in zip(g["category"], g["instance"],
                                                                              g["azimuth"], g["elevation"])])
    return src, dst


def test_step_map_of_a_rotation_composes():
    g = _grid()
    rep = _embed(_signal(g), g, noise=0.005)
    res = step_map(rep, _pairs(g, 20), _pairs(g, 40), groups=g["category"], instance=g["instance"], n_boot=50)
    assert res.gain >= 0.98
    assert res.composition <= 0.02
    assert res.ci["composition"][0] <= res.composition <= res.ci["composition"][1]
    key = set(zip(g["category"][res.fit], g["instance"][res.fit]))
    assert key.isdisjoint(zip(g["category"][res.held], g["instance"][res.held]))
    # the double step in the wrong direction (a - 40): the maps no longer compose
    back = step_map(rep, _pairs(g, 20), _pairs(g, -40), groups=g["category"], instance=g["instance"], n_boot=10)
    assert back.composition >= 0.2


def test_step_map_of_a_nonlinear_code_does_not_compose():
    g = _grid()
    rad = np.deg2rad(g["azimuth"])
    s = np.stack([np.cos(3 * rad), np.sin(5 * rad), _signal(g)[:, 2]], 1)
    rot = step_map(_embed(_signal(g), g, noise=0.005), _pairs(g, 20), _pairs(g, 40), groups=g["category"],
                   instance=g["instance"], n_boot=10)
    res = step_map(_embed(s, g, noise=0.005), _pairs(g, 20), _pairs(g, 40), groups=g["category"],
                   instance=g["instance"], n_boot=10)
    assert res.composition >= 0.1 and res.composition >= 10 * rot.composition
    assert res.gain < 0.5


def test_composition_normaliser_is_the_double_step_map():
    """Known answer: the 'double step' pairs are the identity (dst = src) and the step a rotation by 20 degrees of a
    centred circle, so ``|M_2s - M_s M_s| / |M_2s| = |I - R(40)| / |I| = 2 sin 20 degrees`` (0.684) in the plane; a
    movement normaliser would divide by 0."""
    g = _grid(classes=1, instances=8)
    rep = _signal(g)[:, :2] * 3.0
    rep = rep + 1e-4 * np.random.default_rng(0).normal(size=rep.shape)
    src = np.arange(len(rep))
    res = step_map(rep, _pairs(g, 20), (src, src), instance=g["instance"], n_boot=10)
    assert res.composition == pytest.approx(2 * np.sin(np.deg2rad(20)), abs=0.01)


# --- inputs ---------------------------------------------------------------------------------------------------------


def test_wide_representation_is_read_through_the_pca_of_the_fitting_half():
    g = _grid()
    wide = np.c_[_embed(_signal(g), g), np.random.default_rng(1).normal(size=(len(g["azimuth"]), 16)) * 0.02]
    frame = pd.DataFrame(_factors(g))  # named columns
    res = pose_r2(wide, frame, groups=g["category"], instance=g["instance"], n_boot=10)
    assert res.dim == 16 and res.real["azimuth"].r2 >= 0.95 and res.real["elevation"].r2 >= 0.95
    assert pose_r2(wide, frame, groups=g["category"], instance=g["instance"], pca=None, n_boot=10).dim == 2 * D
    arr = pose_r2(wide, np.c_[g["elevation"], g["azimuth"]], names=("elevation", "azimuth"), groups=g["category"],
                  instance=g["instance"], n_boot=10)
    assert arr.real["azimuth"].r2 == pytest.approx(res.real["azimuth"].r2)  # columns found by name, not order


def test_inputs_are_checked():
    g = _grid()
    rep = _embed(_signal(g), g)
    with pytest.raises(ValueError, match="names"):
        pose_r2(rep, np.c_[g["azimuth"], g["elevation"]])  # an array needs names: no order is assumed
    with pytest.raises(ValueError, match="probe"):
        pose_r2(rep, _factors(g), probe="forest")
    with pytest.raises(ValueError, match="familiar"):
        pose_r2_novel(rep, _factors(g), np.ones(len(rep), dtype=bool))
    src, dst = _pairs(g, 20)
    with pytest.raises(ValueError, match="instance"):
        step_map(rep, (src, dst[::-1]), _pairs(g, 40), groups=g["category"], instance=g["instance"])
    with pytest.raises(ValueError, match="no fitting or no held-out"):
        pose_split(len(rep), instance=np.zeros(len(rep)))  # one instance cannot be split


def test_composition_terms_score_exactly_the_held_out_images_it_is_given():
    """The step map's composition splits by instance through ``composition_terms(split=)``: the terms come back for
    the given held-out rows only (ignoring the split would score a seeded half of every image instead)."""
    from capsprobe.metrics.lie import composition_terms

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    moved = {a: x + 0.01 * a for a in (20.0, 40.0)}
    fit, held = np.arange(0, 30), np.arange(30, 40)
    diff, norm, move = composition_terms(x, moved, 20.0, 20.0, split=(fit, held))
    assert len(diff) == len(norm) == len(move) == len(held)
