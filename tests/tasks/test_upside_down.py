"""The upside-down protocol (issue 48): the angle wrapping, the joint score on representations whose answer is known,
the four outcomes, the digits without 6 and 9, and the task end to end on its tiny experiment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import capsprobe  # noqa: F401
from capsprobe import ModelAdapter
from capsprobe.data import ImageSplit, load_dataset
from capsprobe.data.subsets import NO69_DIGITS
from capsprobe.metrics.upside import ANGLES, angle_error, outcome_shares, outcomes, recover_angles
from capsprobe.probe import ProbePlan, Subject
from capsprobe.tasks import get_task


def test_angle_error_wraps_around_the_circle():
    assert angle_error(359, 1) == pytest.approx(2) and angle_error(1, 359) == pytest.approx(2)
    assert angle_error(10, 350) == pytest.approx(20) and angle_error(0, 180) == pytest.approx(180)
    assert angle_error(-90, 270) == pytest.approx(0) and angle_error(725, 0) == pytest.approx(5)
    assert angle_error(np.array([90.0, 100.0]), 0).tolist() == pytest.approx([90, 100])


def _circle(n: int) -> np.ndarray:
    """``(n, 24, 2)``: every image's representation is exactly ``(cos a, sin a)`` of the angle applied."""
    a = np.deg2rad(np.asarray(ANGLES))
    return np.broadcast_to(np.stack([np.cos(a), np.sin(a)], 1), (n, len(a), 2)).copy()


def test_a_representation_that_is_the_angle_recovers_every_pose():
    rec = recover_angles(_circle(20), ANGLES, seed=0)
    assert rec.error.max() < 1e-6 and rec.recovered().all()
    assert sorted(np.bincount(rec.fold)) == [10, 10]  # every image scored once, by the ridge of the other half


def test_the_angle_inside_a_wide_representation_is_found_through_the_pca():
    rng = np.random.default_rng(1)
    n = 30
    identity = rng.normal(size=(n, 1, 6)) * 3  # what the image is: large, constant over the angles
    reps = np.concatenate([_circle(n) @ rng.normal(size=(2, 34)), np.broadcast_to(identity, (n, 24, 6))], axis=2)
    rec = recover_angles(reps, ANGLES, seed=3)
    assert rec.error.max() < 1e-3


def test_an_angle_blind_representation_recovers_the_pose_at_chance():
    rng = np.random.default_rng(0)
    reps = np.broadcast_to(rng.normal(size=(40, 1, 8)), (40, 24, 8))  # the image, not its angle
    rec = recover_angles(reps, ANGLES, seed=0)
    # one guess per image: a 30-degree window holds 2 of the 24 angles, so 1/12 (not 1/24)
    assert rec.recovered().mean() == pytest.approx(1 / 12, abs=1e-9)
    assert (rec.recovered().sum(1) == 2).all()


def test_each_half_is_scored_by_the_ridge_of_the_other():
    # half A's representation is the angle, half B's the angle turned a quarter: a ridge fitted on B reads A a
    # quarter off (nothing recovered); one fitted on the same half would read it exactly
    reps = _circle(16)
    first, second = np.arange(8), np.arange(8, 16)
    turned = np.deg2rad(np.asarray(ANGLES) + 90)
    reps[second] = np.stack([np.cos(turned), np.sin(turned)], 1)
    rec = recover_angles(reps, ANGLES, split=(first, second))
    assert (rec.fold[first] == 0).all() and (rec.fold[second] == 1).all()
    assert rec.error == pytest.approx(np.full((16, 24), 90.0), abs=1e-6)
    assert not rec.recovered().any()


def test_a_decoder_per_class_reads_a_pose_each_class_carries_its_own_way():
    # class 0 carries (cos a, sin a), class 1 the mirror (cos a, -sin a): one shared linear read-out cannot be right
    # for both, one per class is exact
    reps = np.concatenate([_circle(8), _circle(8) * np.array([1.0, -1.0])])
    groups = np.repeat([0, 1], 8)
    assert recover_angles(reps, ANGLES, seed=0, groups=groups, by_group=True).error.max() < 1e-6
    assert recover_angles(reps, ANGLES, seed=0, groups=groups).recovered().mean() < 0.5
    with pytest.raises(ValueError, match="at least 4 images and 2 angles in group 1, got 3"):
        recover_angles(reps[:11], ANGLES, groups=groups[:11], by_group=True)


def test_recover_angles_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="24 angles"):
        recover_angles(np.zeros((10, 23, 2)), ANGLES)
    with pytest.raises(ValueError, match="at least 4 images"):
        recover_angles(_circle(3), ANGLES)


def test_the_four_outcomes_partition_image_x_angle():
    recognised = np.array([[True, True, False, False]])
    recovered = np.array([[True, False, True, False]])
    out = outcomes(recognised, recovered)
    assert out["equivariant"].tolist() == [[True, False, False, False]]
    assert out["invariant"].tolist() == [[False, True, False, False]]
    assert out["pose_only"].tolist() == [[False, False, True, False]]
    assert out["failing"].tolist() == [[False, False, False, True]]
    shares = outcome_shares(np.array([True, True, True, False]), np.array([True, False, False, False]))
    assert shares == {"equivariant": 0.25, "invariant": 0.5, "pose_only": 0.0, "failing": 0.25}
    with pytest.raises(ValueError, match="one shape"):
        outcomes(recognised, recovered[:, :2])


class _Toy(torch.nn.Module):
    """Scores that always name class 0; ``has_poses`` / ``poses_trained`` as a capsule model would say them."""

    def __init__(self, poses_trained: bool = True):
        super().__init__()
        self.has_poses, self.poses_trained = True, poses_trained

    @staticmethod
    def outputs(model, x):
        side = torch.arange(x.shape[-1], dtype=x.dtype) - (x.shape[-1] - 1) / 2
        ink = x.sum((1, 2, 3))
        centroid = torch.stack([(x.sum((1, 2)) * side).sum(1), (x.sum((1, 3)) * side).sum(1)], 1) / ink[:, None]
        return {"scores": torch.tensor([[0.9, 0.1]]).expand(len(x), 2), "representation": centroid}


def test_evaluate_reads_the_known_answer_of_a_model_that_is_its_pose():
    # a blob above the centre: its ink centroid turns with the image, so it *is* the pose; every digit is class 0
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(12, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 4:8, 12:16] = torch.randint(180, 256, (12, 1, 4, 4), generator=g, dtype=torch.uint8)
    split = ImageSplit(images, torch.zeros(12, dtype=torch.long))
    subjects = [Subject("pose", ModelAdapter(_Toy(), outputs=_Toy.outputs), "pose"),
                Subject("untrained", ModelAdapter(_Toy(poses_trained=False), outputs=_Toy.outputs), "untrained")]
    result = get_task("upside-down").evaluate(subjects, split, ProbePlan.from_options(n_boot=20, device="cpu"))
    m = result.metrics.set_index(["run", "metric", "magnitude"])["value"].sort_index()
    assert m.loc["pose", "joint"].to_dict() == {c: 1.0 for c in ("0", "90", "180", "270", "circle")}
    assert m.loc["pose", "accuracy"].eq(1.0).all() and m.loc["pose", "pose_recovered"].eq(1.0).all()
    # untrained poses: accuracy only, no pose read from them (as the suite's probe), and the manifest says so
    assert set(m.loc["untrained"].index.get_level_values("metric")) == {"accuracy"}
    assert result.manifest["untrained_poses"]["runs"] == ["untrained"]
    rows = result.images.set_index("run")
    assert rows.loc["pose", "joint"].eq(1.0).all() and rows.loc["untrained", "joint"].isna().all()
    assert rows.loc["pose", "pose_error"].max() < 15


def test_mnist_without_6_and_9_remaps_the_other_digits_to_0_7():
    base = load_dataset("mnist-sample")
    cut = load_dataset("mnist-sample-no69")
    assert cut.spec.num_classes == 8 and NO69_DIGITS == (0, 1, 2, 3, 4, 5, 7, 8)
    assert sorted(cut.test.labels.unique().tolist()) == list(range(8)) and len(cut.test) == 800
    # the test split of the variant is the base's test digits of the kept classes, in order, relabelled
    kept = torch.isin(base.test.labels, torch.tensor(NO69_DIGITS))
    assert torch.equal(cut.test.images, base.test.images[kept])
    assert torch.equal(torch.tensor(NO69_DIGITS)[cut.test.labels], base.test.labels[kept])


def test_the_tiny_experiment_scores_every_model_upside_down(tiny_experiment):
    folder, _ = tiny_experiment("upside-down")
    report = folder / "reports" / "upside-down"
    summary = pd.read_csv(report / "summary.csv", dtype={"magnitude": str})
    models = ["capsnet_small", "baseline_cnn_pool", "cnn-rotaug", "gcnn_c4"]
    assert list(dict.fromkeys(summary["model"])) == models
    assert set(summary["transform"]) == {"upside-down"} and set(summary["metric"]) == {"accuracy", "pose_recovered",
                                                                                         "joint"}
    assert set(summary["magnitude"]) == {"0", "90", "180", "270", "circle"}
    wide = summary.pivot_table(index=["run", "magnitude"], columns="metric", values="value")
    assert (wide["joint"] <= wide["accuracy"] + 1e-12).all() and (wide["joint"] <= wide["pose_recovered"] + 1e-12).all()
    # per image: the four quarter turns of the 48 probed digits, joint exactly "recognised and within 15 degrees"
    images = pd.read_parquet(report / "results.parquet")
    assert len(images) == 4 * 4 * 48 and set(images["magnitude"]) == {"0", "90", "180", "270"}
    assert set(images["label"]) <= set(range(8))
    hit = (images["prediction"] == images["label"]) & (images["pose_error"] <= 15)
    assert (images["joint"] == hit.astype(float)).all() and images["pose_error"].between(0, 180).all()
    upright = images["magnitude"] == "0"
    # the quarter turns are the suite's exact ones: the C4 G-CNN's scores do not move (its known answer)
    g = images[images["model"] == "gcnn_c4"].pivot(index="image_id", columns="magnitude", values="true_score")
    assert np.abs(g[["90", "180", "270"]].to_numpy() - g[["0"]].to_numpy()).max() < 1e-4
    assert (images.loc[upright, "pixel_change"] == 0).all() and (images.loc[~upright, "pixel_change"] > 0).all()
    # the summary's quarter turns are the per-image rows' means
    mean = images.assign(acc=images["prediction"] == images["label"]).groupby(["run", "magnitude"])["acc"].mean()
    assert mean.to_numpy() == pytest.approx(wide["accuracy"].drop("circle", level=1).to_numpy())
    # the four outcomes partition image x angle, at every angle and on the circle
    angles = pd.read_csv(report / "upside_angles.csv", dtype={"magnitude": str})
    shares = angles[angles["metric"].isin(["equivariant", "invariant", "pose_only", "failing"])]
    assert shares.groupby(["run", "magnitude"])["value"].sum().to_numpy() == pytest.approx(1.0)
    assert angles["magnitude"].nunique() == 25
    joint = angles[angles["metric"] == "joint"].set_index(["run", "magnitude"])["value"]
    equi = angles[angles["metric"] == "equivariant"].set_index(["run", "magnitude"])["value"]
    assert joint.to_numpy() == pytest.approx(equi.reindex(joint.index).to_numpy())
    # the comparisons give every model's interval and every pair's difference; the claims are declared
    comparison = pd.read_csv(report / "comparison.csv", dtype={"magnitude": str})
    assert set(comparison["metric"]) == {"accuracy", "pose_recovered", "joint"} and len(comparison) == 4 * 3 * 5
    differences = pd.read_csv(report / "differences.csv", dtype={"magnitude": str})
    assert len(differences[differences["metric"] == "accuracy"]) == 6 * 5  # every pair of the 4
    assert set(pd.read_csv(report / "claims.csv")["claim"]) == {"upside-down-joint", "upside-down-accuracy",
                                                                 "circle-joint-augmented"}
    text = (report / "report.md").read_text()
    assert "Accuracy, pose recovered and joint score" in text and "The four outcomes" in text
    assert (report / "figures" / "upside_down.png").is_file() and (report / "figures" / "recognised_vs_pose.png").is_file()
