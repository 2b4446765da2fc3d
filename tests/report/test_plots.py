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


CASES = [
    ("plot_accuracy_curves", "metrics", "ci_low"),
    ("plot_invariance_vs_equivariance", "metrics", "metric"),
    ("plot_scramble_auroc", "metrics", "ci_high"),
    ("plot_polar_accuracy", "metrics", "magnitude_value"),
    ("plot_roc_curves", "roc", "tpr"),
]


@pytest.mark.parametrize("name, frame, column", CASES)
def test_plot_returns_a_figure(name, frame, column, request):
    fig = getattr(plots, name)(request.getfixturevalue(frame))
    assert isinstance(fig, Figure) and fig.axes
    for ax in fig.axes:
        assert ax.has_data() or not ax.get_visible() or ax.name == "polar"


@pytest.mark.parametrize("name, frame, column", CASES)
def test_plot_names_the_missing_column(name, frame, column, request):
    data = request.getfixturevalue(frame).drop(columns=[column])
    with pytest.raises(ValueError, match=f"missing: {column}"):
        getattr(plots, name)(data)


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
