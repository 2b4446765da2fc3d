"""Plots: a figure for a small synthetic frame, a clear error for a missing column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from capsprobe.report import plots


@pytest.fixture(scope="module")
def metrics():
    rng = np.random.default_rng(0)
    rows = []
    grids = {"rotate": [(-90, "-90"), (0, "0"), (45, "45"), (90, "90"), (180, "180")],
             "flip": [(0, "none"), (1, "horizontal"), (2, "vertical")],
             "jigsaw": [(1, "1"), (2, "2"), (4, "4")]}
    for run in ("caps", "conv"):
        for transform, grid in grids.items():
            for value, label in grid:
                kind = "semantic" if transform != "rotate" or abs(value) >= 90 else "nuisance"
                for metric in ("accuracy", "consistency", "invariance_error", "equivariance_error_pca16", "equivariance_gain"):
                    v = rng.random()
                    rows.append(dict(model=run, run=run, seed=0, transform=transform, kind=kind, magnitude=label,
                                     magnitude_value=float(value), metric=metric, value=v, ci_low=v - 0.05,
                                     ci_high=v + 0.05, n_images=100))
                if kind == "semantic" and label not in ("none", "1"):
                    rows.append(dict(model=run, run=run, seed=0, transform=transform, kind=kind, magnitude=label,
                                     magnitude_value=float(value), metric="scramble_auroc", value=0.7, ci_low=0.6,
                                     ci_high=0.8, n_images=100))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def roc():
    return pd.DataFrame({"run": ["caps"] * 3 + ["conv"] * 3, "condition": ["flip horizontal"] * 6,
                         "fpr": [0, 0.5, 1] * 2, "tpr": [0, 0.8, 1, 0, 0.5, 1]})


@pytest.fixture(scope="module")
def points():
    return pd.DataFrame({"model": ["caps", "conv", "caps"], "condition": ["rotate 45", "rotate 45", "affine 1"],
                         "x": [0.5, 0.9, 0.7], "x_low": [0.4, 0.85, 0.6], "x_high": [0.6, 0.95, 0.8],
                         "y": [0.9, 0.2, 0.5], "y_low": [0.85, 0.1, np.nan], "y_high": [0.95, 0.3, np.nan]})


CASES = [
    ("plot_two_axes", "points", "y_high"),
    ("plot_accuracy_curves", "metrics", "ci_low"),
    ("plot_invariance_vs_equivariance", "metrics", "metric"),
    ("plot_scramble_auroc", "metrics", "ci_high"),
    ("plot_polar_accuracy", "metrics", "magnitude_value"),
    ("plot_roc_curves", "roc", "tpr"),
]


@pytest.mark.parametrize("name, frame, column", CASES)
def test_plot_returns_a_figure(name, frame, column, request):
    fig = getattr(plots, name)(request.getfixturevalue(frame), *(("x", "y") if name == "plot_two_axes" else ()))
    assert isinstance(fig, Figure) and fig.axes
    for ax in fig.axes:
        assert ax.has_data() or not ax.get_visible() or ax.name == "polar"


@pytest.mark.parametrize("name, frame, column", CASES)
def test_plot_names_the_missing_column(name, frame, column, request):
    data = request.getfixturevalue(frame).drop(columns=[column])
    with pytest.raises(ValueError, match=f"missing: {column}"):
        getattr(plots, name)(data, *(("x", "y") if name == "plot_two_axes" else ()))


def test_accuracy_curves_layout(metrics):
    fig = plots.plot_accuracy_curves(metrics)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["rotate", "flip", "jigsaw"] and len(fig.axes) == 6  # 2 metrics x 3 transforms
    flip_ticks = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert flip_ticks == ["none", "horizontal", "vertical"]


def test_image_grid_shape_and_errors():
    fig = plots.plot_image_grid(np.random.rand(16, 11, 1, 28, 28), [f"d{i}" for i in range(16)], [str(i) for i in range(11)])
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == 16 and len(ax.get_xticks()) == 11
    with pytest.raises(ValueError, match="labels"):
        plots.plot_image_grid(np.random.rand(2, 3, 1, 8, 8), ["a"], [])
    with pytest.raises(ValueError, match=r"\(R, K, C, H, W\)"):
        plots.plot_image_grid(np.random.rand(2, 3, 8, 8))


def test_accuracy_curves_show_every_seed_and_the_mean(metrics):
    from capsprobe.report.plots import plot_accuracy_curves

    seeds = pd.concat([metrics.assign(run=metrics["run"] + f"-seed{s}", value=metrics["value"] * (0.9 + 0.05 * s))
                       for s in range(3)], ignore_index=True)  # each model now has three runs
    fig = plot_accuracy_curves(seeds)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * (3 + 1)  # per model: a thin line per seed and the bold mean
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["caps (3 seeds, mean bold)", "conv (3 seeds, mean bold)"]
    single = plot_accuracy_curves(metrics)
    assert len(single.axes[0].lines) == 2 and len(single.axes[0].collections) == 2  # one run: line and band


def test_two_axes_puts_the_decision_on_x_and_the_representation_on_y(points):
    """A point sits at (x, y) with its error bars spanning exactly [low, high] on each axis; a missing interval
    draws no bar; a panel per condition in order; chance lines where asked."""
    fig = plots.plot_two_axes(points, "decision", "representation", chance={"x": 0.1, "y": 1 / 12})
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["rotate 45", "affine 1"]
    first = shown[0]
    marks = [line.get_xydata()[0].tolist() for line in first.lines if line.get_marker() == "o"]
    assert marks == [[0.5, 0.9], [0.9, 0.2]]
    segments = [seg for coll in first.collections for seg in coll.get_segments()]
    horizontal = sorted(tuple(np.round(seg[:, 0], 6)) for seg in segments if seg[0, 1] == seg[1, 1])
    vertical = sorted(tuple(np.round(seg[:, 1], 6)) for seg in segments if seg[0, 0] == seg[1, 0])
    assert horizontal == [(0.4, 0.6), (0.85, 0.95)] and vertical == [(0.1, 0.3), (0.85, 0.95)]
    lone = shown[1]
    assert not [seg for coll in lone.collections for seg in coll.get_segments() if seg[0, 0] == seg[1, 0]]
    dotted = [line for line in first.lines if line.get_linestyle() == ":"]
    assert sorted(tuple(np.round(line.get_xdata(), 6))[0] for line in dotted if line.get_xdata()[0] == line.get_xdata()[1]) == [0.1]
    assert fig._supxlabel.get_text() == "decision" and fig._supylabel.get_text() == "representation"


def test_two_axis_points_read_each_metric_on_its_axis():
    from capsprobe.report.section import two_axis_points

    rows = []
    for model, (c, g) in {"caps": (0.6, 0.9), "conv": (0.8, 0.3)}.items():
        for metric, v in (("consistency", c), ("equivariance_gain", g), ("accuracy", 0.5)):
            rows.append({"model": model, "transform": "rotate", "magnitude": 45, "metric": metric, "value": v,
                         "ci_low": v - 0.1, "ci_high": v + 0.05})
    rows.append({"model": "lone", "transform": "rotate", "magnitude": 45, "metric": "consistency", "value": 0.1,
                 "ci_low": 0.0, "ci_high": 0.2})  # no gain: left out
    comparison = pd.DataFrame(rows)
    got = two_axis_points(comparison, "consistency", "equivariance_gain", [("affine", "1"), ("rotate", "45")])
    assert got["model"].tolist() == ["caps", "conv"] and set(got["condition"]) == {"rotate 45"}
    caps = got.iloc[0]
    assert (caps.x, caps.x_low, caps.x_high, caps.y, caps.y_low, caps.y_high) == pytest.approx(
        (0.6, 0.5, 0.65, 0.9, 0.8, 0.95))
    assert two_axis_points(None, "consistency", "equivariance_gain", [("rotate", "45")]).empty
